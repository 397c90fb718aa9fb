//! A plain `cargo build` gives a binary with its web UI: build.rs builds `ui/dist` when it is
//! stale, before the crate (which embeds it) compiles. The cargo steps run after that build, so
//! this binary must serve the UI on disk, as new as its sources.

// A failed unwrap is a failed test, with the value in the message.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

fn ui_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui")
}

/// The newest change under `path` (a file or a folder).
fn newest(path: &Path) -> SystemTime {
    let mut time = path.metadata().unwrap().modified().unwrap();
    if path.is_dir() {
        for entry in std::fs::read_dir(path).unwrap() {
            time = time.max(newest(&entry.unwrap().path()));
        }
    }
    time
}

#[tokio::test]
async fn the_binary_cargo_built_serves_the_web_ui_built_from_the_current_sources() {
    let index = ui_dir().join("dist/index.html");
    assert!(
        index.is_file(),
        "no ui/dist/index.html after the build: build.rs builds it when npm is on PATH (see the \
         build's warnings)"
    );
    let built = index.metadata().unwrap().modified().unwrap();
    for source in ["src", "index.html", "package.json", "package-lock.json"] {
        let path = ui_dir().join(source);
        assert!(
            newest(&path) <= built,
            "ui/{source} changed after ui/dist was built: the build did not rebuild the UI"
        );
    }

    let data = tempfile::tempdir().unwrap();
    // No instance is started: the backend's command is never run.
    let (mut corral, base) =
        common::binary::spawn_corral(data.path(), Path::new("llama-server"), (11600, 11609), &[])
            .await;
    let response = reqwest::get(format!("{base}/")).await.unwrap();
    let status = response.status();
    let body = response.text().await.unwrap();
    corral.kill().await.unwrap();

    assert_eq!(status, 200, "the UI page: {body}");
    assert!(!body.contains("not built"), "{body}");
    // Vite's output: the app's module script from the hashed assets folder.
    assert!(
        body.contains(r#"<script type="module""#) && body.contains("/assets/"),
        "{body}"
    );
    assert_eq!(
        body,
        std::fs::read_to_string(&index).unwrap(),
        "the embedded index.html is the one in ui/dist"
    );
}
