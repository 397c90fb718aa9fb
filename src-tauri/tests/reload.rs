//! Live reload of the configuration: the engine runs from a config file, and a change to the
//! file (or SIGHUP) reloads it. An unrelated change leaves a busy instance's process alone; a
//! change to its backend's environment restarts it once, after the stream it is answering; a
//! file that does not load is refused with its reason and changes nothing. With the fake
//! backend, and once with the real llama-server.
#![allow(clippy::unwrap_used)] // tests may unwrap

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::binary::required_file;
use common::*;
use corral::config::{Config, Overrides};
use futures_util::StreamExt;
use serde_json::{json, Value};

/// The engine's config file: the fake (or a real) llama.cpp backend with `variable` in its
/// environment, and `max_queue` as the unrelated setting to change.
fn write_config(
    file: &Path,
    dir: &Path,
    command: &str,
    args: &[String],
    variable: &str,
    max_queue: u32,
) {
    // The same ports for every version of one test's file.
    let first = port_block(dir);
    let yaml = format!(
        "instances:\n  data_dir: {data}\n  port_range: [{first}, {last}]\n  default_restart_delay: 1\n\
         scheduler:\n  max_queue: {max_queue}\n  min_residency_seconds: 0\n\
         auth:\n  require_inference_auth: false\n  require_management_auth: false\n\
         backends:\n  llama-cpp:\n    command: {command}\n    args: {args}\n    environment:\n      FAKE_BACKEND_TEST_VAR: {variable}\n",
        data = dir.display(),
        last = first + 19,
        args = serde_json::to_string(args).unwrap(),
    );
    // Written aside and renamed over, as editors save.
    let partial = file.with_extension("partial");
    std::fs::write(&partial, yaml).unwrap();
    std::fs::rename(&partial, file).unwrap();
}

/// A block of 20 ports of the test's own for the file's port range (the ports `test_config`
/// hands out start at 12000; these at 30000), the same for every write in one folder.
fn port_block(dir: &Path) -> u16 {
    use std::collections::HashMap;
    use std::sync::Mutex;
    static BLOCKS: Mutex<Option<HashMap<std::path::PathBuf, u16>>> = Mutex::new(None);
    let mut blocks = BLOCKS.lock().unwrap();
    let blocks = blocks.get_or_insert_with(HashMap::new);
    let next = 30000 + 20 * blocks.len() as u16;
    *blocks.entry(dir.to_owned()).or_insert(next)
}

fn overrides(file: &Path) -> Overrides {
    Overrides {
        config_file: Some(file.to_owned()),
        port: Some(0),
        ..Default::default()
    }
}

fn load_from(file: &Path) -> corral::config_watch::Load {
    let overrides = overrides(file);
    Arc::new(move || Config::load(&overrides).map_err(|e| e.to_string()))
}

/// The next `config` event of the feed.
async fn next_reload(events: &mut SseReader) -> Value {
    events
        .until("a config event", |e| e.event == "config")
        .await
        .json()
}

async fn pid(engine: &Engine, name: &str) -> u64 {
    engine.instance(name).await["pid"].as_u64().unwrap()
}

