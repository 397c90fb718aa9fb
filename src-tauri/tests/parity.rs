//! Parity of the two relays for `/v1`: the byte-level fast path and the router (axum + the
//! streaming proxy). One engine, one registry, two listeners: the engine's own server (fast path
//! first, the router for what it hands off) and a second one where the router serves every
//! request. Each case of one table goes to both, written and read as raw HTTP/1.1, and both
//! answers must agree on status, the headers a client acts on, and body.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::raw_http::{self, Answer};
use common::*;
use corral::api::AppState;
use corral::config::Config;
use corral::server::{serve_with, Relays};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Which relay answered a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Relay {
    Fast,
    Router,
}

/// What the parity checks read of an answer.
impl Answer {
    /// Which relay wrote this answer. hyper writes every header name in lower case and adds
    /// `date`; the fast path copies the backend's head as it came (the fake backend, Python's
    /// http.server, writes `Content-Type`) and writes its own answers without `date`. This is
    /// how a case proves it exercised the relay it claims to.
    fn relay(&self) -> Relay {
        let lower = self
            .headers
            .iter()
            .all(|(name, _)| !name.bytes().any(|b| b.is_ascii_uppercase()));
        if lower && self.headers.iter().any(|(name, _)| name == "date") {
            Relay::Router
        } else {
            Relay::Fast
        }
    }

    /// What both relays must agree on. Left out: the framing (`content-length`,
    /// `transfer-encoding`) and `connection`, which each relay chooses for its own connection
    /// to the client (the router lets hyper frame what it streams; the fast path passes the
    /// backend's framing on), and `date`, a clock reading. JSON bodies are compared as values:
    /// the fake backend echoes the request's headers as an object in the order they arrived,
    /// and each relay writes them in its own order.
    fn view(&self) -> (u16, BTreeMap<String, String>, Body) {
        let headers = self
            .headers
            .iter()
            .map(|(name, value)| (name.to_ascii_lowercase(), value.clone()))
            .filter(|(name, _)| {
                !["content-length", "transfer-encoding", "connection", "date"]
                    .contains(&name.as_str())
            })
            .collect();
        let body = match serde_json::from_slice::<Value>(&self.body) {
            Ok(mut value) => {
                // The key Corral gives the backend is new at each start of the instance (the
                // stopped instance starts once per relay); that it is not the client's key is
                // checked on each answer.
                if let Some(key) = value.pointer_mut("/headers/authorization") {
                    *key = json!("Bearer (the backend's key)");
                }
                Body::Json(value)
            }
            Err(_) => Body::Bytes(String::from_utf8_lossy(&self.body).into_owned()),
        };
        (self.status, headers, body)
    }

    /// Headers that describe one connection must never pass through, nor the backend's CORS
    /// (Corral's own CORS applies, and these requests carry no `Origin`).
    fn assert_clean(&self, case: &str) {
        for (name, value) in &self.headers {
            let name = name.to_ascii_lowercase();
            assert!(
                ![
                    "keep-alive",
                    "te",
                    "trailer",
                    "upgrade",
                    "proxy-authenticate",
                    "proxy-authorization"
                ]
                .contains(&name.as_str()),
                "{case}: hop-by-hop {name} leaked: {self:?}"
            );
            assert!(
                !name.starts_with("access-control-"),
                "{case}: the backend's CORS leaked: {self:?}"
            );
            if name == "connection" {
                assert_eq!(value, "close", "{case}: {self:?}");
            }
        }
    }
}

#[derive(Debug, PartialEq)]
enum Body {
    Json(Value),
    Bytes(String),
}

/// Sends `request` on a new connection to `addr` and reads the answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Option<Answer> {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    raw_http::read_answer(&mut stream, &mut Vec::new()).await
}

/// A `POST` with a JSON body and Corral's inference key, plus `extra` header lines.
fn post(path: &str, body: &Value, extra: &str) -> Vec<u8> {
    raw_http::post(
        path,
        body,
        &format!("Authorization: Bearer {INFERENCE_KEY}\r\n{extra}"),
    )
}

fn chat(model: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": "hi"}]})
}

/// One engine served twice: `fast_first` is its own server, `router_only` a second listener on
/// the same registry where the fast path is off.
struct Paths {
    engine: Engine,
    router_only: SocketAddr,
    _stop_router: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Paths {
    async fn start(config: impl FnOnce(&std::path::Path) -> Config) -> Paths {
        let dir = tempfile::tempdir().unwrap();
        let mut engine = Engine::start(config(dir.path())).await;
        let mut management = reqwest::header::HeaderMap::new();
        management.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {MANAGEMENT_KEY}").parse().unwrap(),
        );
        engine.client = reqwest::Client::builder()
            .default_headers(management)
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let state = AppState {
            registry: std::sync::Arc::clone(&engine.registry),
            config: std::sync::Arc::clone(&engine.config),
            desktop: None,
            downloads: std::sync::Arc::clone(&engine.downloads),
            keys: std::sync::Arc::clone(&engine.keys),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let router_only = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve_with(
            listener,
            state,
            async {
                let _ = stopped.await;
            },
            Relays::RouterOnly,
        ));
        Paths {
            engine,
            router_only,
            _stop_router: stop,
            _dir: dir,
        }
    }

