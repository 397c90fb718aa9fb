//! The scheduler: requests that wait their turn instead of being refused, groups, persistent and
//! exclusive instances, request queues, minimum residency and memory-aware placement — against
//! the fake backend (fast starts, streams held open on purpose) — and placement by memory once
//! against the real llama-server (`CORRAL_LLAMA_SERVER`, `CORRAL_TEST_MODEL`; missing, that test
//! fails: run it through scripts/test.sh).
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

async fn chat(engine: &Engine, model: &str) -> reqwest::Response {
    engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": model, "max_tokens": 4,
                    "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await
}

/// A stream of `chunks` events 0.1 s apart from the fake backend: a request held in flight.
async fn slow_stream(engine: &Engine, model: &str, chunks: u32) -> reqwest::Response {
    engine
        .post_json(
            "/v1/slow_stream",
            &json!({"model": model, "chunks": chunks, "interval": 0.1}),
        )
        .await
}

async fn openai_error(response: reqwest::Response, status: u16, code: &str) -> String {
    let actual = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    assert_eq!(actual, status, "status of {body}");
    assert_eq!(body["error"]["code"], code, "code of {body}");
    body["error"]["message"].as_str().unwrap().to_owned()
}

fn status(view: &Value) -> &str {
    view["status"].as_str().unwrap()
}

#[tokio::test]
async fn a_request_for_a_model_without_room_waits_for_the_busy_one_instead_of_failing() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    config.scheduler.min_residency_seconds = 0;
    let engine = Engine::start(config).await;
    engine.create("a", llama(json!({}))).await;
    engine.create("b", llama(json!({}))).await;
    engine.wait_ready("b").await;

    // b answers a stream for about a second; a's request must wait for it, then get b's room.
    let stream = slow_stream(&engine, "b", 10).await;
    assert_eq!(stream.status(), 200);
    let started = Instant::now();
    let waiting = engine.spawn_post_json(
        "/v1/chat/completions",
        json!({"model": "a", "messages": [{"role": "user", "content": "hi"}]}),
    );
    let body = stream.bytes().await.unwrap();
    assert!(
        String::from_utf8_lossy(&body).contains("usage"),
        "the stream ended whole"
    );
    let answer = waiting.await.unwrap();
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "it waited for the stream"
    );
    assert_eq!(status(&engine.instance("a").await), "running");
    assert_eq!(status(&engine.instance("b").await), "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn waiting_ends_with_503_and_retry_after_at_the_start_timeout() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    config.instances.on_demand_start_timeout = Duration::from_secs(1);
    let engine = Engine::start(config).await;
    engine.create("a", llama(json!({}))).await;
    engine.post("/api/v1/instances/a/stop").await;
    engine.create("b", llama(json!({}))).await;
    engine.wait_ready("b").await;
    let stream = slow_stream(&engine, "b", 40).await;
    assert_eq!(stream.status(), 200);

    let started = Instant::now();
    let refused = chat(&engine, "a").await;
    assert_eq!(refused.headers()["retry-after"], "5");
    let message = openai_error(refused, 503, "max_running_instances_reached").await;
    assert!(message.contains("max_running_instances"), "{message}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it waited first"
    );
    assert_eq!(status(&engine.instance("b").await), "running");
    drop(stream);
    engine.stop().await;
}

#[tokio::test]
async fn a_persistent_instance_is_never_evicted_so_a_request_is_refused_at_once() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    let engine = Engine::start(config).await;
    engine
        .create("pinned", llama(json!({"persistent": true})))
        .await;
    assert_eq!(
        engine.instance("pinned").await["options"]["persistent"],
        true
    );
    // The create's start is refused, so the create is too.
    let create = engine
        .post_json("/api/v1/instances/other2", &llama(json!({})))
        .await;
    let body = assert_error(create, 409, "max_running_instances_reached").await;
    assert!(
        body["details"].as_str().unwrap().contains("persistent"),
        "{body}"
    );

    engine.post("/api/v1/instances/pinned/stop").await;
    engine.create("later", llama(json!({}))).await;
    engine.post("/api/v1/instances/later/stop").await;
    engine.post("/api/v1/instances/pinned/start").await;
    let mut events = SseReader::new(engine.get("/api/v1/events").await);
    let refused = chat(&engine, "later").await;
    openai_error(refused, 503, "max_running_instances_reached").await;
    // Refused without waiting: its first scheduler event is the refusal, not a wait.
    let decision = events
        .until("the refusal", |e| {
            e.event == "scheduler" && e.json()["instance"] == "later"
        })
        .await
        .json();
    assert_eq!(
        decision["action"], "refused",
        "refused without waiting: {decision}"
    );
    assert_eq!(status(&engine.instance("pinned").await), "running");
    engine.stop().await;
}

