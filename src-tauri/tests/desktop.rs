//! End to end through the desktop app's window: the real `corral` app (Tauri, WebKitGTK) driven
//! over WebDriver (`tauri-driver` + Debian's `WebKitWebDriver`) under Xvfb, supervising a real
//! llama-server. Run by `scripts/test-desktop.sh`, which provides the display, the drivers and
//! the backend:
//!
//! ```sh
//! bash scripts/test-desktop.sh
//! ```
//!
//! Only built with the `desktop` feature, and ignored unless asked for (`--ignored`): it needs a
//! display and the WebDriver tools, which a plain `cargo test` cannot assume.
#![cfg(all(feature = "desktop", target_os = "linux"))]
#![allow(clippy::unwrap_used)]

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::binary::required_file;
use common::free_port;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use tokio::process::{Child, Command};

/// Instance ports of this test; other e2e tests use other ranges.
const INSTANCE_PORTS: (u16, u16) = (11400, 11449);
const STARTUP: Duration = Duration::from_secs(120);

/// `tauri-driver`: `CORRAL_TAURI_DRIVER`, else the copy `scripts/test-desktop.sh` caches.
fn tauri_driver() -> PathBuf {
    let path = std::env::var_os("CORRAL_TAURI_DRIVER")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|home| {
                Path::new(&home).join(".cache/corral-test/tauri-driver/bin/tauri-driver")
            })
        })
        .expect("set CORRAL_TAURI_DRIVER or HOME");
    assert!(
        path.is_file(),
        "{} is missing: run scripts/test-desktop.sh, which installs it",
        path.display()
    );
    path
}

/// Process state letter from /proc (`Z` for a zombie); `None` once the process is gone.
fn process_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces; the state follows it.
    stat.rsplit_once(") ")
        .and_then(|(_, rest)| rest.chars().next())
}

fn alive(pid: u32) -> bool {
    matches!(process_state(pid), Some(state) if state != 'Z' && state != 'X')
}

fn parent_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// Live processes started by a supervisor for `instance` (the supervisor marks each backend's
/// environment with a token beginning with the instance name).
fn backends_of(instance: &str) -> Vec<u32> {
    let token = format!("CORRAL_SUPERVISOR_TOKEN={instance}-");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|environ| {
                environ
                    .split(|&b| b == 0)
                    .any(|var| var.starts_with(token.as_bytes()))
            })
        })
        .filter(|&pid| alive(pid))
        .collect()
}

async fn poll<T>(what: &str, limit: Duration, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The app's engine, reached with the key the app generated for itself.
struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.base))
            .bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call(reqwest::Method::GET, path, None).await;
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        let (status, body) = self.call(reqwest::Method::PUT, path, Some(body)).await;
        assert_eq!(status, 200, "PUT {path}: {body}");
        body
    }
}

/// `tauri-driver` and the app it launches, with a home, config and data folder of their own.
struct Desktop {
    driver: Child,
    client: Client,
}

impl Desktop {
    async fn launch(home: &Path, config: &Path, data: &Path) -> Desktop {
        let port = free_port();
        let native_port = free_port();
        let driver = Command::new(tauri_driver())
            .args(["--port", &port.to_string()])
            .args(["--native-port", &native_port.to_string()])
            // The app inherits this environment through WebKitWebDriver.
            .env("HOME", home)
            .env_remove("XDG_CONFIG_HOME")
            .env_remove("XDG_DATA_HOME")
            .env("CORRAL_CONFIG_PATH", config)
            .env("CORRAL_DATA_DIRECTORY", data)
            .env("RUST_LOG", "info,corral=debug")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("tauri-driver starts");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "tauri:options".into(),
            json!({"application": env!("CARGO_BIN_EXE_corral")}),
        );
        let url = format!("http://127.0.0.1:{port}");
        let client = poll("tauri-driver opens a session", STARTUP, async || {
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&url)
                .await
                .map_err(|e| eprintln!("not yet: {e}"))
                .ok()
        })
        .await;
        Desktop { driver, client }
    }

    /// Ends the WebDriver session and stops tauri-driver with SIGTERM (SIGKILL would leave
    /// WebKitWebDriver running).
    async fn close(mut self) {
        let _ = self.client.close().await;
        if let Some(pid) = self.driver.id() {
            let _ = kill(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGTERM);
        }
        let _ = tokio::time::timeout(Duration::from_secs(20), self.driver.wait()).await;
    }

    async fn has(&self, test_id: &str) -> bool {
        let selector = format!("[data-testid=\"{test_id}\"]");
        self.client
            .find_all(Locator::Css(&selector))
            .await
            .is_ok_and(|found| !found.is_empty())
    }

    async fn element(&self, test_id: &str) -> fantoccini::elements::Element {
        let selector = format!("[data-testid=\"{test_id}\"]");
        poll(&format!("{test_id} on the page"), STARTUP, async || {
            self.client.find(Locator::Css(&selector)).await.ok()
        })
        .await
    }
}

