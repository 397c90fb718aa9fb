//! Definitions and states that outlive the engine: saved, reloaded, skipped when corrupt.

use super::*;

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

/// A fresh machine with no llama-server: the first create says what is missing and how to
/// install it (llamactl answers 500 after a failed start), and saves nothing.
#[tokio::test]
async fn a_create_whose_backend_is_not_installed_is_refused_with_advice_and_leaves_nothing() {
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
    let body = assert_error(response, 422, "backend_not_installed").await;
    let details = body["details"].as_str().unwrap();
    assert!(details.contains("no-such-llama-server"), "{body}");
    assert!(details.contains("llama.cpp"), "the advice: {body}");
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

/// A model path that does not exist is refused before anything starts or is saved: on create,
/// on update, and on a restart or start after the file went away.
#[tokio::test]
async fn a_model_that_is_not_there_is_refused_before_any_start() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let missing = dir.path().join("gone.gguf").display().to_string();
    let body = json!({"backend_type": "llama_cpp", "backend_options": {"model": missing}});

    let response = engine.post_json("/api/v1/instances/nowhere", &body).await;
    let error = assert_error(response, 400, "model_not_found").await;
    assert_eq!(error["field"], "backend_options.model");
    assert!(
        error["details"].as_str().unwrap().contains("gone.gguf"),
        "{error}"
    );
    assert!(!engine.definition_file("nowhere").exists());

    // Saved with a model that is there, stopped; then the file goes.
    let model = dir.path().join("here.gguf");
    std::fs::copy(test_model(), &model).unwrap();
    let here = json!({"backend_type": "llama_cpp", "on_demand_start": true,
                      "backend_options": {"model": model}});
    assert_eq!(
        engine
            .post_json("/api/v1/instances/later", &here)
            .await
            .status(),
        201
    );
    assert_eq!(
        engine.post("/api/v1/instances/later/stop").await.status(),
        200
    );
    let response = engine.put_json("/api/v1/instances/later", &body).await;
    assert_error(response, 400, "model_not_found").await;
    assert_eq!(
        engine.instance("later").await["options"]["backend_options"]["model"],
        json!(model),
        "a refused update changes nothing"
    );
    assert_eq!(
        engine.post("/api/v1/instances/later/start").await.status(),
        200
    );
    std::fs::remove_file(&model).unwrap();
    // A restart is refused before the running backend is stopped: it keeps running.
    let response = engine.post("/api/v1/instances/later/restart").await;
    assert_error(response, 400, "model_not_found").await;
    assert_eq!(engine.instance("later").await["status"], "running");
    assert_eq!(
        engine.post("/api/v1/instances/later/stop").await.status(),
        200
    );
    let response = engine.post("/api/v1/instances/later/start").await;
    assert_error(response, 400, "model_not_found").await;
    assert_eq!(engine.instance("later").await["status"], "stopped");

    // A relative model is the backend's to resolve (a Hugging Face repo id for vLLM): accepted.
    let repo = json!({"backend_type": "vllm", "backend_options": {"model": "org/model"}});
    assert_eq!(
        engine
            .post_json("/api/v1/instances/repo", &repo)
            .await
            .status(),
        201
    );
    engine.stop().await;
}