#[tokio::test]
async fn a_group_at_its_limit_swaps_within_the_group_and_an_exclusive_group_runs_alone() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.group_limits.insert("code".into(), 1);
    config.instances.exclusive_groups = vec!["big".into()];
    let engine = Engine::start(config).await;

    engine.create("outsider", llama(json!({}))).await;
    engine
        .create("code-a", llama(json!({"group": "code"})))
        .await;
    assert_eq!(engine.instance("code-a").await["options"]["group"], "code");
    engine
        .create("code-b", llama(json!({"group": "code"})))
        .await;
    assert_eq!(status(&engine.instance("code-a").await), "stopped");
    assert_eq!(status(&engine.instance("code-b").await), "running");
    assert_eq!(status(&engine.instance("outsider").await), "running");
    // On demand, the same.
    assert_eq!(chat(&engine, "code-a").await.status(), 200);
    assert_eq!(status(&engine.instance("code-b").await), "stopped");

    engine.create("big-1", llama(json!({"group": "big"}))).await;
    engine.create("big-2", llama(json!({"group": "big"}))).await;
    assert_eq!(status(&engine.instance("big-1").await), "stopped");
    assert_eq!(status(&engine.instance("big-2").await), "running");
    assert_eq!(status(&engine.instance("code-a").await), "running");
    assert_eq!(status(&engine.instance("outsider").await), "running");
    engine.stop().await;
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_queued_requests_are_served_in_turn() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.scheduler.max_queue = 1;
    let engine = Engine::start(config).await;
    engine
        .create("one", llama(json!({"max_concurrent": 1})))
        .await;
    engine.wait_ready("one").await;

    let first = slow_stream(&engine, "one", 10).await;
    assert_eq!(first.status(), 200);
    // Waits for `first`'s slot.
    let queued = engine.spawn_post_json(
        "/v1/chat/completions",
        json!({"model": "one", "messages": []}),
    );
    let engine_ref = &engine;
    eventually("the second request queues", || {
        engine_ref
            .registry
            .get("one")
            .is_ok_and(|view| view.queued == 1)
    })
    .await;
    let overflow = chat(&engine, "one").await;
    assert_eq!(overflow.headers()["retry-after"], "1");
    let message = openai_error(overflow, 429, "queue_full").await;
    assert!(message.contains("max_queue"), "{message}");
    // The queued one is answered once the stream ends.
    first.bytes().await.unwrap();
    assert_eq!(queued.await.unwrap().status(), 200);
    assert_eq!(engine.instance("one").await["queued"], 0);
    engine.stop().await;
}

#[tokio::test]
async fn an_instance_with_queued_requests_is_not_evicted() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    let engine = Engine::start(config).await;
    engine.create("other", llama(json!({}))).await;
    engine.post("/api/v1/instances/other/stop").await;
    engine
        .create("busy", llama(json!({"max_concurrent": 1})))
        .await;
    engine.wait_ready("busy").await;
    let stream = slow_stream(&engine, "busy", 40).await;
    let queued = engine.spawn_post_json(
        "/v1/chat/completions",
        json!({"model": "busy", "messages": []}),
    );
    let engine_ref = &engine;
    eventually("a request queues", || {
        engine_ref
            .registry
            .get("busy")
            .is_ok_and(|view| view.queued == 1)
    })
    .await;
    // A start that cannot wait is refused rather than stopping `busy`.
    let refused = engine.post("/api/v1/instances/other/start").await;
    assert_error(refused, 409, "max_running_instances_reached").await;
    assert_eq!(status(&engine.instance("busy").await), "running");
    drop(stream);
    // Its slot came free when the stream was dropped; the queued one is answered.
    assert_eq!(queued.await.unwrap().status(), 200);
    engine.stop().await;
}

/// Two clients, each alternating between two models with room for one: an agent's pattern.
/// Every request is answered, and the minimum residency bounds the swaps.
#[tokio::test]
async fn alternating_clients_on_two_models_with_room_for_one_all_succeed_with_bounded_swaps() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.instances.max_running_instances = Some(1);
    config.scheduler.min_residency_seconds = 1;
    let engine = Engine::start(config).await;
    engine.create("a", llama(json!({}))).await;
    engine.post("/api/v1/instances/a/stop").await;
    engine.create("b", llama(json!({}))).await;
    engine.post("/api/v1/instances/b/stop").await;
    let mut events = SseReader::new(engine.get("/api/v1/events").await);

    let started = Instant::now();
    let clients: Vec<_> = [["a", "b"], ["b", "a"]]
        .into_iter()
        .map(|order| {
            let client = engine.client.clone();
            let url = engine.url("/v1/chat/completions");
            tokio::spawn(async move {
                let mut statuses = Vec::new();
                for i in 0..10 {
                    let model = order[i % 2];
                    let response = client
                        .post(&url)
                        .json(&json!({"model": model, "messages": []}))
                        .send()
                        .await
                        .unwrap();
                    statuses.push(response.status().as_u16());
                }
                statuses
            })
        })
        .collect();
    for client in clients {
        assert_eq!(client.await.unwrap(), vec![200; 10]);
    }
    let elapsed = started.elapsed();

    // Each swap is one eviction event; residency allows one per second at most (plus the
    // first start, which evicts nothing).
    // The feed keeps its order: every eviction came before this deletion's event.
    engine.delete("/api/v1/instances/a").await;
    let mut evicted = 0;
    loop {
        let event = events.next().await;
        match event.event.as_str() {
            "scheduler" if event.json()["action"] == "evicted" => evicted += 1,
            "deleted" if event.json()["name"] == "a" => break,
            _ => {}
        }
    }
    let bound = elapsed.as_secs() as usize + 2;
    assert!(evicted >= 1, "the models swapped");
    assert!(evicted <= bound, "{evicted} swaps in {elapsed:?}");
    engine.stop().await;
}

