//! The management API over a real listener, with `tests/fixtures/fake_backend.py` as the backend.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|instance| instance["name"].as_str().unwrap())
        .collect()
}

#[tokio::test]
async fn created_instance_is_running_then_ready_with_defaults_and_a_port_filled_in() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let (first_port, _) = engine.config.instances.port_range;

    let created = engine
        .create("llama", llama(json!({"max_restarts": 5})))
        .await;
    assert_eq!(created["name"], "llama");
    assert_eq!(created["status"], "running");
    assert!(created["created"].as_i64().unwrap() > 0);
    let options = &created["options"];
    assert_eq!(options["auto_restart"], true, "config default");
    assert_eq!(options["max_restarts"], 5, "given value");
    assert_eq!(options["restart_delay"], 1, "config default");
    assert_eq!(options["on_demand_start"], true);
    assert_eq!(options["idle_timeout"], 0);
    assert_eq!(options["backend_type"], "llama_cpp");
    assert_eq!(options["backend_options"]["model"], "/models/test.gguf");
    assert_eq!(options["backend_options"]["port"], first_port);

    let ready = engine.wait_ready("llama").await;
    assert_eq!(ready["status"], "running");
    assert!(ready["pid"].as_u64().is_some());
    assert!(ready["started_at"].as_i64().is_some());
    assert_eq!(ready["restarts"], 0);

    // The definition is on disk in llamactl's shape.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(engine.definition_file("llama")).unwrap()).unwrap();
    assert_eq!(saved["name"], "llama");
    assert_eq!(saved["status"], "running");
    assert_eq!(saved["created"], created["created"]);
    assert_eq!(saved["options"], created["options"]);
    engine.stop().await;
}

#[tokio::test]
async fn list_is_sorted_by_name_and_stopped_instances_have_no_health() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let empty: Value = engine.get("/api/v1/instances").await.json().await.unwrap();
    assert_eq!(empty, json!([]));

    engine.create("zeta", llama(json!({}))).await;
    engine.create("alpha", llama(json!({}))).await;
    engine.create("mid", llama(json!({}))).await;
    let stopped = engine.post("/api/v1/instances/mid/stop").await;
    assert_eq!(stopped.status(), 200);

    let list: Value = engine.get("/api/v1/instances").await.json().await.unwrap();
    assert_eq!(names(&list), ["alpha", "mid", "zeta"]);
    let mid = &list[1];
    assert_eq!(mid["status"], "stopped");
    assert_eq!(mid["health"], Value::Null);
    assert_eq!(mid["pid"], Value::Null);
    // Each instance got its own port.
    let ports: std::collections::BTreeSet<u64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["options"]["backend_options"]["port"].as_u64().unwrap())
        .collect();
    assert_eq!(ports.len(), 3);
    engine.stop().await;
}

#[tokio::test]
async fn invalid_names_are_400_on_every_route() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let long = "a".repeat(51);
    for name in ["bad.name", "bad%20name", "semi;colon", long.as_str()] {
        let base = format!("/api/v1/instances/{name}");
        let requests = [
            engine.client.get(engine.url(&base)),
            engine
                .client
                .post(engine.url(&base))
                .json(&llama(json!({}))),
            engine.client.put(engine.url(&base)).json(&llama(json!({}))),
            engine.client.delete(engine.url(&base)),
            engine.client.post(engine.url(&format!("{base}/start"))),
            engine.client.post(engine.url(&format!("{base}/stop"))),
            engine.client.post(engine.url(&format!("{base}/restart"))),
            engine.client.get(engine.url(&format!("{base}/logs"))),
            engine
                .client
                .get(engine.url(&format!("{base}/proxy/health"))),
        ];
        for request in requests {
            assert_error(request.send().await.unwrap(), 400, "invalid_instance_name").await;
        }
    }
    assert!(std::fs::read_dir(&engine.config.instances.configs_dir)
        .unwrap()
        .next()
        .is_none());
    engine.stop().await;
}

#[tokio::test]
async fn unknown_instances_are_404_on_every_route() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let base = "/api/v1/instances/ghost";
    let requests = [
        engine.client.get(engine.url(base)),
        engine.client.put(engine.url(base)).json(&llama(json!({}))),
        engine.client.delete(engine.url(base)),
        engine.client.post(engine.url(&format!("{base}/start"))),
        engine.client.post(engine.url(&format!("{base}/stop"))),
        engine.client.post(engine.url(&format!("{base}/restart"))),
        engine.client.get(engine.url(&format!("{base}/logs"))),
        engine
            .client
            .post(engine.url(&format!("{base}/proxy/completion"))),
    ];
    for request in requests {
        assert_error(request.send().await.unwrap(), 404, "instance_not_found").await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn rejected_creates_are_400_and_leave_nothing_behind() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let url = engine.url("/api/v1/instances/rejected");

    let not_json = engine
        .client
        .post(&url)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_error(not_json, 400, "invalid_json").await;
    let cases = [
        (
            json!({"backend_options": {"model": "m"}}),
            "invalid_options",
        ),
        (
            json!({"backend_type": "", "backend_options": {}}),
            "invalid_options",
        ),
        (
            json!({"backend_type": "ollama", "backend_options": {}}),
            "unknown_backend_type",
        ),
        (json!({"backend_type": "llama_cpp"}), "invalid_options"),
        (
            json!({"backend_type": "llama_cpp", "backend_options": null}),
            "invalid_options",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": "m.gguf"}),
            "invalid_options",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"ctx_size": "big"}}),
            "invalid_options",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}, "auto_restart": "yes"}),
            "invalid_options",
        ),
        (json!(["backend_type", "llama_cpp"]), "invalid_options"),
    ];
    for (body, code) in cases {
        let response = engine.client.post(&url).json(&body).send().await.unwrap();
        assert_error(response, 400, code).await;
    }

    let list: Value = engine.get("/api/v1/instances").await.json().await.unwrap();
    assert_eq!(list, json!([]));
    assert!(std::fs::read_dir(&engine.config.instances.configs_dir)
        .unwrap()
        .next()
        .is_none());
    // No port was kept by the rejected requests: the first valid create gets the first port.
    let created = engine.create("accepted", llama(json!({}))).await;
    assert_eq!(
        created["options"]["backend_options"]["port"],
        engine.config.instances.port_range.0
    );
    engine.stop().await;
}

#[tokio::test]
async fn duplicate_create_is_409_and_keeps_the_first_definition() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let first = engine.create("dup", llama(json!({}))).await;
    let again = engine
        .post_json(
            "/api/v1/instances/dup",
            &llama(json!({"auto_restart": false})),
        )
        .await;
    assert_error(again, 409, "instance_exists").await;
    let now = engine.instance("dup").await;
    assert_eq!(now["options"], first["options"]);
    engine.stop().await;
}

