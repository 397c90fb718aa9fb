//! The web UI, served at every path outside the API without auth.

use super::*;

/// `ui/dist` as the build embedded it (build.rs rebuilds the crate whenever it changes).
fn built_ui() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ui/dist")
}

#[tokio::test]
async fn the_web_ui_is_served_at_every_non_api_path_without_auth() {
    let dir = data_dir();
    let engine = Engine::start(with_auth(test_config(dir.path()))).await;
    let index = built_ui().join("index.html");
    assert_eq!(
        corral::api::ui::is_embedded(),
        index.is_file(),
        "the binary embeds ui/dist as it is on disk"
    );

    for path in ["/", "/some/deep/link", "/instances/llama"] {
        let response = engine.get(path).await;
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let cache = response.headers()["cache-control"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(
            content_type.starts_with("text/html"),
            "{path}: {content_type}"
        );
        assert_eq!(cache, "no-cache", "{path}");
        if index.is_file() {
            assert_eq!(response.status(), 200, "{path}");
            let body = response.bytes().await.unwrap();
            assert_eq!(body, std::fs::read(&index).unwrap(), "{path} is index.html");
        } else {
            assert_eq!(response.status(), 503, "{path}");
            let body = response.text().await.unwrap();
            assert!(body.contains("not built"), "{body}");
            assert!(body.contains("scripts/build-ui.sh"), "{body}");
        }
    }

    // Hashed assets are cached for good, with their own content type.
    let assets = built_ui().join("assets");
    let asset = std::fs::read_dir(&assets)
        .into_iter()
        .flatten()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "js"));
    if let Some(asset) = asset {
        let name = asset.file_name().unwrap().to_str().unwrap();
        let response = engine.get(&format!("/assets/{name}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["cache-control"],
            "public, max-age=31536000, immutable"
        );
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .contains("javascript"));
        assert_eq!(
            response.bytes().await.unwrap(),
            std::fs::read(&asset).unwrap()
        );
    }
    // A missing file is not answered with the app's page.
    assert_error(
        engine.get("/assets/missing-0000.js").await,
        404,
        "not_found",
    )
    .await;

    // API paths stay the API's: JSON errors, Ollama's routes, auth.
    let nope = engine
        .client
        .get(engine.url("/api/v1/nope"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_error(nope, 404, "not_found").await;
    assert_eq!(engine.get("/api/v1/instances").await.status(), 401);
    assert_error(engine.get("/api/nope").await, 404, "not_found").await;
    let tags = engine
        .client
        .get(engine.url("/api/tags"))
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(tags.status(), 200);
    let tags: Value = tags.json().await.unwrap();
    assert!(tags["models"].is_array(), "{tags}");

    // The Host check covers the UI too.
    let foreign = engine
        .client
        .get(engine.url("/"))
        .header("host", "evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(foreign.status(), 403);
    engine.stop().await;
}