#[tokio::test]
async fn a_memory_budget_evicts_what_frees_enough_and_refuses_what_never_fits() {
    let dir = data_dir();
    let mut config = test_config(dir.path());
    // The fake model is estimated at well under a MiB; the fake backend, once measured, at
    // its process's RSS (a Python: some MiB). A budget of one measured process plus headroom 0.
    config.scheduler.memory_headroom_mib = 0;
    config.scheduler.ram_budget_mib = Some(1);
    let engine = Engine::start(config).await;
    let first = engine.create("first", llama(json!({}))).await;
    assert!(
        first["footprint"]["estimated"]["ram_bytes"]
            .as_u64()
            .unwrap()
            > 0,
        "{first}"
    );
    engine.wait_ready("first").await;
    let mut events = SseReader::new(engine.get("/api/v1/events").await);

    // Once measured (a Python process takes more than the budget's MiB), the next start needs
    // the room `first` holds: `first` is stopped for it.
    let second = engine
        .post_json("/api/v1/instances/second", &llama(json!({})))
        .await;
    assert_eq!(second.status(), 201, "{:?}", second.text().await);
    assert_eq!(status(&engine.instance("first").await), "stopped");
    let evicted = events
        .until("an eviction event", |e| {
            e.event == "scheduler" && e.json()["action"] == "evicted"
        })
        .await
        .json();
    assert_eq!(evicted["instance"], "first");
    assert_eq!(evicted["for_instance"], "second");
    assert!(
        evicted["reason"].as_str().unwrap().contains("make room"),
        "{evicted}"
    );

    // `first` was measured while it ran: its next start expects what it took.
    let first = engine.instance("first").await;
    let measured = first["footprint"]["measured"]["ram_bytes"]
        .as_u64()
        .unwrap();
    assert!(measured > 1 << 20, "{first}");

    // Alone, a measured Python process needs more than the 1 MiB budget: never fits.
    engine.post("/api/v1/instances/second/stop").await;
    let refused = engine.post("/api/v1/instances/first/start").await;
    let body = assert_error(refused, 507, "insufficient_memory").await;
    let details = body["details"].as_str().unwrap();
    assert!(
        details.contains("needs") && details.contains("of RAM"),
        "{details}"
    );
    let refused = chat(&engine, "first").await;
    openai_error(refused, 507, "insufficient_memory").await;
    engine.stop().await;
}

// ---- Against the real llama-server ------------------------------------------------------------

fn real_llama_config(dir: &std::path::Path) -> corral::config::Config {
    let mut config = test_config(dir);
    config.backends.llama_cpp = corral::config::BackendCommand {
        command: common::binary::required_file("CORRAL_LLAMA_SERVER")
            .display()
            .to_string(),
        args: Vec::new(),
        environment: Default::default(),
    };
    config.instances.stop_grace = Duration::from_secs(5);
    config.scheduler.memory_headroom_mib = 0;
    config
}

fn real_model() -> Value {
    let model = common::binary::required_file("CORRAL_TEST_MODEL");
    json!({"backend_type": "llama_cpp",
           "backend_options": {"model": model.display().to_string(), "ctx_size": 512}})
}

fn footprint_bytes(view: &Value, which: &str) -> u64 {
    let footprint = &view["footprint"][which];
    footprint["ram_bytes"].as_u64().unwrap() + footprint["gpu_bytes"].as_u64().unwrap()
}

