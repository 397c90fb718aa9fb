//! What the API says about itself and its input: parse-command, versions, the OpenAPI
//! document, the option schema, and errors that name the field.

use super::*;

#[tokio::test]
async fn parse_command_turns_a_command_line_into_options() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let parse = |backend: &'static str, body: Value| {
        let engine = &engine;
        async move {
            engine
                .post_json(&format!("/api/v1/backends/{backend}/parse-command"), &body)
                .await
        }
    };

    let llama: Value = parse(
        "llama-cpp",
        json!({"command": "llama-server -m /m/a.gguf -ngl 0 --port 8081"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(llama["backend_type"], "llama_cpp");
    assert_eq!(llama["backend_options"]["model"], "/m/a.gguf");
    assert_eq!(llama["backend_options"]["gpu_layers"], 0);
    assert_eq!(llama["backend_options"]["port"], 8081);
    let mlx: Value = parse(
        "mlx",
        json!({"command": "mlx_lm.server --model mlx-community/m --port 8082"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(mlx["backend_type"], "mlx_lm");
    assert_eq!(mlx["backend_options"]["model"], "mlx-community/m");
    let vllm: Value = parse(
        "vllm",
        json!({"command": "vllm serve org/model --port 8083"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(vllm["backend_type"], "vllm");
    assert_eq!(vllm["backend_options"]["model"], "org/model");

    let not_json = engine
        .client
        .post(engine.url("/api/v1/backends/llama-cpp/parse-command"))
        .header("content-type", "application/json")
        .body("command")
        .send()
        .await
        .unwrap();
    assert_error(not_json, 400, "invalid_request").await;
    assert_error(
        parse("llama-cpp", json!({"cmd": "x"})).await,
        400,
        "invalid_request",
    )
    .await;
    assert_error(
        parse("llama-cpp", json!({"command": "   "})).await,
        400,
        "invalid_command",
    )
    .await;
    assert_error(
        parse(
            "llama-cpp",
            json!({"command": "llama-server -m 'unterminated"}),
        )
        .await,
        400,
        "parse_error",
    )
    .await;
    assert_error(
        parse("llama-cpp", json!({"command": "llama-server ---x"})).await,
        400,
        "parse_error",
    )
    .await;
    assert_error(
        parse("ollama", json!({"command": "ollama serve"})).await,
        404,
        "unknown_backend",
    )
    .await;
    engine.stop().await;
}

#[tokio::test]
async fn version_and_the_configured_llama_server_answer_in_text() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let version = engine.get("/api/v1/version").await;
    assert_eq!(version.status(), 200);
    assert!(version.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = version.text().await.unwrap();
    assert!(
        text.starts_with(&format!("Version: {}\nCommit: ", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(text.contains("\nBuild Time: "));

    for (route, expected) in [
        ("help", "usage: fake-backend"),
        ("version", "version: 1 (fake)"),
        ("devices", "FAKE0"),
    ] {
        // The seed's path and llamactl 0.6+'s answer the same.
        for path in [
            format!("/api/v1/server/{route}"),
            format!("/api/v1/backends/llama-cpp/{route}"),
        ] {
            let response = engine.get(&path).await;
            assert_eq!(response.status(), 200, "{path}");
            assert!(response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/plain"));
            let text = response.text().await.unwrap();
            assert!(text.contains(expected), "{path}: {text}");
        }
    }
    // The other backends' install and parse-command routes still take their place.
    let parse = engine
        .post_json(
            "/api/v1/backends/llama-cpp/parse-command",
            &json!({"command": "llama-server -m /m.gguf"}),
        )
        .await;
    assert_eq!(parse.status(), 200);
    engine.stop().await;

    let dir = data_dir();
    let mut config = test_config(dir.path());
    config.backends.llama_cpp.command = "/nonexistent/llama-server".into();
    let engine = Engine::start(config).await;
    let failed = engine.get("/api/v1/server/help").await;
    let body = assert_error(failed, 500, "server_command_failed").await;
    assert!(body["details"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/llama-server"));
    engine.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_errors() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    assert_error(engine.get("/api/v1/nowhere").await, 404, "not_found").await;
    let patch = engine
        .client
        .patch(engine.url("/api/v1/instances/x"))
        .send()
        .await
        .unwrap();
    assert_error(patch, 405, "method_not_allowed").await;
    engine.stop().await;
}

#[tokio::test]
async fn openapi_document_describes_every_route_and_the_backend_options() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let response = engine.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert!(document["openapi"].as_str().unwrap().starts_with("3."));
    let paths = document["paths"].as_object().unwrap();
    for path in [
        "/api/v1/version",
        "/api/v1/config",
        "/api/v1/server/help",
        "/api/v1/server/version",
        "/api/v1/server/devices",
        "/api/v1/backends/llama-cpp/help",
        "/api/v1/backends/llama-cpp/version",
        "/api/v1/backends/llama-cpp/devices",
        "/api/v1/backends/{backend}/parse-command",
        "/api/v1/instances",
        "/api/v1/instances/{name}",
        "/api/v1/instances/{name}/start",
        "/api/v1/instances/{name}/stop",
        "/api/v1/instances/{name}/restart",
        "/api/v1/instances/{name}/logs",
        "/api/v1/instances/{name}/proxy/{rest}",
        "/api/v1/openapi.json",
        "/api/v1/events",
        "/api/v1/schema",
        "/api/v1/instances/{name}/logs/stream",
    ] {
        assert!(paths.contains_key(path), "{path} missing");
    }
    let instance = &paths["/api/v1/instances/{name}"];
    for method in ["get", "post", "put", "delete"] {
        assert!(
            instance.get(method).is_some(),
            "{method} /instances/{{name}}"
        );
    }
    let schemas = document["components"]["schemas"].as_object().unwrap();
    for name in [
        "Instance",
        "InstanceOptions",
        "CreateInstanceOptions",
        "ErrorBody",
        "LlamaCppOptions",
        "MlxLmOptions",
        "VllmOptions",
        "OptionsSchema",
        "OptionField",
    ] {
        assert!(schemas.contains_key(name), "schema {name} missing");
    }
    assert!(schemas["LlamaCppOptions"]["properties"]["gpu_layers"].is_object());

    // Every reference points at a schema of the document.
    fn refs<'a>(value: &'a Value, found: &mut Vec<&'a str>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(target)) = map.get("$ref") {
                    found.push(target);
                }
                map.values().for_each(|v| refs(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&document, &mut found);
    assert!(found.contains(&"#/components/schemas/VllmOptions"));
    for target in found {
        let name = target.strip_prefix("#/components/schemas/").unwrap();
        assert!(schemas.contains_key(name), "dangling $ref {target}");
    }
    engine.stop().await;
}

#[tokio::test]
async fn schema_lists_every_backend_option_with_its_type_and_the_lifecycle_settings() {
    use corral::backends::{specs, BackendType, OptionKind};
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let response = engine.get("/api/v1/schema").await;
    assert_eq!(response.status(), 200);
    let schema: Value = response.json().await.unwrap();

    for (backend, key) in [
        (BackendType::LlamaCpp, "llama_cpp"),
        (BackendType::MlxLm, "mlx_lm"),
        (BackendType::Vllm, "vllm"),
    ] {
        let options = schema["backends"][key]["options"].as_array().unwrap();
        assert!(schema["backends"][key]["label"].is_string());
        assert_eq!(options.len(), specs(backend).len(), "{key}");
        for spec in specs(backend) {
            let field = options
                .iter()
                .find(|field| field["name"] == spec.name)
                .unwrap_or_else(|| panic!("{key}: {} missing", spec.name));
            let expected = match spec.kind {
                OptionKind::Bool => "boolean",
                OptionKind::Int => "integer",
                OptionKind::Float => "number",
                OptionKind::String => "string",
                OptionKind::StringList => "string_list",
            };
            assert_eq!(field["type"], expected, "{key}.{}", spec.name);
            assert_eq!(field["flag"], spec.flag);
        }
        let model = options.iter().find(|f| f["name"] == "model").unwrap();
        assert_eq!(model["common"], true, "{key}: model is common");
    }
    let llama = schema["backends"]["llama_cpp"]["options"]
        .as_array()
        .unwrap();
    let field = |name: &str| llama.iter().find(|f| f["name"] == name).unwrap().clone();
    assert_eq!(field("ctx_size")["aliases"], json!(["-c"]));
    assert_eq!(field("ctx_size")["common"], true);
    assert_eq!(field("flash_attn")["choices"], json!(["on", "off", "auto"]));
    assert_eq!(field("temp")["default"], json!(0.8));
    assert_eq!(field("top_k")["common"], false);

    let lifecycle: Vec<&str> = schema["lifecycle"]
        .as_array()
        .unwrap()
        .iter()
        .map(|field| field["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        lifecycle,
        [
            "auto_restart",
            "max_restarts",
            "restart_delay",
            "on_demand_start",
            "idle_timeout",
            "aliases",
            "group",
            "persistent",
            "capture_bodies",
            "max_concurrent",
            "max_queue",
            "environment",
            "command_override"
        ]
    );
    // Defaults are the configured ones.
    assert_eq!(schema["lifecycle"][1]["default"], 3);
    assert_eq!(schema["lifecycle"][0]["type"], "boolean");
    engine.stop().await;
}

#[tokio::test]
async fn errors_about_one_option_name_the_field() {
    let dir = data_dir();
    let engine = Engine::start(test_config(dir.path())).await;
    let url = engine.url("/api/v1/instances/fields");
    let cases = [
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"ctx_size": "big"}}),
            "invalid_options",
            "backend_options.ctx_size",
        ),
        // An alias of the flag is reported under the option's own name.
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"ngl": true}}),
            "invalid_options",
            "backend_options.gpu_layers",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"flash_attn": "maybe"}}),
            "invalid_options",
            "backend_options.flash_attn",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"no_such_flag": 1}}),
            "invalid_options",
            "backend_options.no_such_flag",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {"port": 70000}}),
            "invalid_options",
            "backend_options.port",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}, "idle_timeout": "soon"}),
            "invalid_options",
            "idle_timeout",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}, "aliases": ["a", "a"]}),
            "invalid_options",
            "aliases",
        ),
        (
            json!({"backend_type": "llama_cpp", "backend_options": {}, "aliases": [1]}),
            "invalid_options",
            "aliases",
        ),
        (
            json!({"backend_type": "ollama", "backend_options": {}}),
            "unknown_backend_type",
            "backend_type",
        ),
    ];
    for (body, code, field) in cases {
        let response = engine.client.post(&url).json(&body).send().await.unwrap();
        let error = assert_error(response, 400, code).await;
        assert_eq!(error["field"], field, "{body} -> {error}");
    }

    let bad_name = engine
        .post_json("/api/v1/instances/bad;name", &llama(json!({})))
        .await;
    let error = assert_error(bad_name, 400, "invalid_instance_name").await;
    assert_eq!(error["field"], "name");

    // A port another instance owns is a conflict at the port field.
    let first = engine.create("first", llama(json!({}))).await;
    let port = first["options"]["backend_options"]["port"].clone();
    let taken = engine
        .post_json(
            "/api/v1/instances/second",
            &json!({"backend_type": "llama_cpp", "backend_options": {"port": port}}),
        )
        .await;
    let error = assert_error(taken, 409, "port_taken").await;
    assert_eq!(error["field"], "backend_options.port");

    // Errors about no field in particular carry none.
    let missing = assert_error(
        engine.get("/api/v1/instances/ghost").await,
        404,
        "instance_not_found",
    )
    .await;
    assert!(missing.get("field").is_none(), "{missing}");
    engine.stop().await;
}

