//! A real engine for the API tests: the engine's server on 127.0.0.1:0, a registry in temporary
//! folders, and `tests/fixtures/fake_backend.py` standing in for llama-server.
#![allow(dead_code)]

pub mod binary;
pub mod fake_hub;
pub mod raw_http;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral::config::{AuthConfig, BackendCommand, BackendsConfig, Config};
use corral::instances::Registry;
use serde_json::Value;

pub const MANAGEMENT_KEY: &str = "sk-management-test";
pub const INFERENCE_KEY: &str = "sk-inference-test";

/// Each engine gets its own slice of ports, so parallel tests never race for one. Every test
/// port lies below 16000, out of the OS's range for outgoing connections' local ports (32768+
/// by Linux's default, lower in some sandboxes): one landing on a backend's port makes it busy.
/// The suites' other ranges: 11100 e2e_llama, 11200 clients, 11300 backend_keys, 11400 desktop,
/// 11500 the UI's e2e.
static NEXT_PORT_BLOCK: AtomicU16 = AtomicU16::new(12000);
const PORTS_PER_ENGINE: u16 = 20;

/// A port free on loopback now, for a helper program the test starts (it binds it itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn fake_backend_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fake_backend.py")
}

fn backend(command: &str, args: Vec<String>) -> BackendCommand {
    BackendCommand {
        command: command.to_owned(),
        args,
        environment: BTreeMap::new(),
    }
}

/// The defaults, with the fake backend for every backend, folders in `data_dir`, an own slice of
/// ports, any free port to listen on, auth off (tests that need it turn it on), small body limits
/// and logs, and quick restarts.
pub fn test_config(data_dir: &Path) -> Config {
    let first = NEXT_PORT_BLOCK.fetch_add(PORTS_PER_ENGINE, Ordering::SeqCst);
    let fake = backend("python3", vec![fake_backend_script().display().to_string()]);
    let mut config = Config::with_data_dir(data_dir.to_path_buf());
    config.server.port = 0;
    config.server.max_body_bytes = 64 * 1024;
    config.server.max_inference_body_bytes = 1024 * 1024;
    config.backends = BackendsConfig {
        llama_cpp: fake.clone(),
        mlx: fake.clone(),
        vllm: fake,
    };
    config.instances.port_range = (first, first + PORTS_PER_ENGINE - 1);
    config.instances.default_restart_delay = 1;
    config.instances.on_demand_start_timeout = Duration::from_secs(60);
    config.instances.log_max_bytes = 1024 * 1024;
    config.instances.log_keep_files = 2;
    // Swaps at once: the tests of the residency (tests/scheduler.rs) set their own.
    config.scheduler.min_residency_seconds = 0;
    config.auth.require_inference_auth = false;
    config.auth.require_management_auth = false;
    config
}

pub fn with_auth(mut config: Config) -> Config {
    config.auth = AuthConfig {
        require_inference_auth: true,
        inference_keys: vec![INFERENCE_KEY.into()],
        require_management_auth: true,
        management_keys: vec![MANAGEMENT_KEY.into()],
    };
    config
}

/// A running engine, started by the library's own `corral::Engine::start` as `corral serve`
/// starts it. `stop` shuts its backends down; dropping it without `stop` still kills them when
/// the test's runtime ends (the children are kill-on-drop).
pub struct Engine {
    pub base: String,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub registry: Arc<Registry>,
    pub config: Arc<Config>,
    pub downloads: Arc<corral::downloads::Downloads>,
    pub keys: Arc<corral::access::KeyStore>,
    engine: corral::Engine,
}

impl Engine {
    pub async fn start(config: Config) -> Engine {
        let engine = corral::Engine::start(config).await.expect("engine starts");
        let addr = engine.addr;
        Engine {
            base: format!("http://{addr}"),
            addr,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            registry: Arc::clone(engine.registry()),
            config: Arc::clone(&engine.config),
            downloads: Arc::clone(engine.downloads()),
            keys: Arc::clone(engine.keys()),
            engine,
        }
    }