/// Two real llama-servers with a RAM budget that holds one: a start stops the other, and an
/// on-demand request swaps them back; the estimate and the measure are both reported.
#[tokio::test]
async fn real_llama_server_is_placed_by_its_estimated_then_measured_memory() {
    // First, what the tiny model is estimated at and what a llama-server with it takes.
    let dir = data_dir();
    let engine = Engine::start(real_llama_config(dir.path())).await;
    engine.create("probe", real_model()).await;
    engine.wait_ready("probe").await;
    engine.create("measurer", real_model()).await;
    let probe = engine.instance("probe").await;
    let estimated = footprint_bytes(&probe, "estimated");
    let measured = footprint_bytes(&probe, "measured");
    eprintln!("tiny model at ctx 512: estimated {estimated} bytes, measured {measured} bytes");
    assert!(estimated > 1 << 20 && measured > 1 << 20, "{probe}");
    engine.stop().await;

    // A budget for the larger of the two plus half the smaller: one fits, two never do.
    let (large, small) = (estimated.max(measured), estimated.min(measured));
    let dir = data_dir();
    let mut config = real_llama_config(dir.path());
    config.scheduler.ram_budget_mib = Some((large + small / 2) >> 20);
    let engine = Engine::start(config).await;
    let mut events = SseReader::new(engine.get("/api/v1/events").await);
    engine.create("a", real_model()).await;
    engine.wait_ready("a").await;
    engine.create("b", real_model()).await;
    assert_eq!(status(&engine.instance("a").await), "stopped");
    let evicted = events
        .until("a's eviction", |e| {
            e.event == "scheduler" && e.json()["action"] == "evicted"
        })
        .await
        .json();
    assert_eq!(
        (
            evicted["instance"].as_str(),
            evicted["for_instance"].as_str()
        ),
        (Some("a"), Some("b"))
    );
    engine.wait_ready("b").await;
    // `a` now expects what it was measured taking instead of the estimate; b makes way only
    // if the two measures do not fit the budget together.
    let answer = chat(&engine, "a").await;
    assert_eq!(answer.status(), 200, "{:?}", answer.text().await);
    let budget = ((large + small / 2) >> 20) << 20;
    let a_view = engine.instance("a").await;
    let b_view = engine.instance("b").await;
    let a_expects = footprint_bytes(&a_view, "measured");
    eprintln!(
        "budget {budget}: a expects {a_expects}; b: {}",
        b_view["footprint"]
    );
    if status(&b_view) == "running" {
        let b_takes = footprint_bytes(&b_view, "measured");
        assert!(
            a_expects + b_takes <= budget,
            "both run over the budget: {a_view} {b_view}"
        );
        assert!(
            a_expects < estimated,
            "a was placed by its measure, not its estimate"
        );
    } else {
        let evicted = events
            .until("b's eviction", |e| {
                e.event == "scheduler" && e.json()["instance"] == "b"
            })
            .await
            .json();
        assert_eq!(evicted["for_instance"], "a");
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_streaming_request_hears_loading_comments_while_its_model_starts_then_its_answer() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    // The fake backend waits 2 s before it listens with this model name.
    let slow = json!({"backend_type": "llama_cpp", "on_demand_start": true,
                      "backend_options": {"model": fake_model("slow-start.gguf")}});
    engine.create("slow", slow).await;
    engine.post("/api/v1/instances/slow/stop").await;

    // The answer opens with the loading comment: its head went out while the start ran (a
    // stream is only opened early while the model must start).
    let response = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "slow", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let body = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();
    assert!(body.starts_with(": loading slow\n\n"), "{body}");
    // Then the backend's answer (the fake backend echoes the request it got).
    assert!(
        body.contains("\"path\": \"/v1/chat/completions\""),
        "{body}"
    );
    assert_eq!(engine.instance("slow").await["requests"], 1);

    // A start that fails ends the stream with the error, in OpenAI's shape.
    let broken = json!({"backend_type": "llama_cpp", "on_demand_start": true,
                        "backend_options": {"model": fake_model("exit-at-start.gguf")}});
    engine
        .post_json(
            "/api/v1/instances/broken",
            &json!({"backend_type": "llama_cpp", "on_demand_start": true, "auto_restart": false,
                    "backend_options": {"model": fake_model("ok-then-broken.gguf")}}),
        )
        .await;
    engine.post("/api/v1/instances/broken/stop").await;
    let updated = engine.put_json("/api/v1/instances/broken", &broken).await;
    assert_eq!(updated.status(), 200);
    let response = engine
        .post_json(
            "/v1/chat/completions",
            &json!({"model": "broken", "stream": true, "messages": []}),
        )
        .await;
    assert_eq!(response.status(), 200);
    let body = String::from_utf8(response.bytes().await.unwrap().to_vec()).unwrap();
    let last = body.trim_end().lines().last().unwrap();
    let error: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(error["error"]["code"], "instance_start_failed", "{body}");

    // A request that does not stream keeps waiting for the status line.
    engine.post("/api/v1/instances/slow/stop").await;
    let plain = chat(&engine, "slow").await;
    assert_eq!(plain.headers()["content-type"], "application/json");
    engine.stop().await;
}