#[tokio::test]
async fn instance_and_running_limits_are_409() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_instances = Some(2);
    config.instances.max_running_instances = Some(1);
    config.instances.enable_lru_eviction = false;
    let engine = Engine::start(config).await;

    engine.create("one", llama(json!({}))).await;
    let second_running = engine
        .post_json("/api/v1/instances/two", &llama(json!({})))
        .await;
    assert_error(second_running, 409, "max_running_instances_reached").await;
    assert_eq!(engine.get("/api/v1/instances/two").await.status(), 404);

    let stopped = engine.post("/api/v1/instances/one/stop").await;
    assert_eq!(stopped.status(), 200);
    engine.create("two", llama(json!({}))).await;
    let start_one = engine.post("/api/v1/instances/one/start").await;
    assert_error(start_one, 409, "max_running_instances_reached").await;
    assert_eq!(engine.instance("one").await["status"], "stopped");

    let third = engine
        .post_json("/api/v1/instances/three", &llama(json!({})))
        .await;
    assert_error(third, 409, "max_instances_reached").await;
    engine.stop().await;
}

#[tokio::test]
async fn ports_owned_by_an_instance_or_busy_at_the_os_are_not_handed_out() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let (first, _) = engine.config.instances.port_range;
    // Another program holds the first port of the range.
    let squatter = std::net::TcpListener::bind(("127.0.0.1", first)).unwrap();

    let auto = engine.create("auto", llama(json!({}))).await;
    let auto_port = auto["options"]["backend_options"]["port"].as_u64().unwrap();
    assert_eq!(auto_port, u64::from(first) + 1, "the busy port is skipped");

    let taken = engine
        .post_json(
            "/api/v1/instances/taken",
            &json!({"backend_type": "llama_cpp", "backend_options": {"model": "m", "port": auto_port}}),
        )
        .await;
    assert_error(taken, 409, "port_taken").await;
    let busy = engine
        .post_json(
            "/api/v1/instances/busy",
            &json!({"backend_type": "llama_cpp", "backend_options": {"model": "m", "port": first}}),
        )
        .await;
    assert_error(busy, 409, "port_in_use").await;
    assert_eq!(engine.get("/api/v1/instances/taken").await.status(), 404);
    assert_eq!(engine.get("/api/v1/instances/busy").await.status(), 404);
    drop(squatter);
    engine.stop().await;
}

#[tokio::test]
async fn a_chosen_port_taken_before_the_start_is_swapped_for_a_free_one() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    let engine = Engine::start(config).await;
    // Evicting it takes a second: the window between the port's choice and the start.
    engine
        .create(
            "old",
            llama(json!({"backend_options": {"model": "slow-stop"}})),
        )
        .await;
    engine.wait_ready("old").await;

    let body = llama(json!({}));
    let create = engine.post_json("/api/v1/instances/new", &body);
    let squat = async {
        // "new" is listed, with its port, while "old" is being stopped for it.
        let chosen = loop {
            let response = engine.get("/api/v1/instances/new").await;
            if response.status() == 200 {
                let new: Value = response.json().await.unwrap();
                break new["options"]["backend_options"]["port"].as_u64().unwrap();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        let port = u16::try_from(chosen).unwrap();
        let squatter = std::net::TcpListener::bind(("127.0.0.1", port));
        let old = engine.instance("old").await;
        assert_eq!(old["status"], "running", "still being evicted: {old}");
        (chosen, squatter.expect("the chosen port is not in use yet"))
    };
    let (created, (chosen, _squatter)) = tokio::join!(create, squat);
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap();
    let port = &created["options"]["backend_options"]["port"];
    assert_ne!(port, chosen, "moved off the taken port");
    let ready = engine.wait_ready("new").await;
    assert_eq!(&ready["options"]["backend_options"]["port"], port);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(engine.definition_file("new")).unwrap()).unwrap();
    assert_eq!(&saved["options"]["backend_options"]["port"], port);
    engine.stop().await;
}

#[tokio::test]
async fn start_of_running_and_stop_of_stopped_answer_200_with_the_state() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("idem", llama(json!({}))).await;
    let ready = engine.wait_ready("idem").await;

    let started: Value = engine
        .post("/api/v1/instances/idem/start")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(started["status"], "running");
    assert_eq!(started["pid"], ready["pid"], "the running process is kept");

    let stopped = engine.post("/api/v1/instances/idem/stop").await;
    assert_eq!(stopped.status(), 200);
    let stopped: Value = stopped.json().await.unwrap();
    assert_eq!(stopped["status"], "stopped");
    assert!(!process_exists(ready["pid"].as_u64().unwrap() as u32));
    let saved: Value =
        serde_json::from_slice(&std::fs::read(engine.definition_file("idem")).unwrap()).unwrap();
    assert_eq!(saved["status"], "stopped");

    let again = engine.post("/api/v1/instances/idem/stop").await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["status"], "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn restart_works_from_stopped_and_from_running() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("re", llama(json!({}))).await;
    let first = engine.wait_ready("re").await;

    let restarted = engine.post("/api/v1/instances/re/restart").await;
    assert_eq!(restarted.status(), 200);
    let second = engine.wait_ready("re").await;
    assert_ne!(second["pid"], first["pid"]);

    engine.post("/api/v1/instances/re/stop").await;
    let from_stopped: Value = engine
        .post("/api/v1/instances/re/restart")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(from_stopped["status"], "running");
    let third = engine.wait_ready("re").await;
    assert_ne!(third["pid"], second["pid"]);
    engine.stop().await;
}

