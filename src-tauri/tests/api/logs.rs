//! An instance's log: its last lines, and the live stream that follows it.

use super::*;

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
