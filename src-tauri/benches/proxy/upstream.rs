//! The fixed-answer upstream: this same bench executable, re-executed with `UPSTREAM_FLAG`, serves
//! `/health`, a fixed chat completion, (for `"stream": true`) SSE chunks every 10 ms, and
//! `/v1/embeddings`, which reads a body of any size as it streams in and says how long it was.
//!
//! Being a real process that takes llama-server's `--host`/`--port`, Corral can launch it as a
//! `llama_cpp` instance, and the bench can reach the very same server directly and through nginx.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use axum::Router;

/// First argument that turns the bench binary into the upstream server.
pub const UPSTREAM_FLAG: &str = "--corral-bench-upstream";
/// SSE chunks per streamed answer, and the pause between two of them.
pub const STREAM_CHUNKS: usize = 20;
pub const STREAM_GAP: Duration = Duration::from_millis(10);

const ANSWER: &str = r#"{"id":"chatcmpl-bench","object":"chat.completion","created":1700000000,"model":"bench","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I help you today?"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":9,"total_tokens":18}}"#;

/// Runs the upstream when the process was started as one; `None` for a normal bench run.
pub fn run_if_requested() -> Option<anyhow::Result<()>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) != Some(UPSTREAM_FLAG) {
        return None;
    }
    Some(serve(listen_address(&args)))
}

/// llama-server's `--host`/`--port`; every other flag Corral passes is ignored.
fn listen_address(args: &[String]) -> SocketAddr {
    let value = |flag: &str| {
        args.windows(2)
            .find(|pair| pair[0] == flag)
            .map(|pair| pair[1].clone())
    };
    let host = value("--host")
        .and_then(|h| h.parse::<IpAddr>().ok())
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let port = value("--port")
        .and_then(|p| p.parse::<u16>().ok())
        .unwrap_or(8080);
    SocketAddr::new(host, port)
}

fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async move {
        let app = Router::new()
            .route("/health", get(|| async { r#"{"status":"ok"}"# }))
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(sink));
        // Without TCP_NODELAY, Nagle holds each small SSE chunk until the client's delayed ACK
        // (~40 ms): llama-server sets it, so the stand-in does too.
        let listener = tokio::net::TcpListener::bind(addr).await?.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        // Corral stops a backend with SIGINT; keep-alive connections must not hold the exit up.
        tokio::select! {
            served = axum::serve(listener, app) => served?,
            _ = tokio::signal::ctrl_c() => {}
        }
        Ok(())
    })
}

/// Reads the request body to its end without keeping it; answers its length (and its start, to
/// show what reached the backend).
async fn sink(body: Body) -> Response {
    use futures_util::StreamExt;
    let mut stream = body.into_data_stream();
    let mut length = 0usize;
    let mut start = Vec::new();
    while let Some(chunk) = stream.next().await {
        let Ok(chunk) = chunk else {
            return StatusCode::BAD_REQUEST.into_response();
        };
        if start.len() < 64 {
            start.extend_from_slice(&chunk[..chunk.len().min(64 - start.len())]);
        }
        length += chunk.len();
    }
    let answer = serde_json::json!({
        "object": "list",
        "data": [],
        "received": length,
        "start": String::from_utf8_lossy(&start),
    });
    (
        [(header::CONTENT_TYPE, "application/json")],
        answer.to_string(),
    )
        .into_response()
}

async fn chat(body: Bytes) -> Response {
    let streaming = serde_json::from_slice::<serde_json::Value>(&body)
        .map(|v| v["stream"] == true)
        .unwrap_or(false);
    if !streaming {
        return ([(header::CONTENT_TYPE, "application/json")], ANSWER).into_response();
    }
    // The first chunk goes out at once, so time to first byte measures the path, not the pause.
    // Deadlines on a fixed cadence from the first chunk, so timer slack does not accumulate.
    let start = tokio::time::Instant::now();
    let chunks = futures_util::stream::unfold(0usize, move |i| async move {
        if i > STREAM_CHUNKS {
            return None;
        }
        // Even a past deadline costs a timer tick (~1 ms), so the first chunk does not wait.
        if i > 0 {
            tokio::time::sleep_until(start + STREAM_GAP * i as u32).await;
        }
        let data = if i == STREAM_CHUNKS {
            "data: [DONE]\n\n".to_owned()
        } else {
            format!(
                "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}}}}]}}\n\n"
            )
        };
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(data)), i + 1))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(chunks))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