/// Saves the window to `CORRAL_DESKTOP_SCREENSHOT` when it is set (docs/screenshots/desktop.png).
async fn screenshot(desktop: &Desktop) {
    if let Ok(path) = std::env::var("CORRAL_DESKTOP_SCREENSHOT") {
        let png = desktop.client.screenshot().await.unwrap();
        std::fs::write(&path, png).unwrap();
        eprintln!("screenshot: {path}");
    }
}

/// Creates the instance through the UI's form, as a user would.
async fn create_from_the_ui(desktop: &Desktop, name: &str, model: &Path) {
    desktop.element("new-instance").await.click().await.unwrap();
    let fields = [
        ("field-name", name.to_owned()),
        ("field-model", model.display().to_string()),
        ("field-ctx_size", "256".to_owned()),
    ];
    for (field, value) in fields {
        // ctx_size keeps the tiny model's memory small; forms without it still work.
        if field == "field-ctx_size" && !desktop.has(field).await {
            continue;
        }
        let input = desktop.element(field).await;
        input.clear().await.unwrap();
        input.send_keys(&value).await.unwrap();
    }
    desktop
        .element("save-instance")
        .await
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a display, tauri-driver and WebKitWebDriver: run scripts/test-desktop.sh"]
async fn the_app_opens_authorised_runs_an_instance_and_quits_without_leftovers() {
    assert!(
        std::env::var_os("DISPLAY").is_some(),
        "no display: run under xvfb-run (scripts/test-desktop.sh does)"
    );
    assert!(
        std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some(),
        "no D-Bus session (single instance needs one): run under dbus-run-session \
         (scripts/test-desktop.sh does)"
    );
    let llama_server = required_file("CORRAL_LLAMA_SERVER");
    let model = required_file("CORRAL_TEST_MODEL");
    let dir = tempfile::tempdir().unwrap();
    let (home, data) = (dir.path().join("home"), dir.path().join("data"));
    std::fs::create_dir_all(&home).unwrap();
    // The configured port is taken: the app must move to the next free one.
    let squatter = TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = squatter.local_addr().unwrap().port();
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{port: {taken}}}\n\
             instances: {{port_range: [{}, {}]}}\n\
             backends: {{llama-cpp: {{command: {}}}}}\n\
             auth: {{require_inference_auth: false}}\n",
            INSTANCE_PORTS.0,
            INSTANCE_PORTS.1,
            llama_server.display()
        ),
    )
    .unwrap();

    let desktop = Desktop::launch(&home, &config, &data).await;

    // The window is on the engine's own address, on the next free port.
    let opened = poll("the window loads the engine", STARTUP, async || {
        let url = desktop.client.current_url().await.ok()?;
        (url.scheme() == "http").then_some(url)
    })
    .await;
    assert_eq!(opened.host_str(), Some("127.0.0.1"));
    let port = opened.port().unwrap();
    assert!(port > taken, "port {port} should follow the taken {taken}");
    assert_eq!(opened.path(), "/");
    drop(squatter);

    // The app made itself a management key and handed it to its window.
    let keys: Value =
        serde_json::from_slice(&std::fs::read(data.join("desktop-keys.json")).unwrap()).unwrap();
    let key = keys["management_key"].as_str().unwrap().to_owned();
    let api = Api {
        base: format!("http://127.0.0.1:{port}"),
        key: key.clone(),
        http: reqwest::Client::new(),
    };
    let index = api.http.get(format!("{}/", api.base)).send().await.unwrap();
    assert!(
        index.status().is_success(),
        "the binary carries no web UI ({}): scripts/test-desktop.sh builds it first",
        index.status()
    );

    // The dashboard shows without a login, with the key taken from the fragment.
    let name = format!("desk{}", std::process::id());
    desktop.element("nav-dashboard").await;
    assert!(
        !desktop.has("login-key").await,
        "the window asked for a key"
    );
    let stored = desktop
        .client
        .execute("return sessionStorage.getItem('corral.key')", vec![])
        .await
        .unwrap();
    assert_eq!(stored, json!(key));
    let url = desktop.client.current_url().await.unwrap();
    assert!(
        !url.as_str().contains(&key),
        "the key stays in the address: {url}"
    );
    create_from_the_ui(&desktop, &name, &model).await;
    let status = desktop.element(&format!("instance-status-{name}")).await;
    poll("the instance shows running", STARTUP, async || {
        let text = status.text().await.ok()?;
        text.to_lowercase().contains("running").then_some(())
    })
    .await;
    let running = poll("the backend is ready", STARTUP, async || {
        let instance = api.get(&format!("/instances/{name}")).await;
        (instance["status"] == "running" && instance["health"] == "ready").then_some(instance)
    })
    .await;
    let backend = u32::try_from(running["pid"].as_u64().unwrap()).unwrap();
    assert!(alive(backend));
    // The card catches up with the ready backend (the window paints live updates).
    let card = desktop.element(&format!("instance-card-{name}")).await;
    poll("the card shows the ready instance", STARTUP, async || {
        let text = card.text().await.ok()?;
        (!text.contains("starting")).then_some(())
    })
    .await;
    screenshot(&desktop).await;

    // A second launch hands over to the running app and exits; the running app's backend is
    // untouched (a second engine over the same data would have killed it as a leftover).
    let second = Command::new(env!("CARGO_BIN_EXE_corral"))
        .env("HOME", &home)
        .env("CORRAL_CONFIG_PATH", &config)
        .env("CORRAL_DATA_DIRECTORY", &data)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .status();
    let second = tokio::time::timeout(STARTUP, second)
        .await
        .expect("the second launch exits")
        .unwrap();
    assert!(second.success(), "second launch: {second}");
    assert!(
        alive(backend),
        "the second launch killed the running backend"
    );
    assert_eq!(api.get(&format!("/instances/{name}")).await["pid"], backend);

    // The desktop settings exist in the app, and act on the OS: a login item appears and goes.
    let settings = api.get("/desktop/settings").await;
    assert_eq!(
        settings,
        json!({"close_to_tray": true, "start_at_login": false})
    );
    let autostart_dir = home.join(".config/autostart");
    let enabled = api
        .put("/desktop/settings", json!({"start_at_login": true}))
        .await;
    assert_eq!(enabled["start_at_login"], true);
    assert_eq!(std::fs::read_dir(&autostart_dir).unwrap().count(), 1);
    api.put("/desktop/settings", json!({"start_at_login": false}))
        .await;
    assert_eq!(std::fs::read_dir(&autostart_dir).unwrap().count(), 0);
    let changed = api
        .put("/desktop/settings", json!({"close_to_tray": false}))
        .await;
    assert_eq!(changed["close_to_tray"], false);
    let saved: Value =
        serde_json::from_slice(&std::fs::read(data.join("desktop.json")).unwrap()).unwrap();
    assert_eq!(saved["close_to_tray"], false);

    // The logs folder is handed to the system's opener (xdg-open here).
    let (status, body) = api
        .call(
            reqwest::Method::POST,
            "/desktop/open",
            Some(json!({"folder": "logs"})),
        )
        .await;
    assert_eq!(status, 204, "{body}");

    // The dashboard stays live while the app runs: still connected, still showing it.
    let status = desktop.element(&format!("instance-status-{name}")).await;
    assert_eq!(status.text().await.unwrap().trim(), "running");
    let body = desktop.client.find(Locator::Css("body")).await.unwrap();
    let text = body.text().await.unwrap();
    assert!(
        !text.contains("Connecting"),
        "the dashboard lost its event stream:\n{text}"
    );

    // Quit the app as the system does at logout: SIGTERM. Every backend stops gracefully
    // (the log shows the supervisor's stop marker) and none is left behind.
    let app = parent_of(backend);
    kill(Pid::from_raw(i32::try_from(app).unwrap()), Signal::SIGTERM).unwrap();
    poll("the app exits", STARTUP, async || {
        (!alive(app)).then_some(())
    })
    .await;
    assert!(!alive(backend), "llama-server {backend} outlived the app");
    assert_eq!(backends_of(&name), Vec::<u32>::new());
    let log = std::fs::read_to_string(data.join("logs").join(format!("{name}.log"))).unwrap();
    assert!(
        log.contains(&format!("=== Instance {name} stopped at")),
        "the backend was not stopped gracefully:\n{log}"
    );

    desktop.close().await;
}