    fn addr(&self, relays: Relays) -> SocketAddr {
        match relays {
            Relays::FastPathFirst => self.engine.addr,
            Relays::RouterOnly => self.router_only,
        }
    }

    async fn stop_instance(&self, name: &str) {
        let stopped = self
            .engine
            .post(&format!("/api/v1/instances/{name}/stop"))
            .await;
        assert_eq!(stopped.status(), 200);
        self.engine
            .wait_for(name, "stopped", |i| i["status"] == "stopped")
            .await;
    }

    /// How many times the fake backend of `name` logged that its client went away.
    async fn backend_saw_leave(&self, name: &str) -> usize {
        self.engine
            .get(&format!("/api/v1/instances/{name}/logs?lines=10000"))
            .await
            .text()
            .await
            .unwrap()
            .matches("client went away")
            .count()
    }

    async fn drops(&self, name: &str) -> u64 {
        let response = self
            .engine
            .get(&format!("/api/v1/instances/{name}/proxy/drops"))
            .await;
        assert_eq!(response.status(), 200);
        response.json::<Value>().await.unwrap()["drops"]
            .as_u64()
            .unwrap()
    }
}

/// What to do before a case is sent, on each path.
#[derive(Clone, Copy)]
enum Before {
    Nothing,
    /// Stop the instance, so that the request must start it on demand.
    Stop(&'static str),
}

/// What to check beyond the parity of the two answers.
#[derive(Clone, Copy)]
enum Extra {
    Nothing,
    /// The fake backend echoed the request: what it saw must be what Corral promises.
    Echo {
        backend_model: &'static str,
    },
    /// The backend read the request and closed without answering: exactly one request reached
    /// it (none sent again).
    OneDrop,
}

struct Case {
    name: &'static str,
    before: Before,
    request: Vec<u8>,
    /// Which relay of the engine's own server takes it.
    taken_by: Relay,
    status: u16,
    extra: Extra,
}

/// The engine for the table: auth on, a ready llama.cpp instance `m`, a ready MLX instance `mx`
/// (which wants its model path as `model`), and `cold`, stopped, started on demand.
async fn table_engine() -> Paths {
    let paths = Paths::start(|dir| with_auth(test_config(dir))).await;
    let engine = &paths.engine;
    engine.create("m", llama(json!({}))).await;
    engine
        .create(
            "mx",
            json!({"backend_type": "mlx_lm", "backend_options": {"model": "mlx-community/m"}}),
        )
        .await;
    engine
        .create("cold", llama(json!({"on_demand_start": true})))
        .await;
    for name in ["m", "mx", "cold"] {
        engine.wait_ready(name).await;
    }
    paths
}

fn cases() -> Vec<Case> {
    let plain = chat("m");
    vec![
        Case {
            name: "ready instance, plain chat",
            before: Before::Nothing,
            // Hop-by-hop headers, a forged x-forwarded-host and Corral's page cookie beside the
            // backend's own: none but the backend's cookie may reach it.
            request: post(
                "/v1/chat/completions",
                &plain,
                "Keep-Alive: timeout=5\r\nTE: trailers\r\nX-Request-Id: 7\r\n\
                 X-Forwarded-Host: evil.example\r\nX-Forwarded-Proto: https\r\n",
            ),
            taken_by: Relay::Fast,
            status: 200,
            extra: Extra::Echo { backend_model: "m" },
        },
        Case {
            name: "Corral's page cookie stays with Corral",
            before: Before::Nothing,
            request: post(
                "/v1/chat/completions",
                &plain,
                "Cookie: theme=dark; corral_proxy_session=secret\r\n",
            ),
            taken_by: Relay::Fast,
            status: 200,
            extra: Extra::Echo { backend_model: "m" },
        },
        Case {
            name: "the model is renamed to what the backend expects",
            before: Before::Nothing,
            request: post("/v1/chat/completions", &chat("mx"), ""),
            taken_by: Relay::Fast,
            status: 200,
            extra: Extra::Echo {
                backend_model: "mlx-community/m",
            },
        },
        Case {
            name: "stopped instance, started on demand",
            before: Before::Stop("cold"),
            request: post("/v1/chat/completions", &chat("cold"), ""),
            taken_by: Relay::Router,
            status: 200,
            extra: Extra::Echo {
                backend_model: "cold",
            },
        },
        Case {
            name: "unknown model",
            before: Before::Nothing,
            request: post("/v1/chat/completions", &chat("nobody"), ""),
            taken_by: Relay::Router,
            status: 404,
            extra: Extra::Nothing,
        },
        Case {
            name: "bad inference key",
            before: Before::Nothing,
            request: raw_http::post(
                "/v1/chat/completions",
                &plain,
                "Authorization: Bearer sk-wrong\r\n",
            ),
            taken_by: Relay::Router,
            status: 401,
            extra: Extra::Nothing,
        },
        Case {
            // The first `Authorization` header is the one read: a valid key in a second one
            // opens nothing on either path.
            name: "valid key only in a second Authorization header",
            before: Before::Nothing,
            request: raw_http::post(
                "/v1/chat/completions",
                &plain,
                &format!("Authorization: Basic x\r\nAuthorization: Bearer {INFERENCE_KEY}\r\n"),
            ),
            taken_by: Relay::Router,
            status: 401,
            extra: Extra::Nothing,
        },
        Case {
            name: "missing inference key",
            before: Before::Nothing,
            request: raw_http::post("/v1/chat/completions", &plain, ""),
            taken_by: Relay::Router,
            status: 401,
            extra: Extra::Nothing,
        },
        Case {
            name: "SSE stream, chunked, no length",
            before: Before::Nothing,
            request: post(
                "/v1/slow_stream",
                &json!({"model": "m", "chunks": 5, "interval": 0.01}),
                "",
            ),
            taken_by: Relay::Fast,
            status: 200,
            extra: Extra::Nothing,
        },
        Case {
            name: "answer with neither length nor chunks",
            before: Before::Nothing,
            request: post("/v1/unframed", &json!({"model": "m"}), ""),
            taken_by: Relay::Fast,
            status: 200,
            extra: Extra::Nothing,
        },
        Case {
            name: "backend closes without answering",
            before: Before::Nothing,
            request: post("/v1/drop", &json!({"model": "m"}), ""),
            taken_by: Relay::Fast,
            status: 502,
            extra: Extra::OneDrop,
        },
    ]
}

/// Sends one case through one server, with its checks of that answer alone.
async fn run(paths: &Paths, case: &Case, relays: Relays) -> Answer {
    let label = format!("{} ({relays:?})", case.name);
    if let Before::Stop(name) = case.before {
        paths.stop_instance(name).await;
    }
    let drops = match case.extra {
        Extra::OneDrop => paths.drops("m").await,
        _ => 0,
    };
    let answer = exchange(paths.addr(relays), &case.request)
        .await
        .unwrap_or_else(|| panic!("{label}: closed without an answer"));
    assert_eq!(
        answer.status,
        case.status,
        "{label}: {}",
        String::from_utf8_lossy(&answer.body)
    );
    assert!(answer.whole, "{label}: cut short: {answer:?}");
    let expected = match relays {
        Relays::FastPathFirst => case.taken_by,
        Relays::RouterOnly => Relay::Router,
    };
    assert_eq!(answer.relay(), expected, "{label}: {answer:?}");
    answer.assert_clean(&label);
    match case.extra {
        Extra::Nothing => {}
        Extra::Echo { backend_model } => {
            let echo = answer.json();
            let seen: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
            assert_eq!(seen["model"], backend_model, "{label}: {echo}");
            let headers = &echo["headers"];
            assert_eq!(headers["x-forwarded-host"], "localhost", "{label}: {echo}");
            assert_eq!(headers["x-forwarded-proto"], "http", "{label}: {echo}");
            assert_eq!(headers["content-type"], "application/json", "{label}");
            for gone in ["keep-alive", "te", "x-api-key"] {
                assert!(headers.get(gone).is_none(), "{label}: {gone}: {echo}");
            }
            // The backend gets the key Corral holds for it, if any, never the client's.
            let client_key = format!("Bearer {INFERENCE_KEY}");
            assert_ne!(headers["authorization"], client_key.as_str(), "{label}");
            if let Some(cookie) = headers.get("cookie") {
                assert_eq!(cookie, "theme=dark", "{label}: {echo}");
            }
        }
        Extra::OneDrop => assert_eq!(paths.drops("m").await, drops + 1, "{label}"),
    }
    answer
}

#[tokio::test]
async fn both_relays_answer_every_case_of_the_table_alike() {
    let paths = table_engine().await;
    for case in cases() {
        let fast_first = run(&paths, &case, Relays::FastPathFirst).await;
        let router_only = run(&paths, &case, Relays::RouterOnly).await;
        assert_eq!(
            fast_first.view(),
            router_only.view(),
            "{}: the relays disagree",
            case.name
        );
    }
    paths.engine.stop().await;
}

#[tokio::test]
async fn a_client_leaving_mid_stream_ends_the_backend_request_on_both_relays() {
    let paths = table_engine().await;
    for relays in [Relays::FastPathFirst, Relays::RouterOnly] {
        let left_before = paths.backend_saw_leave("m").await;
        let mut stream = TcpStream::connect(paths.addr(relays)).await.unwrap();
        let request = post(
            "/v1/slow_stream",
            &json!({"model": "m", "chunks": 500, "interval": 0.02}),
            "",
        );
        stream.write_all(&request).await.unwrap();
        let mut first = [0u8; 1024];
        assert!(stream.read(&mut first).await.unwrap() > 0, "{relays:?}");
        paths
            .engine
            .wait_for("m", "busy", |i| i["in_flight"] == 1)
            .await;
        drop(stream);
        paths
            .engine
            .wait_for("m", "free", |i| i["in_flight"] == 0)
            .await;
        // The backend's next write fails: its connection was closed, not drained to the end
        // (which would take the 10 s the stream lasts).
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while paths.backend_saw_leave("m").await == left_before {
            assert!(
                std::time::Instant::now() < deadline,
                "{relays:?}: the backend kept streaming"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    paths.engine.stop().await;
}

/// What differs between any two answers of a real backend, whichever relay carried them: ids,
/// clock readings, and how much of the prompt its cache already held (the second request finds
/// the first one's prompt there).
fn without_clock(mut value: Value) -> Value {
    if let Some(object) = value.as_object_mut() {
        for key in ["id", "created", "timings"] {
            object.remove(key);
        }
        if let Some(usage) = object.get_mut("usage").and_then(Value::as_object_mut) {
            usage.remove("prompt_tokens_details");
        }
    }
    value
}

/// The data of each event of an SSE body, JSON ones without their ids and clock readings.
fn events(body: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter_map(|event| {
            let data = event
                .lines()
                .filter_map(|line| line.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n");
            if data.is_empty() {
                return None;
            }
            Some(match serde_json::from_str::<Value>(&data) {
                Ok(value) => without_clock(value),
                Err(_) => Value::String(data),
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_relays_carry_a_real_llama_server_answer_and_stream_alike() {
    let llama_server = common::binary::required_file("CORRAL_LLAMA_SERVER");
    let model = common::binary::required_file("CORRAL_TEST_MODEL");
    let paths = Paths::start(|dir| {
        let mut config = test_config(dir);
        config.backends.llama_cpp.command = llama_server.display().to_string();
        config.backends.llama_cpp.args = Vec::new();
        config
    })
    .await;
    paths
        .engine
        .create(
            "tiny",
            json!({"backend_type": "llama_cpp",
                   "backend_options": {"model": model, "ctx_size": 256, "gpu_layers": 0}}),
        )
        .await;
    paths.engine.wait_ready("tiny").await;
    // Greedy and seeded, so that the same prompt gives the same tokens twice.
    let ask = |stream: bool| {
        raw_http::post(
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": [{"role": "user", "content": "Say hi"}],
                    "max_tokens": 8, "temperature": 0, "seed": 1, "stream": stream}),
            "",
        )
    };
    for stream in [false, true] {
        let mut answers = Vec::new();
        for relays in [Relays::FastPathFirst, Relays::RouterOnly] {
            let answer = exchange(paths.addr(relays), &ask(stream)).await.unwrap();
            assert_eq!(answer.status, 200, "{relays:?}: {answer:?}");
            assert!(answer.whole, "{relays:?}: {answer:?}");
            answer.assert_clean(&format!("real llama-server ({relays:?})"));
            let expected = match relays {
                Relays::FastPathFirst => Relay::Fast,
                Relays::RouterOnly => Relay::Router,
            };
            assert_eq!(answer.relay(), expected, "{answer:?}");
            answers.push(answer);
        }
        let (fast_first, router_only) = (&answers[0], &answers[1]);
        let content_type = |answer: &Answer| answer.header("content-type").map(str::to_owned);
        assert_eq!(content_type(fast_first), content_type(router_only));
        if stream {
            let events = events(&fast_first.body);
            assert!(events.len() > 2, "{events:?}");
            assert_eq!(events, self::events(&router_only.body));
        } else {
            let answer = without_clock(fast_first.json());
            assert!(answer["choices"][0]["message"].is_object(), "{answer}");
            assert_eq!(answer, without_clock(router_only.json()));
        }
    }
    paths.engine.stop().await;
}
