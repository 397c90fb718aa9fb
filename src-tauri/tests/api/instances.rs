//! Instances over the API: create, list, validation, limits, ports, start, stop, restart,
//! update and delete.

use super::*;

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
    assert_eq!(options["backend_options"]["model"], test_model());
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
    for name in ["bad.name.", "bad%20name", "semi;colon", long.as_str()] {
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
            &json!({"backend_type": "llama_cpp", "backend_options": {"model": fake_model("new.gguf")}}),
        )
        .await;
    assert_eq!(updated.status(), 200);
    let updated: Value = updated.json().await.unwrap();
    assert_eq!(updated["options"]["max_restarts"], 3);
    assert_eq!(
        updated["options"]["backend_options"]["model"],
        fake_model("new.gguf")
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
        logs.contains(&fake_model("new.gguf")),
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

/// llamactl 0.19 allows dots in names, as model names have them; a dot may not come first or
/// last (`.` and `..` are folded away in URLs, a leading dot hides files).
#[tokio::test]
async fn a_name_with_dots_works_everywhere_and_survives_a_restart_but_not_at_its_ends() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let created = engine.create("qwen2.5-7b", llama(json!({}))).await;
    assert_eq!(created["name"], "qwen2.5-7b");
    assert!(engine.definition_file("qwen2.5-7b").is_file());
    let answer = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "qwen2.5-7b", "messages": []}),
        )
        .await;
    assert_eq!(answer.status(), 200);
    let logs = engine.get("/api/v1/instances/qwen2.5-7b/logs").await;
    assert_eq!(logs.status(), 200);
    for bad in ["x.", ".x", "..."] {
        let refused = engine
            .post_json(&format!("/api/v1/instances/{bad}"), &llama(json!({})))
            .await;
        assert_error(refused, 400, "invalid_instance_name").await;
    }
    engine.stop().await;

    let engine = Engine::start(test_config(dir.path())).await;
    assert_eq!(engine.instance("qwen2.5-7b").await["name"], "qwen2.5-7b");
    engine.stop().await;
}

/// llamactl's per-instance `environment`: over the configured command's variables, shown in the
/// instance, and refused when a process environment could not hold it.
#[tokio::test]
async fn an_instances_environment_reaches_its_backend_over_the_configured_one() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config
        .backends
        .llama_cpp
        .environment
        .insert("FAKE_BACKEND_TEST_VAR".into(), "configured".into());
    let engine = Engine::start(config).await;
    let echo = |name: &'static str| {
        let engine = &engine;
        async move {
            let answer = engine
                .post_json(
                    "/v1/chat/completions",
                    &json!({"model": name, "messages": []}),
                )
                .await;
            assert_eq!(answer.status(), 200);
            answer.json::<Value>().await.unwrap()["test_var"].clone()
        }
    };
    engine.create("plain", llama(json!({}))).await;
    assert_eq!(echo("plain").await, "configured");
    let own = engine
        .create(
            "own",
            llama(json!({"environment": {"FAKE_BACKEND_TEST_VAR": "the instance's"}})),
        )
        .await;
    assert_eq!(
        own["options"]["environment"]["FAKE_BACKEND_TEST_VAR"],
        "the instance's"
    );
    assert_eq!(echo("own").await, "the instance's");
    assert!(engine.instance("plain").await["options"]
        .get("environment")
        .is_none());

    for bad in [
        json!({"A=B": "x"}),
        json!({"": "x"}),
        json!({"A\nB": "x"}),
        json!({"A": "x\u{0}y"}),
    ] {
        let refused = engine
            .post_json("/api/v1/instances/bad", &llama(json!({"environment": bad})))
            .await;
        let body = assert_error(refused, 400, "invalid_options").await;
        assert_eq!(body["field"], "environment", "{body}");
    }
    engine.stop().await;
}

/// llamactl's `command_override`: an absolute path to an executable runs instead of the
/// configured command (whose arguments still apply); anything else is refused with 400.
#[tokio::test]
async fn a_command_override_runs_instead_of_the_configured_command_and_must_be_an_executable() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    // The configured command does not exist: only the override can start the fake backend.
    config.backends.llama_cpp.command = "/nonexistent/python3".into();
    let engine = Engine::start(config).await;
    let python = ["/usr/bin/python3", "/usr/local/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .expect("a python3");
    let created = engine
        .create("over", llama(json!({"command_override": python})))
        .await;
    assert_eq!(created["options"]["command_override"], python);
    engine.wait_ready("over").await;
    let answer = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "over", "messages": []}),
        )
        .await;
    assert_eq!(answer.status(), 200);

    let not_executable = dir.path().join("plain.txt");
    std::fs::write(&not_executable, "x").unwrap();
    let refusals = [
        json!("python3"),
        json!("/nonexistent/binary"),
        json!(dir.path().display().to_string()),
        json!(not_executable.display().to_string()),
    ];
    for bad in refusals {
        let refused = engine
            .post_json(
                "/api/v1/instances/bad",
                &llama(json!({"command_override": bad})),
            )
            .await;
        let body = assert_error(refused, 400, "invalid_options").await;
        assert_eq!(body["field"], "command_override", "{body}");
    }
    // Without the override, the missing configured command is refused as before.
    let refused = engine
        .post_json("/api/v1/instances/plain", &llama(json!({})))
        .await;
    assert_error(refused, 422, "backend_not_installed").await;
    engine.stop().await;
}