#[tokio::test]
async fn a_reload_leaves_busy_instances_alone_unless_their_launch_changed_then_restarts_once_after_the_stream(
) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corral.yaml");
    let fake = vec![fake_backend_script().display().to_string()];
    write_config(&file, dir.path(), "python3", &fake, "one", 256);
    let engine = Engine::start(Config::load(&overrides(&file)).unwrap()).await;
    let watch =
        corral::config_watch::spawn(&engine.registry, Some(&file), load_from(&file)).unwrap();
    let mut events = SseReader::new(engine.get("/api/v1/events").await);
    engine.create("a", llama(json!({}))).await;
    engine.wait_ready("a").await;
    let first_pid = pid(&engine, "a").await;

    // A stream of 40 events, 0.1 s apart, runs through both reloads below.
    let stream = engine
        .client
        .post(engine.url("/v1/slow_stream"))
        .json(&json!({"model": "a", "stream": true, "chunks": 40, "interval": 0.1}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    let mut received = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();

    // An unrelated setting: applied, nothing restarts.
    write_config(&file, dir.path(), "python3", &fake, "one", 100);
    let report = next_reload(&mut events).await;
    assert_eq!(report["applied"], true, "{report}");
    assert_eq!(
        report["changed"],
        json!(["scheduler.max_queue"]),
        "{report}"
    );
    assert_eq!(report["restarting"], json!([]), "{report}");
    let config: Value = engine.get("/api/v1/config").await.json().await.unwrap();
    assert_eq!(config["scheduler"]["max_queue"], 100);
    assert_eq!(pid(&engine, "a").await, first_pid);

    // Files that do not load are refused, with the reason; the running config stays.
    for (broken, reason) in [
        ("instances: [not, a, map\n", "corral.yaml"),
        ("instances:\n  port_range: [9000, 8000]\n", "port_range"),
        ("scheduler:\n  max_queue: lots\n", "max_queue"),
    ] {
        std::fs::write(dir.path().join("broken.partial"), broken).unwrap();
        std::fs::rename(dir.path().join("broken.partial"), &file).unwrap();
        let report = next_reload(&mut events).await;
        assert_eq!(report["applied"], false, "{report}");
        let error = report["error"].as_str().unwrap();
        assert!(error.contains(reason), "{error}");
        let config: Value = engine.get("/api/v1/config").await.json().await.unwrap();
        assert_eq!(config["scheduler"]["max_queue"], 100);
    }

    // The instance's backend environment: it restarts, but only once the stream has ended.
    write_config(&file, dir.path(), "python3", &fake, "two", 100);
    let report = next_reload(&mut events).await;
    assert_eq!(report["applied"], true, "{report}");
    assert_eq!(report["restarting"], json!(["a"]), "{report}");
    assert_eq!(
        pid(&engine, "a").await,
        first_pid,
        "restarted before the stream ended"
    );
    while let Some(chunk) = body.next().await {
        received.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert_eq!(received.matches("\"delta\"").count(), 40, "{received}");
    assert!(received.contains("[DONE]"), "{received}");
    let restarted = engine
        .wait_for("a", "restarted", |view| {
            view["health"] == "ready" && view["pid"].as_u64().is_some_and(|p| p != first_pid)
        })
        .await;
    let second_pid = restarted["pid"].as_u64().unwrap();
    let answer: Value = engine
        .post_json("/v1/chat/completions", &json!({"model": "a"}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["test_var"], "two");
    // Once: the same process a while later.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(pid(&engine, "a").await, second_pid);
    drop(watch);

    // SIGHUP alone (nothing watches the file now) reloads too.
    let watch = corral::config_watch::spawn(&engine.registry, None, load_from(&file)).unwrap();
    write_config(&file, dir.path(), "python3", &fake, "two", 50);
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    let report = next_reload(&mut events).await;
    assert_eq!(
        report["changed"],
        json!(["scheduler.max_queue"]),
        "{report}"
    );
    drop(watch);
    engine.stop().await;
}

/// The real llama-server: an unrelated change leaves its process serving; a change of its
/// environment restarts it once, and the new process answers.
#[tokio::test]
async fn the_real_llama_server_keeps_its_process_through_an_unrelated_reload_and_restarts_once_for_its_own(
) {
    let server = required_file("CORRAL_LLAMA_SERVER").display().to_string();
    let model = required_file("CORRAL_TEST_MODEL").display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("corral.yaml");
    write_config(&file, dir.path(), &server, &[], "one", 256);
    let engine = Engine::start(Config::load(&overrides(&file)).unwrap()).await;
    let _watch =
        corral::config_watch::spawn(&engine.registry, Some(&file), load_from(&file)).unwrap();
    let mut events = SseReader::new(engine.get("/api/v1/events").await);
    engine
        .create(
            "tiny",
            json!({"backend_type": "llama_cpp",
                   "backend_options": {"model": model, "ctx_size": 256}}),
        )
        .await;
    engine.wait_ready("tiny").await;
    let first_pid = pid(&engine, "tiny").await;
    let chat = json!({
        "model": "tiny",
        "stream": true,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "hello"}],
    });
    let stream = engine.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(stream.status(), 200);
    write_config(&file, dir.path(), &server, &[], "one", 100);
    let report = next_reload(&mut events).await;
    assert_eq!(report["restarting"], json!([]), "{report}");
    let text = stream.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    assert_eq!(pid(&engine, "tiny").await, first_pid);

    write_config(&file, dir.path(), &server, &[], "two", 100);
    let report = next_reload(&mut events).await;
    assert_eq!(report["restarting"], json!(["tiny"]), "{report}");
    let restarted = engine
        .wait_for("tiny", "restarted", |view| {
            view["health"] == "ready" && view["pid"].as_u64().is_some_and(|p| p != first_pid)
        })
        .await;
    let answer = engine.post_json("/v1/chat/completions", &chat).await;
    assert_eq!(answer.status(), 200);
    assert!(answer.text().await.unwrap().contains("[DONE]"));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        pid(&engine, "tiny").await,
        restarted["pid"].as_u64().unwrap()
    );
    engine.stop().await;
}