#[tokio::test]
async fn update_replaces_options_restarts_a_running_instance_and_manages_ports() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let created = engine.create("up", llama(json!({"max_restarts": 7}))).await;
    let port = created["options"]["backend_options"]["port"].clone();
    let before = engine.wait_ready("up").await;
    let other = engine.create("other", llama(json!({}))).await;
    let other_port = other["options"]["backend_options"]["port"].clone();

    // Full replacement: max_restarts falls back to the default, the port is kept.
    let updated = engine
        .put_json(
            "/api/v1/instances/up",
            &json!({"backend_type": "llama_cpp", "backend_options": {"model": "/models/new.gguf"}}),
        )
        .await;
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["options"]["max_restarts"], 3);
    assert_eq!(
        updated["options"]["backend_options"]["model"],
        "/models/new.gguf"
    );
    assert_eq!(updated["options"]["backend_options"]["port"], port);
    assert_eq!(updated["created"], created["created"]);
    let after = engine.wait_ready("up").await;
    assert_ne!(
        after["pid"], before["pid"],
        "a running instance is restarted"
    );
    let logs = engine
        .get("/api/v1/instances/up/logs")
        .await
        .text()
        .await
        .unwrap();
    assert!(
        logs.contains("/models/new.gguf"),
        "the new options reach the backend: {logs}"
    );

    // Another instance's port: refused, nothing changes.
    let clash = engine
        .put_json(
            "/api/v1/instances/up",
            &json!({"backend_type": "llama_cpp", "backend_options": {"model": "x", "port": other_port}}),
        )
        .await;
    assert_error(clash, 409, "port_taken").await;
    let unchanged = engine.instance("up").await;
    assert_eq!(unchanged["options"], updated["options"]);
    assert_eq!(unchanged["pid"], after["pid"]);

    // A new free port is taken and the old one released for others.
    let new_port = engine.config.instances.port_range.1;
    let moved: Value = engine
        .put_json(
            "/api/v1/instances/up",
            &json!({"backend_type": "llama_cpp", "backend_options": {"model": "x", "port": new_port}}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(moved["options"]["backend_options"]["port"], new_port);
    engine.wait_ready("up").await;
    let proxied = engine.get("/api/v1/instances/up/proxy/health").await;
    assert_eq!(proxied.status(), 200, "the proxy follows the new port");
    let reuse = engine
        .create(
            "reuse",
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "m", "port": port}}),
        )
        .await;
    assert_eq!(reuse["options"]["backend_options"]["port"], port);

    // A stopped instance stays stopped after an update.
    engine.post("/api/v1/instances/other/stop").await;
    let still_stopped: Value = engine
        .put_json("/api/v1/instances/other", &llama(json!({})))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(still_stopped["status"], "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn delete_stops_a_running_instance_removes_it_and_keeps_its_log() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let created = engine.create("gone", llama(json!({}))).await;
    let port = created["options"]["backend_options"]["port"].clone();
    let ready = engine.wait_ready("gone").await;
    let pid = ready["pid"].as_u64().unwrap() as u32;

    let deleted = engine.delete("/api/v1/instances/gone").await;
    assert_eq!(deleted.status(), 204);
    assert!(!process_exists(pid), "the backend was stopped");
    assert_error(
        engine.get("/api/v1/instances/gone").await,
        404,
        "instance_not_found",
    )
    .await;
    assert!(!engine.definition_file("gone").exists());
    assert!(
        engine.config.instances.logs_dir.join("gone.log").exists(),
        "the log stays"
    );

    // Its port is free again.
    let next = engine
        .create(
            "next",
            json!({"backend_type": "llama_cpp", "backend_options": {"model": "m", "port": port}}),
        )
        .await;
    assert_eq!(next["options"]["backend_options"]["port"], port);
    engine.stop().await;
}

