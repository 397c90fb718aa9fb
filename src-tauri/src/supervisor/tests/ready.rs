//! When a started backend counts as ready, unhealthy or failed, and what its start reports.

use super::*;

#[tokio::test]
async fn wait_ready_fails_at_once_when_the_backend_exits_while_starting() {
    let fx = Fixture::new("broken");
    let script = "echo 'loading model'; echo 'error: failed to open model.gguf' >&2; exit 1";
    // A long restart delay: the waiter must not sit through it.
    fx.supervisor
        .start(shell(script), policy(true, 3, Duration::from_secs(600)))
        .await
        .unwrap();
    let began = Instant::now();
    let err = fx
        .supervisor
        .wait_ready(Duration::from_secs(600))
        .await
        .unwrap_err();
    assert!(began.elapsed() < PATIENCE, "the waiter sat out its timeout");
    let message = err.to_string();
    assert!(message.contains("exited with code 1"), "{message}");
    assert!(
        message.contains("error: failed to open model.gguf"),
        "{message}"
    );
    assert!(message.contains("loading model"), "{message}");
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn wait_ready_times_out_for_a_backend_that_never_answers() {
    let fx = Fixture::new("silent");
    fx.supervisor
        .start(shell("sleep 300"), no_restart())
        .await
        .unwrap();
    let err = fx
        .supervisor
        .wait_ready(Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, SupervisorError::ReadyTimeout { .. }), "{err}");
    assert_eq!(fx.supervisor.state().health(), Some(Health::Starting));
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn ready_backend_that_stops_answering_turns_unhealthy_and_back() {
    let fx = Fixture::new("flaky");
    let sick = fx.dir.path().join("sick");
    fx.supervisor
        .start(
            fx.http_backend(&[("SICK_FILE", sick.clone())]),
            no_restart(),
        )
        .await
        .unwrap();
    fx.supervisor.wait_ready(PATIENCE).await.unwrap();

    std::fs::write(&sick, "").unwrap();
    states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Unhealthy)
    })
    .await;
    assert_eq!(fx.supervisor.state().status(), Status::Running);
    std::fs::remove_file(&sick).unwrap();
    states_until(&fx.supervisor, |state| {
        state.health() == Some(Health::Ready)
    })
    .await;
    fx.supervisor.shutdown().await;
}

/// A backend like mlx_lm.server: `/health` is 200 from the start, and POST `/v1/completions`
/// answers only once its "model" is loaded: 200 when `LOADED_FILE` exists, or, when
/// `BROKEN_FILE` exists, 404 after printing the error a failed load logs.
const LOADING_BACKEND: &str = r#"
import http.server, os, sys, time
port = int(sys.argv[1])
loaded, broken = os.environ["LOADED_FILE"], os.environ["BROKEN_FILE"]
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200)
        self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        while not (os.path.exists(loaded) or os.path.exists(broken)):
            time.sleep(0.02)
        if os.path.exists(broken):
            print("ValueError: the model folder has no config.json", flush=True)
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b'{"error": "generation thread died"}')
            return
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b'{"choices": []}')
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"#;

impl Fixture {
    /// [`LOADING_BACKEND`] with a ready request; returns the spec and its two switch files.
    fn loading_backend(&self) -> (LaunchSpec, PathBuf, PathBuf) {
        let script = self.dir.path().join("loading.py");
        std::fs::write(&script, LOADING_BACKEND).unwrap();
        let (loaded, broken) = (
            self.dir.path().join("loaded"),
            self.dir.path().join("broken"),
        );
        let port = free_port();
        let spec = LaunchSpec {
            program: "python3".to_string(),
            args: vec![script.display().to_string(), port.to_string()],
            env: vec![
                ("LOADED_FILE".to_string(), loaded.display().to_string()),
                ("BROKEN_FILE".to_string(), broken.display().to_string()),
            ],
            health_url: format!("http://127.0.0.1:{port}/health"),
            secret: Default::default(),
            ready_request: Some(ReadyRequest {
                path: "/v1/completions".to_string(),
                body: r#"{"prompt":"hi","max_tokens":1}"#.to_string(),
            }),
            stop_signal: StopSignal::Terminate,
        };
        (spec, loaded, broken)
    }
}

#[tokio::test]
async fn a_backend_with_a_ready_request_is_ready_only_once_that_request_answers() {
    let fx = Fixture::new("loading");
    let (spec, loaded, _) = fx.loading_backend();
    let health_url = spec.health_url.clone();
    fx.supervisor.start(spec, no_restart()).await.unwrap();
    // Its /health answers 200, while the model is still "loading".
    let target = readiness_target(&health_url);
    let deadline = Instant::now() + PATIENCE;
    while !target.is_healthy().await {
        assert!(Instant::now() < deadline, "the fake never answered /health");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Many of the supervisor's own polls (every 10 ms) fit in this.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(fx.supervisor.state().health(), Some(Health::Starting));
    std::fs::write(&loaded, "").unwrap();
    fx.supervisor.wait_ready(PATIENCE).await.unwrap();
    assert_eq!(fx.supervisor.state().health(), Some(Health::Ready));
    fx.supervisor.shutdown().await;
}

#[tokio::test]
async fn a_backend_alive_but_unable_to_answer_fails_its_start_with_the_reason_from_its_log() {
    let fx = Fixture::new("broken");
    let (spec, _, broken) = fx.loading_backend();
    std::fs::write(&broken, "").unwrap();
    // Restarts allowed: a model that cannot load would not load the second time either.
    let started = fx
        .supervisor
        .start(spec, policy(true, 3, Duration::ZERO))
        .await
        .unwrap();
    let err = fx.supervisor.wait_ready(PATIENCE).await.unwrap_err();
    let text = err.to_string();
    assert!(text.contains("cannot answer"), "{text}");
    assert!(text.contains("generation thread died"), "{text}");
    assert!(text.contains("has no config.json"), "{text}");
    let state = fx.supervisor.state();
    assert_eq!(state.status(), Status::Failed, "{state:?}");
    assert_eq!(state.restarts, 0, "{state:?}");
    assert!(
        state
            .error
            .as_deref()
            .is_some_and(|e| e.contains("ValueError: the model folder has no config.json")),
        "{state:?}"
    );
    assert!(
        gone(started.pid.unwrap()).await,
        "the unable backend was stopped"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.supervisor.state().status(), Status::Failed, "no restart");
}

fn readiness_target(url: &str) -> readiness::Target {
    readiness::target(url).unwrap()
}

#[tokio::test]
async fn a_backend_that_exits_before_it_is_ready_fails_with_the_error_from_its_log() {
    let fx = Fixture::new("wrongpath");
    let spec = shell(
        "echo 'loading /no/such/model' ; echo 'OSError: /no/such/model does not exist' >&2; exit 1",
    );
    fx.supervisor.start(spec, no_restart()).await.unwrap();
    let states = states_until(&fx.supervisor, |s| s.status() == Status::Failed).await;
    let error = states.last().unwrap().error.clone().unwrap_or_default();
    assert!(
        error.contains("its log says: OSError: /no/such/model does not exist"),
        "{error}"
    );
}
