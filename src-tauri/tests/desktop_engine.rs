//! What the engine does for the desktop app, tested without a window: the tray's menu follows the
//! registry's change feed, and the desktop-only API is absent from a headless engine.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{assert_error, llama, test_config, Engine};
use corral::desktop::menu::{self, InstanceLine};
use serde_json::json;
use tokio::sync::mpsc;

/// Waits for a menu in which `name` reads `label`.
async fn menu_shows(
    menus: &mut mpsc::UnboundedReceiver<Vec<InstanceLine>>,
    name: &str,
    label: &str,
) {
    let wanted = async {
        while let Some(lines) = menus.recv().await {
            if lines.iter().any(|l| l.name == name && l.label() == label) {
                return;
            }
        }
        panic!("the watch ended before showing {label}");
    };
    tokio::time::timeout(Duration::from_secs(60), wanted)
        .await
        .unwrap_or_else(|_| panic!("the tray never showed {label}"));
}

#[tokio::test]
async fn the_tray_menu_follows_instances_as_they_start_and_stop() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    let (tx, mut menus) = mpsc::unbounded_channel();
    tokio::spawn(menu::watch(engine.registry.clone(), move |_, after| {
        tx.send(after.to_vec()).is_ok()
    }));
    assert_eq!(menus.recv().await, Some(Vec::new()), "first an empty menu");

    engine.create("alpha", llama(json!({}))).await;
    menu_shows(&mut menus, "alpha", "● alpha — running").await;

    let stopped = engine.post("/api/v1/instances/alpha/stop").await;
    assert_eq!(stopped.status(), 200);
    menu_shows(&mut menus, "alpha", "○ alpha — stopped").await;
    engine.stop().await;
}

#[tokio::test]
async fn pause_all_stops_what_runs_and_resume_starts_only_those() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    engine.create("one", llama(json!({}))).await;
    engine.create("two", llama(json!({}))).await;
    engine.create("idle", llama(json!({}))).await;
    for name in ["one", "two", "idle"] {
        engine.wait_ready(name).await;
    }
    assert_eq!(
        engine.post("/api/v1/instances/idle/stop").await.status(),
        200
    );

    let paused = menu::pause_all(&engine.registry).await;
    assert_eq!(paused, vec!["one".to_string(), "two".to_string()]);
    for name in ["one", "two", "idle"] {
        assert_eq!(engine.instance(name).await["status"], "stopped", "{name}");
    }

    let failed = menu::resume(&engine.registry, &paused).await;
    assert!(failed.is_empty(), "{failed:?}");
    engine.wait_ready("one").await;
    engine.wait_ready("two").await;
    assert_eq!(engine.instance("idle").await["status"], "stopped");
    engine.stop().await;
}

#[tokio::test]
async fn desktop_routes_say_the_engine_is_headless() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::start(test_config(dir.path())).await;
    assert_error(
        engine.get("/api/v1/desktop/settings").await,
        404,
        "not_desktop",
    )
    .await;
    assert_error(
        engine
            .put_json("/api/v1/desktop/settings", &json!({"close_to_tray": false}))
            .await,
        404,
        "not_desktop",
    )
    .await;
    assert_error(
        engine
            .post_json("/api/v1/desktop/open", &json!({"folder": "logs"}))
            .await,
        404,
        "not_desktop",
    )
    .await;
    assert_error(
        engine
            .post_json("/api/v1/desktop/open", &json!({"folder": "/etc"}))
            .await,
        400,
        "invalid_body",
    )
    .await;
    engine.stop().await;
}
