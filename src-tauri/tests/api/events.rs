//! The live event feed, and the end of open streams when the engine stops.

use super::*;

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
        test_model()
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