/// llamactl 0.20's `GET /api/v1/config`: the merged configuration, behind the management key,
/// with no secret in it.
#[tokio::test]
async fn the_config_in_force_is_shown_to_the_management_key_without_its_secrets() {
    let dir = data_dir();
    let mut config = with_auth(test_config(dir.path()));
    config.backends.llama_cpp.args = vec!["--api-key".into(), "sk-flag-secret".into()];
    config
        .backends
        .llama_cpp
        .environment
        .insert("HF_TOKEN".into(), "hf_env_secret".into());
    config.instances.max_running_instances = Some(3);
    let engine = Engine::start(config).await;

    let anonymous = engine.get("/api/v1/config").await;
    assert_eq!(anonymous.status(), 401);
    let inference = engine
        .client
        .get(engine.url("/api/v1/config"))
        .bearer_auth(INFERENCE_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(
        inference.status(),
        401,
        "the inference key does not open it"
    );

    let response = engine
        .client
        .get(engine.url("/api/v1/config"))
        .bearer_auth(MANAGEMENT_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    for secret in [
        MANAGEMENT_KEY,
        INFERENCE_KEY,
        "sk-flag-secret",
        "hf_env_secret",
    ] {
        assert!(!text.contains(secret), "{secret} is shown: {text}");
    }
    let shown: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(shown["instances"]["max_running_instances"], 3);
    assert_eq!(shown["instances"]["on_demand_start_timeout"], 60.0);
    assert_eq!(shown["auth"]["management_keys"], json!(["[redacted]"]));
    assert_eq!(shown["backends"]["llama-cpp"]["args"][1], "[redacted]");
    assert_eq!(
        shown["backends"]["llama-cpp"]["environment"]["HF_TOKEN"],
        "[redacted]"
    );
    engine.stop().await;
}