#[tokio::test]
async fn definitions_come_back_after_an_engine_restart_and_running_ones_restart() {
    let dir = data_dir();
    let config = test_config(dir.path());
    let engine = Engine::start(config.clone()).await;
    let keeps = engine.create("keeps", llama(json!({}))).await;
    engine
        .create("manual", llama(json!({"auto_restart": false})))
        .await;
    engine.create("parked", llama(json!({}))).await;
    engine.post("/api/v1/instances/parked/stop").await;
    let pid = engine.wait_ready("keeps").await["pid"].as_u64().unwrap() as u32;
    engine.stop().await;
    assert!(!process_exists(pid), "engine exit stops the backends");

    let engine = Engine::start(config).await;
    let list: Value = engine.get("/api/v1/instances").await.json().await.unwrap();
    assert_eq!(names(&list), ["keeps", "manual", "parked"]);
    let restored = engine.wait_ready("keeps").await;
    assert_eq!(restored["created"], keeps["created"]);
    assert_eq!(restored["options"], keeps["options"]);
    assert_eq!(engine.instance("manual").await["status"], "stopped");
    assert_eq!(engine.instance("parked").await["status"], "stopped");

    // Ports were re-reserved: a new instance gets none of theirs.
    let fresh = engine.create("fresh", llama(json!({}))).await;
    let fresh_port = &fresh["options"]["backend_options"]["port"];
    for instance in list.as_array().unwrap() {
        assert_ne!(&instance["options"]["backend_options"]["port"], fresh_port);
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_corrupt_definition_is_skipped_and_left_untouched() {
    let dir = data_dir();
    let config = test_config(dir.path());
    std::fs::create_dir_all(&config.instances.configs_dir).unwrap();
    let broken = config.instances.configs_dir.join("broken.json");
    std::fs::write(&broken, b"{\"name\": \"broken\", \"options\": ").unwrap();
    let engine = Engine::start(config).await;

    let list: Value = engine.get("/api/v1/instances").await.json().await.unwrap();
    assert_eq!(list, json!([]));
    // Creating that name would overwrite the user's file: refused.
    let create = engine
        .post_json("/api/v1/instances/broken", &llama(json!({})))
        .await;
    assert_error(create, 409, "instance_exists").await;
    assert_eq!(
        std::fs::read(&broken).unwrap(),
        b"{\"name\": \"broken\", \"options\": "
    );
    engine.stop().await;
}

#[tokio::test]
async fn the_test_engine_starts_as_corral_serve_does_and_clears_a_crashed_engine_s_pid_files() {
    let dir = data_dir();
    let config = test_config(dir.path());
    std::fs::create_dir_all(&config.instances.run_dir).unwrap();
    let leftover = config.instances.run_dir.join("ghost.pid");
    std::fs::write(&leftover, b"not a pid record").unwrap();
    let engine = Engine::start(config).await;
    assert!(
        !leftover.exists(),
        "start-up cleans the run folder before loading instances"
    );
    engine.stop().await;
}

#[tokio::test]
async fn a_crash_that_ends_in_failed_is_saved() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine
        .create("crashy", llama(json!({"auto_restart": false})))
        .await;
    engine.wait_ready("crashy").await;
    let crash = engine.get("/api/v1/instances/crashy/proxy/crash").await;
    assert_eq!(crash.status(), 200);

    let failed = engine
        .wait_for("crashy", "failed", |i| i["status"] == "failed")
        .await;
    assert!(failed["error"].as_str().is_some(), "says why: {failed}");
    let file = engine.definition_file("crashy");
    eventually("the failed status is saved", || {
        std::fs::read(&file)
            .ok()
            .and_then(|bytes| serde_json::from_slice::<Value>(&bytes).ok())
            .is_some_and(|saved| saved["status"] == "failed")
    })
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn a_create_that_cannot_start_leaves_nothing_behind() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.backends.llama_cpp.command = dir
        .path()
        .join("no-such-llama-server")
        .display()
        .to_string();
    config.backends.llama_cpp.args.clear();
    let engine = Engine::start(config).await;

    let response = engine
        .post_json("/api/v1/instances/doomed", &llama(json!({})))
        .await;
    let body = assert_error(response, 500, "start_failed").await;
    assert!(
        body["details"]
            .as_str()
            .unwrap()
            .contains("no-such-llama-server"),
        "{body}"
    );
    assert_eq!(
        engine
            .get("/api/v1/instances")
            .await
            .json::<Value>()
            .await
            .unwrap(),
        json!([])
    );
    assert!(!engine.definition_file("doomed").exists());
    engine.stop().await;
}

#[tokio::test]
async fn logs_give_the_last_lines_and_reject_a_non_integer_count() {
    let dir = data_dir();
    let config = test_config(dir.path());
    let engine = Engine::start(config.clone()).await;
    engine.create("talker", llama(json!({}))).await;
    engine.wait_ready("talker").await;
    // Each proxied request adds a log line.
    for _ in 0..3 {
        engine.get("/api/v1/instances/talker/proxy/health").await;
    }

    // The lines reach the log through a pipe reader, possibly after the responses; the log is
    // only compared with its own tail once all three are in.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let all = loop {
        let all = engine.get("/api/v1/instances/talker/logs").await;
        assert_eq!(all.status(), 200);
        assert!(all.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let all = all.text().await.unwrap();
        if all.matches("GET /health").count() >= 3 {
            break all;
        }
        assert!(std::time::Instant::now() < deadline, "missing lines: {all}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(all.contains("fake backend listening"), "{all}");
    assert!(all.lines().count() > 3);

    let last = engine
        .get("/api/v1/instances/talker/logs?lines=1")
        .await
        .text()
        .await
        .unwrap();
    assert_eq!(last.trim_end().lines().count(), 1, "{last:?}");
    assert!(all.trim_end().ends_with(last.trim_end()));
    for everything in ["0", "-3"] {
        let text = engine
            .get(&format!("/api/v1/instances/talker/logs?lines={everything}"))
            .await
            .text()
            .await
            .unwrap();
        assert!(text.contains("fake backend listening"));
    }
    for bad in ["abc", "1.5"] {
        let response = engine
            .get(&format!("/api/v1/instances/talker/logs?lines={bad}"))
            .await;
        assert_error(response, 400, "invalid_lines").await;
    }
    engine.post("/api/v1/instances/talker/stop").await;
    engine.stop().await;

    // After an engine restart the instance has not run yet, and its log is still there.
    let engine = Engine::start(config).await;
    let again = engine.get("/api/v1/instances/talker/logs").await;
    assert_eq!(again.status(), 200);
    assert!(again
        .text()
        .await
        .unwrap()
        .contains("fake backend listening"));
    engine.stop().await;
}

#[tokio::test]
async fn proxy_forwards_to_the_backend_with_path_query_and_body() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("px", llama(json!({}))).await;
    engine.wait_ready("px").await;

    let health = engine.get("/api/v1/instances/px/proxy/health").await;
    assert_eq!(health.status(), 200);
    // The backend's CORS headers are dropped; Corral's own CORS layer decides.
    assert!(health
        .headers()
        .get("access-control-allow-credentials")
        .is_none());
    assert!(health
        .headers()
        .get("access-control-allow-origin")
        .is_none_or(|v| v != "https://backend.example"));
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let echo: Value = engine
        .client
        .post(engine.url("/api/v1/instances/px/proxy/v1/chat/completions?stream=false&x=1"))
        .body("{\"hello\": 1}")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["path"], "/v1/chat/completions?stream=false&x=1");
    assert_eq!(echo["body"], "{\"hello\": 1}");

    let root: Value = engine
        .get("/api/v1/instances/px/proxy")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(root["path"], "/");
    let put: Value = engine
        .client
        .put(engine.url("/api/v1/instances/px/proxy/slots"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(put["method"], "PUT");

    engine.post("/api/v1/instances/px/stop").await;
    let stopped = engine.get("/api/v1/instances/px/proxy/health").await;
    let body = assert_error(stopped, 503, "instance_not_running").await;
    assert!(body["details"]
        .as_str()
        .unwrap()
        .contains("Instance is not running"));
    engine.stop().await;
}

/// Found by schema fuzzing: the proxy forwarded TRACE (an echo of the request, credentials
/// included, is what cross-site tracing abuses) and any other method, where the document lists
/// the methods it takes.
#[tokio::test]
async fn proxy_refuses_methods_it_does_not_list_with_405_and_the_ones_it_takes() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("tr", llama(json!({}))).await;
    engine.wait_ready("tr").await;
    for method in ["TRACE", "QUERY"] {
        let response = engine
            .client
            .request(
                reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                engine.url("/api/v1/instances/tr/proxy/health"),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.headers()["allow"],
            "GET, HEAD, POST, PUT, DELETE, PATCH, OPTIONS",
            "{method}"
        );
        assert_error(response, 405, "method_not_allowed").await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn proxy_streams_the_response_as_the_backend_writes_it() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("sse", llama(json!({}))).await;
    engine.wait_ready("sse").await;

    let mut stream = engine.get("/api/v1/instances/sse/proxy/stream").await;
    assert_eq!(stream.status(), 200);
    // The backend holds the rest back until /release: the first event can only arrive now if
    // the proxy does not buffer.
    let first = tokio::time::timeout(Duration::from_secs(30), stream.chunk())
        .await
        .expect("the first event arrives before the stream ends")
        .unwrap()
        .unwrap();
    assert_eq!(&first[..], b"data: first\n\n");
    engine.get("/api/v1/instances/sse/proxy/release").await;
    let mut rest = Vec::new();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"data: last\n\n");
    engine.stop().await;
}

#[tokio::test]
async fn proxy_answers_502_when_the_backend_does_not_listen() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config
        .backends
        .llama_cpp
        .environment
        .insert("FAKE_BACKEND_NO_LISTEN".into(), "1".into());
    let engine = Engine::start(config).await;
    let created = engine.create("deaf", llama(json!({}))).await;
    assert_eq!(created["status"], "running");
    let response = engine.get("/api/v1/instances/deaf/proxy/health").await;
    assert_error(response, 502, "upstream_unreachable").await;
    engine.stop().await;
}

/// A client that shows redirects instead of following them, as the page tests need.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn create_ready_with_auth(engine: &Engine, name: &str) {
    let created = engine
        .client
        .post(engine.url(&format!("/api/v1/instances/{name}")))
        .bearer_auth(MANAGEMENT_KEY)
        .json(&llama(json!({})))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while engine.registry.get(name).unwrap().health != Some(corral::supervisor::Health::Ready) {
        assert!(
            std::time::Instant::now() < deadline,
            "the instance became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `name=value` of the page cookie a response sets, checking its attributes.
fn page_cookie(response: &reqwest::Response, instance: &str) -> String {
    let cookie = response.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(
        cookie.contains(&format!("Path=/api/v1/instances/{instance}/proxy/;")),
        "{cookie}"
    );
    assert!(
        !cookie.contains(MANAGEMENT_KEY),
        "the key is never the cookie"
    );
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_backend_page_opens_with_a_one_time_ticket_and_keeps_working_through_a_cookie() {
    let dir = data_dir();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    create_ready_with_auth(&engine, "page").await;
    create_ready_with_auth(&engine, "other").await;
    let browser = no_redirects();

    // The UI asks for a ticket with its key; no key, no ticket.
    let refused = engine.post("/api/v1/instances/page/proxy-token").await;
    assert_eq!(refused.status(), 401);
    let ticket = |name: &'static str| {
        let engine = &engine;
        async move {
            let answer: Value = engine
                .client
                .post(engine.url(&format!("/api/v1/instances/{name}/proxy-token")))
                .bearer_auth(MANAGEMENT_KEY)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            assert_eq!(answer["expires_in"], 60);
            answer["url"].as_str().unwrap().to_owned()
        }
    };
    let missing = engine
        .client
        .post(engine.url("/api/v1/instances/nobody/proxy-token"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // The tab opens the ticket's address: it gets the cookie and the page without the ticket.
    let url = ticket("page").await;
    assert!(
        url.starts_with("/api/v1/instances/page/proxy/?proxy_ticket="),
        "{url}"
    );
    assert!(!url.contains(MANAGEMENT_KEY));
    let opened = browser.get(engine.url(&url)).send().await.unwrap();
    assert_eq!(opened.status(), 303);
    assert_eq!(
        opened.headers()["location"],
        "/api/v1/instances/page/proxy/"
    );
    let pair = page_cookie(&opened, "page");
    // A ticket works once.
    let again = browser.get(engine.url(&url)).send().await.unwrap();
    assert_eq!(again.status(), 401);

    // The page's own requests carry only the cookie, which the backend never sees.
    let follow = browser
        .get(engine.url("/api/v1/instances/page/proxy/props"))
        .header("cookie", format!("theme=dark; {pair}"))
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    let echo: Value = follow.json().await.unwrap();
    assert_eq!(echo["headers"]["cookie"], "theme=dark");
    // The cookie opens this instance's page only, not another's, nor the management API.
    for elsewhere in ["/api/v1/instances", "/api/v1/instances/other/proxy/props"] {
        let refused = browser
            .get(engine.url(elsewhere))
            .header("cookie", &pair)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{elsewhere}");
    }
    let wrong = browser
        .get(engine.url("/api/v1/instances/page/proxy/props"))
        .header("cookie", "corral_proxy_session=sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    // A ticket for one instance does not open another's page.
    let crossed = ticket("page")
        .await
        .replace("/instances/page/", "/instances/other/");
    let crossed = browser.get(engine.url(&crossed)).send().await.unwrap();
    assert_eq!(crossed.status(), 401);

    // A tab opened with `?api_key=` (llamactl's way) still works, and its later requests too,
    // through a pass rather than the key; the key never reaches the backend.
    let page = browser
        .get(engine.url(&format!(
            "/api/v1/instances/page/proxy/?api_key={MANAGEMENT_KEY}&x=1"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let pair = page_cookie(&page, "page");
    let echo: Value = page.json().await.unwrap();
    assert_eq!(echo["path"], "/?x=1");
    let follow = browser
        .get(engine.url("/api/v1/instances/page/proxy/props"))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    assert_eq!(follow.status(), 200);
    engine.stop().await;
}

#[tokio::test]
async fn management_routes_need_a_management_key_from_any_of_three_places() {
    let dir = data_dir();
    let mut config = with_auth(test_config(dir.path()));
    config.server.allowed_origins = vec!["http://app.example".into()];
    let engine = Engine::start(config).await;
    let url = engine.url("/api/v1/instances");

    let missing = engine.client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert_eq!(missing.headers()["content-type"], "application/json");
    assert_eq!(
        missing.text().await.unwrap(),
        r#"{"error": {"message": "Missing API key", "type": "authentication_error"}}"#
    );
    let wrong = engine
        .client
        .get(&url)
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert_eq!(
        wrong.text().await.unwrap(),
        r#"{"error": {"message": "Invalid API key", "type": "authentication_error"}}"#
    );
    let inference = engine
        .client
        .get(&url)
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        inference.status(),
        401,
        "inference keys do not open the management API"
    );

    let bearer = engine
        .client
        .get(&url)
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer.status(), 200);
    let header = engine
        .client
        .get(&url)
        .header("X-API-Key", MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(header.status(), 200);
    let query = engine
        .client
        .get(format!("{url}?api_key={MANAGEMENT_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(query.status(), 200);
    // Bearer wins over the others.
    let bearer_first = engine
        .client
        .get(&url)
        .bearer_auth("sk-wrong")
        .header("X-API-Key", MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(bearer_first.status(), 401);
    // Unknown routes under /api/v1 are behind auth too.
    let unknown = engine.get("/api/v1/nothing-here").await;
    assert_eq!(unknown.status(), 401);

    // CORS preflights pass without a key.
    let preflight = engine
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "http://app.example")
        .header("Access-Control-Request-Method", "GET")
        .send()
        .await
        .unwrap();
    assert!(preflight.status().is_success());
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://app.example"
    );
    engine.stop().await;
}

#[tokio::test]
async fn inference_routes_take_inference_or_management_keys() {
    use axum::middleware::from_fn_with_state;
    let dir = data_dir();
    let config = std::sync::Arc::new(with_auth(test_config(dir.path())));
    let app = axum::Router::new()
        .route("/v1/models", axum::routing::get(|| async { "models" }))
        .layer(from_fn_with_state(
            config,
            corral::api::auth::require_inference,
        ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/models", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let client = reqwest::Client::new();

    for key in [INFERENCE_KEY, MANAGEMENT_KEY] {
        let ok = client.get(&url).bearer_auth(key).send().await.unwrap();
        assert_eq!(ok.status(), 200, "{key}");
    }
    let missing = client.get(&url).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    assert!(missing.text().await.unwrap().contains("Missing API key"));
    let wrong = client
        .get(&url)
        .header("X-API-Key", "nope")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.text().await.unwrap().contains("Invalid API key"));
}

#[tokio::test]
async fn unknown_host_names_are_refused_while_listening_on_loopback() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.server.allowed_hosts = vec!["corral.lan".into()];
    let engine = Engine::start(config).await;
    let url = engine.url("/api/v1/version");
    let port = engine.addr.port();

    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("[::1]:{port}"),
        "corral.lan:80".into(),
        "LOCALHOST".into(),
    ] {
        let ok = engine
            .client
            .get(&url)
            .header("Host", &host)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200, "{host}");
    }
    for host in [
        format!("evil.example:{port}"),
        "attacker.localhost.example".into(),
    ] {
        let refused = engine
            .client
            .get(&url)
            .header("Host", &host)
            .send()
            .await
            .unwrap();
        assert_error(refused, 403, "host_not_allowed").await;
    }
    engine.stop().await;
}

#[tokio::test]
async fn bodies_over_the_limit_are_413() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let limit = engine.config.server.max_body_bytes;
    let big = json!({"backend_type": "llama_cpp", "backend_options": {"model": "x".repeat(limit)}});
    let response = engine.post_json("/api/v1/instances/big", &big).await;
    assert_error(response, 413, "payload_too_large").await;

    // Also without a Content-Length, as a stream.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(vec![b' '; limit]), Ok(b"{}".to_vec())];
    let streamed = engine
        .client
        .post(engine.url("/api/v1/backends/llama-cpp/parse-command"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_error(streamed, 413, "payload_too_large").await;
    assert_eq!(engine.get("/api/v1/instances/big").await.status(), 404);
    engine.stop().await;
}

#[tokio::test]
async fn parse_command_turns_a_command_line_into_options() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let parse = |backend: &'static str, body: Value| {
        let engine = &engine;
        async move {
            engine
                .post_json(&format!("/api/v1/backends/{backend}/parse-command"), &body)
                .await
        }
    };

    let llama: Value = parse(
        "llama-cpp",
        json!({"command": "llama-server -m /m/a.gguf -ngl 0 --port 8081"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(llama["backend_type"], "llama_cpp");
    assert_eq!(llama["backend_options"]["model"], "/m/a.gguf");
    assert_eq!(llama["backend_options"]["gpu_layers"], 0);
    assert_eq!(llama["backend_options"]["port"], 8081);
    let mlx: Value = parse(
        "mlx",
        json!({"command": "mlx_lm.server --model mlx-community/m --port 8082"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(mlx["backend_type"], "mlx_lm");
    assert_eq!(mlx["backend_options"]["model"], "mlx-community/m");
    let vllm: Value = parse(
        "vllm",
        json!({"command": "vllm serve org/model --port 8083"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(vllm["backend_type"], "vllm");
    assert_eq!(vllm["backend_options"]["model"], "org/model");

    let not_json = engine
        .client
        .post(engine.url("/api/v1/backends/llama-cpp/parse-command"))
        .header("content-type", "application/json")
        .body("command")
        .send()
        .await
        .unwrap();
    assert_error(not_json, 400, "invalid_request").await;
    assert_error(
        parse("llama-cpp", json!({"cmd": "x"})).await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        parse("llama-cpp", json!({"command": "   "})).await,
        400,
        "invalid_command",
    )
    .await;
    assert_error(
        parse(
            "llama-cpp",
            json!({"command": "llama-server -m 'unterminated"}),
        )
        .await,
        400,
        "parse_error",
    )
    .await;
    assert_error(
        parse("llama-cpp", json!({"command": "llama-server ---x"})).await,
        400,
        "parse_error",
    )
    .await;
    assert_error(
        parse("ollama", json!({"command": "ollama serve"})).await,
        404,
        "unknown_backend",
    )
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn version_and_the_configured_llama_server_answer_in_text() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let version = engine.get("/api/v1/version").await;
    assert_eq!(version.status(), 200);
    assert!(version.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = version.text().await.unwrap();
    assert!(
        text.starts_with(&format!("Version: {}\nCommit: ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("\nBuild Time: "));

    for (route, expected) in [
        ("help", "usage: fake-backend"),
        ("version", "version: 1 (fake)"),
        ("devices", "FAKE0"),
    ] {
        let response = engine.get(&format!("/api/v1/server/{route}")).await;
        assert_eq!(response.status(), 200, "{route}");
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        let text = response.text().await.unwrap();
        assert!(text.contains(expected), "{route}: {text}");
    }
    engine.stop().await;

    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.backends.llama_cpp.command = "/nonexistent/llama-server".into();
    let engine = Engine::start(config).await;
    let failed = engine.get("/api/v1/server/help").await;
    let body = assert_error(failed, 500, "server_command_failed").await;
    assert!(body["details"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/llama-server"));
    engine.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    assert_error(engine.get("/api/v1/nowhere").await, 404, "not_found").await;
    let patch = engine
        .client
        .patch(engine.url("/api/v1/instances/x"))
        .send()
        .await
        .unwrap();
    assert_error(patch, 405, "method_not_allowed").await;
    engine.stop().await;
}

#[tokio::test]
async fn openapi_document_describes_every_route_and_the_backend_options() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let response = engine.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/api/v1/version",
        "/api/v1/server/help",
        "/api/v1/server/version",
        "/api/v1/server/devices",
        "/api/v1/backends/{backend}/parse-command",
        "/api/v1/instances",
        "/api/v1/instances/{name}",
        "/api/v1/instances/{name}/start",
        "/api/v1/instances/{name}/stop",
        "/api/v1/instances/{name}/restart",
        "/api/v1/instances/{name}/logs",
        "/api/v1/instances/{name}/proxy/{rest}",
        "/api/v1/openapi.json",
        "/api/v1/events",
        "/api/v1/schema",
        "/api/v1/instances/{name}/logs/stream",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    let instance = &paths["/api/v1/instances/{name}"];
    for method in ["get", "post", "put", "delete"] {
        assert!(
            instance.get(method).is_some(),
            "{method} /instances/{{name}}"
        );
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for name in [
        "Instance",
        "InstanceOptions",
        "CreateInstanceOptions",
        "ErrorBody",
        "LlamaCppOptions",
        "MlxLmOptions",
        "VllmOptions",
        "OptionsSchema",
        "OptionField",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert!(schemas["LlamaCppOptions"]["properties"]["gpu_layers"].is_object());

    // Every reference points at a schema of the document.
    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&document, &mut found);
    assert!(found.contains(&"#/components/schemas/VllmOptions"));
    for target in found {
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {target}");
    }
    engine.stop().await;
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.server.allowed_origins = vec!["http://ui.example".into()];
    let engine = Engine::start(config).await;
    let url = engine.url("/api/v1/instances");

    let allowed = engine
        .client
        .get(&url)
        .header("Origin", "http://ui.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "http://ui.example"
    );
    let other = engine
        .client
        .get(&url)
        .header("Origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(other.headers().get("access-control-allow-origin").is_none());
    let preflight = engine
        .client
        .request(reqwest::Method::OPTIONS, &url)
        .header("Origin", "http://ui.example")
        .header("Access-Control-Request-Method", "DELETE")
        .header("Access-Control-Request-Headers", "x-api-key")
        .send()
        .await
        .unwrap();
    let methods = preflight.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        methods.contains("DELETE") && methods.contains("PUT"),
        "{methods}"
    );
    let headers = preflight.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(
        headers.contains("x-api-key") && headers.contains("authorization"),
        "{headers}"
    );
    engine.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_starts_never_exceed_the_running_limit_nor_spawn_twice() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    config.instances.enable_lru_eviction = false;
    let engine = Engine::start(config).await;
    let names = ["one", "two", "three", "four", "five"];
    for name in names {
        engine.create(name, llama(json!({}))).await;
        engine.post(&format!("/api/v1/instances/{name}/stop")).await;
    }

    let starts = names.map(|name| engine.post_owned(format!("/api/v1/instances/{name}/start")));
    let answers = futures_util::future::join_all(starts).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        4,
        "{statuses:?}"
    );
    let list: Value = engine.get("/api/v1/instances").await.json().await.unwrap();
    let running: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["status"] == "running")
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(running.len(), 1, "{running:?}");

    // Concurrent starts of one instance share one process.
    let winner = running[0];
    engine
        .post(&format!("/api/v1/instances/{winner}/stop"))
        .await;
    let path = format!("/api/v1/instances/{winner}/start");
    let answers =
        futures_util::future::join_all((0..4).map(|_| engine.post_owned(path.clone()))).await;
    let mut pids = std::collections::BTreeSet::new();
    for answer in answers {
        assert_eq!(answer.status(), 200);
        pids.insert(
            answer.json::<Value>().await.unwrap()["pid"]
                .as_u64()
                .unwrap(),
        );
    }
    assert_eq!(pids.len(), 1, "{pids:?}");
    engine.stop().await;
}

#[tokio::test]
async fn events_start_with_a_snapshot_then_follow_status_counters_and_deletion() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("watched", llama(json!({}))).await;
    engine.wait_ready("watched").await;
    engine.post("/api/v1/instances/watched/stop").await;

    let mut events = SseReader::new(engine.get("/api/v1/events").await);
    let snapshot = events.next().await;
    assert_eq!(snapshot.event, "snapshot");
    let snapshot = snapshot.json();
    assert_eq!(names(&snapshot), ["watched"]);
    assert_eq!(snapshot[0]["status"], "stopped");
    assert_eq!(
        snapshot[0]["options"]["backend_options"]["model"],
        "/models/test.gguf"
    );

    assert_eq!(
        engine
            .post("/api/v1/instances/watched/start")
            .await
            .status(),
        200
    );
    events
        .until("watched running and ready", |event| {
            let instance = event.json();
            event.event == "instance"
                && instance["name"] == "watched"
                && instance["status"] == "running"
                && instance["health"] == "ready"
        })
        .await;

    // A request through /v1 shows up in the counters without anyone polling.
    let answer = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "watched", "messages": []}),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let counted = events
        .until("the request counted", |event| {
            event.event == "instance" && event.json()["requests"] == 1
        })
        .await
        .json();
    assert_eq!(counted["name"], "watched");

    engine.create("second", llama(json!({}))).await;
    events
        .until("second created", |event| {
            event.event == "instance" && event.json()["name"] == "second"
        })
        .await;
    assert_eq!(
        engine.delete("/api/v1/instances/watched").await.status(),
        204
    );
    let deleted = events
        .until("watched deleted", |event| event.event == "deleted")
        .await;
    assert_eq!(deleted.json(), json!({"name": "watched"}));
    engine.stop().await;
}

#[tokio::test]
async fn events_need_the_management_key() {
    let dir = data_dir();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    assert_eq!(engine.get("/api/v1/events").await.status(), 401);
    let authorized = engine
        .client
        .get(engine.url("/api/v1/events"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    let mut events = SseReader::new(authorized);
    assert_eq!(events.next().await.event, "snapshot");
    engine.stop().await;
}

#[tokio::test]
async fn schema_lists_every_backend_option_with_its_type_and_the_lifecycle_settings() {
    use corral::backends::{specs, BackendType, OptionKind};
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let response = engine.get("/api/v1/schema").await;
    assert_eq!(response.status(), 200);
    let schema: Value = response.json().await.unwrap();

    for (backend, key) in [
        (BackendType::LlamaCpp, "llama_cpp"),
        (BackendType::MlxLm, "mlx_lm"),
        (BackendType::Vllm, "vllm"),
    ] {
        let options = schema["backends"][key]["options"].as_array().unwrap();
        assert!(schema["backends"][key]["label"].is_string());
        assert_eq!(options.len(), specs(backend).len(), "{key}");
        for spec in specs(backend) {
            let field = options
                .iter()
                .find(|field| field["name"] == spec.name)
                .unwrap_or_else(|| panic!("{key}: {} missing", spec.name));
            let expected = match spec.kind {
                OptionKind::Bool => "boolean",
                OptionKind::Int => "integer",
                OptionKind::Float => "number",
                OptionKind::String => "string",
                OptionKind::StringList => "string_list",
            };
            assert_eq!(field["type"], expected, "{key}.{}", spec.name);
            assert_eq!(field["flag"], spec.flag);
        }
        let model = options.iter().find(|f| f["name"] == "model").unwrap();
        assert_eq!(model["common"], true, "{key}: model is common");
    }
    let llama = schema["backends"]["llama_cpp"]["options"]
        .as_array()
        .unwrap();
    let field = |name: &str| llama.iter().find(|f| f["name"] == name).unwrap().clone();
    assert_eq!(field("ctx_size")["aliases"], json!(["-c"]));
    assert_eq!(field("ctx_size")["common"], true);
    assert_eq!(field("flash_attn")["choices"], json!(["on", "off", "auto"]));
    assert_eq!(field("temp")["default"], json!(0.8));
    assert_eq!(field("top_k")["common"], false);

    let lifecycle: Vec<&str> = schema["lifecycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        lifecycle,
        [
            "auto_restart",
            "max_restarts",
            "restart_delay",
            "on_demand_start",
            "idle_timeout",
            "aliases"
        ]
    );
    // Defaults are the configured ones.
    assert_eq!(schema["lifecycle"][1]["default"], 3);
    assert_eq!(schema["lifecycle"][0]["type"], "boolean");
    engine.stop().await;
}

#[tokio::test]
async fn errors_about_one_option_name_the_field() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let url = engine.url("/api/v1/instances/fields");
    let cases = [
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"ctx_size": "big"}}),
            "invalid_options",
            "backend_options.ctx_size",
        ),
        // An alias of the flag is reported under the option's own name.
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"ngl": true}}),
            "invalid_options",
            "backend_options.gpu_layers",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"flash_attn": "maybe"}}),
            "invalid_options",
            "backend_options.flash_attn",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"no_such_flag": 1}}),
            "invalid_options",
            "backend_options.no_such_flag",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"port": 70000}}),
            "invalid_options",
            "backend_options.port",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}, "idle_timeout": "soon"}),
            "invalid_options",
            "idle_timeout",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}, "aliases": ["a", "a"]}),
            "invalid_options",
            "aliases",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}, "aliases": [1]}),
            "invalid_options",
            "aliases",
        ),
        (
            json!({"backend_type": "ollama", "backend_options": {}}),
            "unknown_backend_type",
            "backend_type",
        ),
    ];
    for (body, code, field) in cases {
        let response = engine.client.post(&url).json(&body).send().await.unwrap();
        let error = assert_error(response, 400, code).await;
        assert_eq!(error["field"], field, "{body} -> {error}");
    }

    let bad_name = engine
        .post_json("/api/v1/instances/bad.name", &llama(json!({})))
        .await;
    let error = assert_error(bad_name, 400, "invalid_instance_name").await;
    assert_eq!(error["field"], "name");

    // A port another instance owns is a conflict at the port field.
    let first = engine.create("first", llama(json!({}))).await;
    let port = first["options"]["backend_options"]["port"].clone();
    let taken = engine
        .post_json(
            "/api/v1/instances/second",
            &json!({"backend_type": "llama_cpp", "backend_options": {"port": port}}),
        )
        .await;
    let error = assert_error(taken, 409, "port_taken").await;
    assert_eq!(error["field"], "backend_options.port");

    // Errors about no field in particular carry none.
    let missing = assert_error(
        engine.get("/api/v1/instances/ghost").await,
        404,
        "instance_not_found",
    )
    .await;
    assert!(missing.get("field").is_none(), "{missing}");
    engine.stop().await;
}

