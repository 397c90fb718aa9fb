//! `/v1` at the connection level, written and read as raw HTTP/1.1: one keep-alive connection
//! carrying routed requests and every other kind, pipelining, `100 Continue`, answers framed
//! every way, and backend connections that went stale — against the fake backend.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use common::raw_http::{self, post, Answer};
use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A client connection that keeps what it read past one answer for the next.
struct Client {
    stream: TcpStream,
    read: Vec<u8>,
}

impl Client {
    async fn connect(engine: &Engine) -> Client {
        Client {
            stream: TcpStream::connect(engine.addr).await.unwrap(),
            read: Vec::new(),
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }

    /// Reads more; false at EOF.
    async fn fill(&mut self) -> bool {
        let mut buf = [0u8; 8192];
        let n = self.stream.read(&mut buf).await.unwrap();
        self.read.extend_from_slice(&buf[..n]);
        n > 0
    }

    async fn answer(&mut self) -> Answer {
        let answer = raw_http::read_answer(&mut self.stream, &mut self.read)
            .await
            .expect("closed before an answer");
        assert!(answer.whole, "closed inside the body");
        answer
    }

    /// POSTs `body` to `path` with `Expect: 100-continue`: the head, then the body once the server
    /// answered `100 Continue`; the final answer is left to read.
    async fn send_after_continue(&mut self, path: &str, body: &Value) {
        let request = post(path, body, "Expect: 100-continue\r\n");
        let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        self.send(&request[..head_end]).await;
        assert_eq!(self.answer().await.status, 100);
        self.send(&request[head_end..]).await;
    }

    /// Whether the server closed the connection (nothing more to read).
    async fn closed(&mut self) -> bool {
        self.read.is_empty() && !self.fill().await
    }
}

fn chat(model: &str) -> Vec<u8> {
    post(
        "/v1/chat/completions",
        &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
        "",
    )
}

async fn engine_with(name: &str) -> (tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create(name, llama(json!({}))).await;
    engine.wait_ready(name).await;
    (dir, engine)
}

/// What the fake backend echoed of the request it got.
fn echoed(answer: &Answer) -> (String, Value) {
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let echo = answer.json();
    (
        echo["path"].as_str().unwrap().to_owned(),
        echo["headers"].clone(),
    )
}

#[tokio::test]
async fn one_connection_carries_routed_requests_and_every_other_route_in_order() {
    let (_dir, engine) = engine_with("m").await;
    let mut client = Client::connect(&engine).await;

    client.send(&chat("m")).await;
    let first = client.answer().await;
    let (path, headers) = echoed(&first);
    assert_eq!(path, "/v1/chat/completions");
    assert_eq!(headers["x-forwarded-host"], "localhost");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["content-type"], "application/json");
    assert!(headers["host"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The backend's own CORS headers never reach the client.
    assert_eq!(first.header("access-control-allow-origin"), None);

    // A management request on the same connection, then routed ones again.
    client
        .send(b"GET /api/v1/instances HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    let list = client.answer().await;
    assert_eq!(list.status, 200);
    assert_eq!(list.json()[0]["name"], "m");
    client.send(&chat("m")).await;
    echoed(&client.answer().await);

    // Pipelined: three requests in one write, three answers in order.
    let mut pipelined = chat("m");
    pipelined.extend(post(
        "/v1/embeddings",
        &json!({"model": "m", "input": "x"}),
        "",
    ));
    pipelined.extend(chat("no-such-model"));
    client.send(&pipelined).await;
    assert_eq!(echoed(&client.answer().await).0, "/v1/chat/completions");
    assert_eq!(echoed(&client.answer().await).0, "/v1/embeddings");
    let unknown = client.answer().await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["code"], "model_not_found");

    let counted = engine
        .wait_for("m", "counted", |i| {
            i["requests"] == 4 && i["in_flight"] == 0
        })
        .await;
    assert_eq!(counted["tokens_prompt"], 20, "{counted}");
    engine.stop().await;
}

#[tokio::test]
async fn a_client_that_asks_for_100_continue_gets_it_before_sending_the_body() {
    let (_dir, engine) = engine_with("m").await;
    let mut client = Client::connect(&engine).await;
    client
        .send_after_continue(
            "/v1/completions",
            &json!({"model": "m", "prompt": "x".repeat(4000)}),
        )
        .await;
    assert_eq!(echoed(&client.answer().await).0, "/v1/completions");
    engine.stop().await;
}

#[tokio::test]
async fn a_request_after_100_continue_that_the_router_answers_gets_one_100_continue() {
    let (_dir, engine) = engine_with("m").await;
    let mut client = Client::connect(&engine).await;
    client
        .send_after_continue(
            "/v1/completions",
            &json!({"model": "unknown", "prompt": "x".repeat(4000)}),
        )
        .await;
    let refused = client.answer().await;
    assert_eq!(refused.status, 404, "{refused:?}");
    assert_eq!(refused.json()["error"]["code"], "model_not_found");
    engine.stop().await;
}

#[tokio::test]
async fn streams_chunked_and_unframed_answers_arrive_whole_and_are_counted() {
    let (_dir, engine) = engine_with("m").await;
    let mut client = Client::connect(&engine).await;
    client
        .send(&post(
            "/v1/slow_stream",
            &json!({"model": "m", "chunks": 3, "interval": 0.02}),
            "",
        ))
        .await;
    let stream = client.answer().await;
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    let text = String::from_utf8(stream.body).unwrap();
    assert_eq!(text.matches("data: ").count(), 5, "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");

    // No length and no chunks: the client gets the body, then the connection closes.
    client
        .send(&post("/v1/unframed", &json!({"model": "m"}), ""))
        .await;
    let unframed = client.answer().await;
    assert_eq!(unframed.header("connection"), Some("close"), "{unframed:?}");
    assert_eq!(unframed.json()["unframed"], true);
    assert!(client.closed().await);

    let counted = engine
        .wait_for("m", "counted", |i| {
            i["requests"] == 2 && i["in_flight"] == 0
        })
        .await;
    assert_eq!(counted["tokens_completion"], 14, "{counted}");
    // The backend connection that closed is not reused.
    let mut again = Client::connect(&engine).await;
    again.send(&chat("m")).await;
    echoed(&again.answer().await);
    engine.stop().await;
}

/// llama-server closes its connection right after every streamed answer, without saying so: a
/// request sent on that connection in the moment before the close was lost (502), which one
/// test against the real server hit in a few runs out of forty. Neither relay reuses a
/// connection after a stream; the fake backend's close comes 0.3 s late, so a reuse would
/// always lose the next request here.
#[tokio::test]
async fn a_request_right_after_a_stream_is_answered_on_either_path() {
    let (_dir, engine) = engine_with("m").await;
    for router in [false, true] {
        let mut client = Client::connect(&engine).await;
        if router {
            // Any management request hands the connection to hyper and the router for good.
            client
                .send(b"GET /api/v1/instances HTTP/1.1\r\nhost: localhost\r\n\r\n")
                .await;
            assert_eq!(client.answer().await.status, 200);
        }
        for _ in 0..3 {
            client
                .send(&post("/v1/stream_then_close", &json!({"model": "m"}), ""))
                .await;
            let stream = client.answer().await;
            assert_eq!(stream.status, 200, "router: {router}");
            assert!(String::from_utf8_lossy(&stream.body).contains("[DONE]"));
            client.send(&chat("m")).await;
            let (path, _) = echoed(&client.answer().await);
            assert_eq!(path, "/v1/chat/completions", "router: {router}");
        }
    }
    engine.stop().await;
}

#[tokio::test]
async fn a_restarted_backend_is_reached_on_new_connections() {
    let (_dir, engine) = engine_with("m").await;
    let mut client = Client::connect(&engine).await;
    for _ in 0..3 {
        client.send(&chat("m")).await;
        echoed(&client.answer().await);
        // The pooled backend connections die with the old process.
        let restarted = engine.post("/api/v1/instances/m/restart").await;
        assert_eq!(restarted.status(), 200);
        engine.wait_ready("m").await;
    }
    client.send(&chat("m")).await;
    echoed(&client.answer().await);
    engine.stop().await;
}

#[tokio::test]
async fn a_client_that_leaves_mid_stream_ends_the_backend_request() {
    let (_dir, engine) = engine_with("m").await;
    let mut client = Client::connect(&engine).await;
    client
        .send(&post(
            "/v1/slow_stream",
            &json!({"model": "m", "chunks": 200, "interval": 0.02}),
            "",
        ))
        .await;
    assert!(client.fill().await);
    engine.wait_for("m", "busy", |i| i["in_flight"] == 1).await;
    drop(client);
    engine.wait_for("m", "free", |i| i["in_flight"] == 0).await;
    // The backend's next write fails: the upstream connection was closed, not drained.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        let logs = engine
            .get("/api/v1/instances/m/logs?lines=50")
            .await
            .text()
            .await
            .unwrap();
        if logs.contains("client went away") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the backend kept streaming: {logs}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    engine.stop().await;
}