    /// Stops the HTTP server and every backend: the engine's own exit.
    pub async fn stop(self) {
        self.engine.shutdown().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.url(path)).send().await.unwrap()
    }

    /// `post` for futures that must not borrow the path (`join_all` over a list).
    pub async fn post_owned(&self, path: String) -> reqwest::Response {
        self.post(&path).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    /// `post_json` in a task of its own: a request that waits (for room, for a slot) while the
    /// test goes on.
    pub fn spawn_post_json(
        &self,
        path: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Response> {
        let request = self.client.post(self.url(path)).json(&body);
        tokio::spawn(async move { request.send().await.unwrap() })
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .unwrap()
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.client.delete(self.url(path)).send().await.unwrap()
    }

    /// Creates `name` with `body` and asserts the 201.
    pub async fn create(&self, name: &str, body: Value) -> Value {
        let response = self
            .post_json(&format!("/api/v1/instances/{name}"), &body)
            .await;
        let status = response.status();
        let json: Value = response.json().await.unwrap();
        assert_eq!(status, 201, "create {name}: {json}");
        json
    }

    pub async fn instance(&self, name: &str) -> Value {
        let response = self.get(&format!("/api/v1/instances/{name}")).await;
        assert_eq!(response.status(), 200);
        response.json().await.unwrap()
    }

    /// Polls the instance until `done` holds; panics after a generous minute.
    pub async fn wait_for(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let instance = self.instance(name).await;
            if done(&instance) {
                return instance;
            }
            assert!(
                Instant::now() < deadline,
                "{name} never became {what}: {instance}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn wait_ready(&self, name: &str) -> Value {
        self.wait_for(name, "ready", |i| i["health"] == "ready")
            .await
    }

    pub fn definition_file(&self, name: &str) -> PathBuf {
        self.config
            .instances
            .configs_dir
            .join(format!("{name}.json"))
    }
}

/// The path of a model file named `name` for the fake backend, which goes only by the name
/// (`exit-at-start`, `slow-stop`). A create refuses a model path that does not exist, so the
/// file is there: a small valid GGUF, so the fit check finds it fits. Written once per name, in
/// cargo's scratch folder for integration tests.
pub fn fake_model(name: &str) -> String {
    use corral::devices::gguf::writer::{gguf, Meta};
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fake-models");
    let path = dir.join(name);
    if !path.is_file() {
        std::fs::create_dir_all(&dir).expect("fake model folder");
        let bytes = gguf(
            &[
                ("general.architecture", Meta::Str("llama")),
                ("llama.block_count", Meta::U32(1)),
                ("llama.context_length", Meta::U32(256)),
                ("llama.embedding_length", Meta::U32(8)),
                ("llama.attention.head_count", Meta::U32(1)),
            ],
            &[("token_embd.weight", &[8, 8], 0)],
            256,
        );
        // Tests run in parallel threads, and test binaries may run at once: written aside
        // under a name of this process and thread, then renamed into place whole.
        let partial = dir.join(format!(
            "{name}.{}.{:?}.partial",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::write(&partial, bytes).expect("write fake model");
        std::fs::rename(&partial, &path).expect("place fake model");
    }
    path.display().to_string()
}

/// The model path [`llama`] creates with.
pub fn test_model() -> String {
    fake_model("test.gguf")
}

/// A minimal valid create body for the fake llama.cpp backend.
pub fn llama(extra: Value) -> Value {
    let mut body = serde_json::json!({
        "backend_type": "llama_cpp",
        "backend_options": {"model": test_model()},
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    body
}

/// The `id`s of an OpenAI model list (`GET /v1/models`).
pub fn model_ids(list: &Value) -> Vec<String> {
    list["data"]
        .as_array()
        .expect("a model list")
        .iter()
        .filter_map(|model| model["id"].as_str().map(str::to_owned))
        .collect()
}

/// Asserts a management error: the status, `{"error": code, "details": <non-empty>}`.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(actual, status, "status of {body}");
    assert_eq!(body["error"], code, "code of {body}");
    assert!(
        body["details"]
            .as_str()
            .is_some_and(|details| !details.is_empty()),
        "details of {body}"
    );
    body
}

/// Whether a process with this pid exists (signal 0 probes without sending anything).
pub fn process_exists(pid: u32) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, None).is_ok()
}

/// Polls `condition` for up to a minute.
pub async fn eventually(what: &str, condition: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One server-sent event: its `event:` name and its `data:` lines joined with newlines.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: String,
}

impl SseEvent {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data).unwrap_or_else(|e| panic!("{e}: {self:?}"))
    }
}

/// Reads a `text/event-stream` response event by event; comments (keep-alives) are skipped.
pub struct SseReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl SseReader {
    pub fn new(response: reqwest::Response) -> Self {
        assert_eq!(response.status(), 200, "event stream status");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/event-stream"),
            "{content_type}"
        );
        Self {
            body: Box::pin(response.bytes_stream()),
            buffer: String::new(),
        }
    }

    /// The next event; panics if none comes within a generous minute or the stream ends.
    pub async fn next(&mut self) -> SseEvent {
        tokio::time::timeout(Duration::from_secs(60), self.next_inner())
            .await
            .expect("an event within a minute")
    }

    async fn next_inner(&mut self) -> SseEvent {
        use futures_util::StreamExt;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent {
                    event: "message".into(),
                    data: String::new(),
                };
                let mut data = Vec::new();
                for line in block.lines() {
                    if let Some(name) = line.strip_prefix("event:") {
                        event.event = name.trim_start().to_owned();
                    } else if let Some(value) = line.strip_prefix("data:") {
                        data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                    }
                }
                if !data.is_empty() {
                    event.data = data.join("\n");
                    return event;
                }
            }
            let chunk = self
                .body
                .next()
                .await
                .expect("the event stream stays open")
                .unwrap();
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }

    /// Waits for the server to end the stream, skipping any events before that; panics if it
    /// is still open after a minute.
    pub async fn assert_ends(mut self) {
        use futures_util::StreamExt;
        let ended = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(chunk) = self.body.next().await {
                chunk.unwrap();
            }
        })
        .await;
        assert!(ended.is_ok(), "the event stream is still open");
    }

    /// Reads events until one satisfies `wanted`; panics after a minute.
    pub async fn until(&mut self, what: &str, wanted: impl Fn(&SseEvent) -> bool) -> SseEvent {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            assert!(Instant::now() < deadline, "no event: {what}");
            let event = self.next().await;
            if wanted(&event) {
                return event;
            }
        }
    }
}