#[tokio::test]
async fn log_stream_sends_the_last_lines_then_follows_new_ones_across_restarts() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("chatty", llama(json!({}))).await;
    engine.wait_ready("chatty").await;
    engine.get("/api/v1/instances/chatty/proxy/before").await;
    let serving = &engine;
    let tail = || async move {
        serving
            .get("/api/v1/instances/chatty/logs?lines=3")
            .await
            .text()
            .await
            .unwrap()
    };
    // The backend's line about /before reaches the log through a pipe reader, so it can land
    // after the proxied response does: wait until it is there.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let lines = tail().await;
        if lines.lines().any(|l| l.contains("/before")) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /before line: {lines}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The health check (every 2 s) adds a line at any moment, so the stream's first lines are
    // held to the tail only when the tail read just before the stream opened and the one read
    // after its first lines are the same: no line came in between.
    let mut stream = loop {
        let expected = tail().await;
        let mut stream = SseReader::new(
            engine
                .get("/api/v1/instances/chatty/logs/stream?lines=3")
                .await,
        );
        let mut first = Vec::new();
        for _ in 0..3 {
            let event = stream.next().await;
            assert_eq!(event.event, "line");
            first.push(event.data);
        }
        let after = tail().await;
        if after == expected {
            let expected: Vec<&str> = expected.lines().collect();
            assert_eq!(expected.len(), 3, "{expected:?}");
            assert_eq!(first, expected);
            break stream;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the log never stood still: {expected} then {after}"
        );
    };

    // A line the backend prints after the client connected arrives as it is written.
    engine
        .get("/api/v1/instances/chatty/proxy/after-connecting")
        .await;
    stream
        .until("the request's log line", |event| {
            event.event == "line" && event.data.contains("/after-connecting")
        })
        .await;

    // The stream goes on across a restart of the instance.
    assert_eq!(
        engine
            .post("/api/v1/instances/chatty/restart")
            .await
            .status(),
        200
    );
    stream
        .until("the start marker", |event| {
            event.data.starts_with("=== Instance chatty started at")
        })
        .await;
    engine.wait_ready("chatty").await;
    engine
        .get("/api/v1/instances/chatty/proxy/after-restart")
        .await;
    stream
        .until("a line of the new process", |event| {
            event.data.contains("/after-restart")
        })
        .await;
    engine.stop().await;
}

#[tokio::test]
async fn log_stream_refuses_bad_counts_and_unknown_instances() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    assert_error(
        engine.get("/api/v1/instances/ghost/logs/stream").await,
        404,
        "instance_not_found",
    )
    .await;
    engine.create("quiet", llama(json!({}))).await;
    assert_error(
        engine
            .get("/api/v1/instances/quiet/logs/stream?lines=many")
            .await,
        400,
        "invalid_lines",
    )
    .await;
    engine.stop().await;
}

/// `ui/dist` as the build embedded it (build.rs rebuilds the crate whenever it changes).
fn built_ui() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui/dist")
}

#[tokio::test]
async fn the_web_ui_is_served_at_every_non_api_path_without_auth() {
    let dir = data_dir();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    let index = built_ui().join("index.html");
    assert_eq!(
        corral::api::ui::is_embedded(),
        index.is_file(),
        "the binary embeds ui/dist as it is on disk"
    );

    for path in ["/", "/some/deep/link", "/instances/llama"] {
        let response = engine.get(path).await;
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let cache = response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        assert_eq!(cache, "no-cache", "{path}");
        if index.is_file() {
            assert_eq!(response.status(), 200, "{path}");
            let body = response.bytes().await.unwrap();
            assert_eq!(body, std::fs::read(&index).unwrap(), "{path} is index.html");
        } else {
            assert_eq!(response.status(), 503, "{path}");
            let body = response.text().await.unwrap();
            assert!(body.contains("not built"), "{body}");
            assert!(body.contains("scripts/build-ui.sh"), "{body}");
        }
    }

    // Hashed assets are cached for good, with their own content type.
    let assets = built_ui().join("assets");
    let asset = std::fs::read_dir(&assets)
        .into_iter()
        .flatten()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "js"));
    if let Some(asset) = asset {
        let name = asset.file_name().unwrap().to_str().unwrap();
        let response = engine.get(&format!("/assets/{name}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript"));
        assert_eq!(
            response.bytes().await.unwrap(),
            std::fs::read(&asset).unwrap()
        );
    }
    // A missing file is not answered with the app's page.
    assert_error(
        engine.get("/assets/missing-0000.js").await,
        404,
        "not_found",
    )
    .await;

    // API paths stay the API's: JSON errors, Ollama's routes, auth.
    let nope = engine
        .client
        .get(engine.url("/api/v1/nope"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_error(nope, 404, "not_found").await;
    assert_eq!(engine.get("/api/v1/instances").await.status(), 401);
    assert_error(engine.get("/api/nope").await, 404, "not_found").await;
    let tags = engine
        .client
        .get(engine.url("/api/tags"))
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.status(), 200);
    let tags: Value = tags.json().await.unwrap();
    assert!(tags["models"].is_array(), "{tags}");

    // The Host check covers the UI too.
    let foreign = engine
        .client
        .get(engine.url("/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    engine.stop().await;
}

#[tokio::test]
async fn open_streams_end_when_the_engine_stops() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("streamed", llama(json!({}))).await;
    let mut events = SseReader::new(engine.get("/api/v1/events").await);
    assert_eq!(events.next().await.event, "snapshot");
    let logs = SseReader::new(engine.get("/api/v1/instances/streamed/logs/stream").await);
    engine.registry.end_streams();
    events.assert_ends().await;
    logs.assert_ends().await;
    engine.stop().await;
}
