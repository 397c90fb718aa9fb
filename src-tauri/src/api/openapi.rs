//! The OpenAPI document of the whole API, generated from the handlers' and the types'
//! annotations; the three `backend_options` schemas come from the backends' option tables.

use axum::Json;
use serde_json::{json, Value};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    activity, auth_keys, backends, config, desktop, downloads, error, events, instances,
    llama_router, logs_stream, metrics, models, openai, schema, system, version,
};
use crate::instances::{BACKEND_SCHEMA_NAMES, MAX_NAME_LEN};

#[derive(OpenApi)]
#[openapi(
    info(title = "Corral API", description = "Runs, routes and supervises local LLM inference servers; compatible with llamactl's management API."),
    paths(
        version::version,
        config::config,
        activity::list,
        activity::get,
        auth_keys::create,
        auth_keys::list,
        auth_keys::get,
        auth_keys::update,
        auth_keys::delete,
        auth_keys::permissions,
        metrics::metrics,
        version::help,
        version::server_version,
        version::devices,
        version::llama_help,
        version::llama_version,
        version::llama_devices,
        system::system,
        backends::list,
        backends::parse_command,
        backends::install,
        backends::install_job,
        backends::cancel_install,
        models::list,
        instances::list,
        instances::get,
        instances::create,
        instances::update,
        instances::delete,
        instances::start,
        instances::stop,
        instances::restart,
        instances::logs,
        instances::proxy_token,
        instances::proxy,
        llama_router::models,
        llama_router::load,
        llama_router::unload,
        openai::models,
        openai::model,
        openai::inference,
        openapi_json,
        events::events,
        logs_stream::logs_stream,
        schema::schema,
        desktop::settings,
        desktop::update_settings,
        desktop::open,
        downloads::download,
        downloads::jobs,
        downloads::job,
        downloads::cancel,
        downloads::delete_model,
    ),
    components(schemas(
        error::ErrorBody,
        openai::OpenAiErrorBody,
        crate::instances::ConfigReload
    )),
    modifiers(&Security),
    security(("bearer" = []), ("api_key" = [])),
)]
struct ApiDoc;

/// Management and inference keys: `Authorization: Bearer`, or `X-API-Key`.
struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "api_key",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::new("X-API-Key"))),
        );
    }
}

/// The document itself, with the rules every route shares (see `conform`).
pub fn document() -> Value {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    // Built from plain data: serializing it cannot fail.
    let mut document = serde_json::to_value(&document).unwrap_or_default();
    conform(&mut document);
    document
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<Value> {
    Json(document())
}

/// What the server does on every route of a kind, written into the document once here rather
/// than on each handler, so that no route can miss it:
/// - every route answers 401 without a valid key (the auth middleware's own body);
/// - every route with a body answers 413 past the body limit and 415 for a body that is not JSON;
/// - every `{name}` follows the instance-name rules and answers 400 for a name that does not;
/// - the two event streams describe their events, and instance options tie `backend_options`
///   to `backend_type`; inference bodies must name a `model`.
fn conform(document: &mut Value) {
    let schemas = &mut document["components"]["schemas"];
    // `LlamaCppOptions`, `MlxLmOptions` and `VllmOptions`, from the backends' option tables.
    for (backend, name) in BACKEND_SCHEMA_NAMES {
        schemas[name] = crate::backends::options_schema(backend);
    }
    schemas["AuthErrorBody"] = json!({
        "type": "object",
        "description": "Missing or invalid key (llamactl's body).",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "enum": ["authentication_error"]},
            },
        }},
    });
    schemas["InstancesEvent"] = sse_event(&[
        (
            "snapshot",
            "Every instance, as `GET /instances` lists them (JSON).",
        ),
        (
            "instance",
            "One instance that changed, as `GET /instances/{name}` shows it (JSON).",
        ),
        (
            "deleted",
            "`{\"name\": ...}` of an instance that was deleted (JSON).",
        ),
        (
            "download",
            "One model download job, as `GET /models/jobs/{id}` shows it (JSON).",
        ),
        (
            "config",
            "A reload of the configuration, or a new one refused: a `ConfigReload` (JSON).",
        ),
    ]);
    schemas["LogEvent"] = sse_event(&[
        ("line", "One line of the log, as text."),
        (
            "marker",
            "How many lines this stream skipped because the client fell behind.",
        ),
    ]);
    // A scoped key names its instances; an unscoped one names none.
    let create_key = &mut schemas["CreateKeyRequest"];
    create_key["if"] = json!({"properties": {"permission_mode": {"const": "per_instance"}}});
    create_key["then"] =
        json!({"required": ["instance_ids"], "properties": {"instance_ids": {"minItems": 1}}});
    create_key["else"] = json!({"properties": {"instance_ids": {"maxItems": 0}}});
    create_key["properties"]["instance_ids"]["items"] = json!({
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_NAME_LEN,
        "pattern": "^[A-Za-z0-9_-](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?$",
    });
    for (name, options) in [("CreateInstanceOptions", false), ("InstanceOptions", true)] {
        tie_backend_options(&mut schemas[name], options);
    }

    let Some(paths) = document["paths"].as_object_mut() else {
        return;
    };
    for (path, item) in paths.iter_mut() {
        let management = path.starts_with("/api/v1/");
        let error = if management {
            "#/components/schemas/ErrorBody"
        } else {
            "#/components/schemas/OpenAiErrorBody"
        };
        // Routes a stored key may reach, held to its scope.
        let scoped = path == "/v1/{path}" || path.contains("/proxy");
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for operation in item.values_mut() {
            if scoped {
                add_response(
                    operation,
                    "403",
                    "`permission_denied`: the key may not use this instance",
                    error,
                );
            }
            add_response(
                operation,
                "401",
                "Missing or invalid key",
                "#/components/schemas/AuthErrorBody",
            );
            if operation.get("requestBody").is_some() {
                add_response(
                    operation,
                    "413",
                    "The body is larger than the configured limit",
                    error,
                );
                add_response(
                    operation,
                    "415",
                    "The body is not JSON (`Content-Type: application/json` or `+json`)",
                    error,
                );
            }
            let mut names_instance = false;
            if let Some(parameters) = operation
                .get_mut("parameters")
                .and_then(Value::as_array_mut)
            {
                for parameter in parameters {
                    if parameter["in"] == "path" && parameter["name"] == "name" {
                        parameter["schema"] = json!({
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_NAME_LEN,
                            "pattern": "^[A-Za-z0-9_-](?:[A-Za-z0-9_.-]*[A-Za-z0-9_-])?$",
                        });
                        names_instance = true;
                    }
                }
            }
            if names_instance {
                add_response(operation, "400", "Invalid instance name", error);
            }
        }
    }
    let stream =
        |path: &str| format!("/{path}/get/responses/200/content/text~1event-stream/schema");
    for (path, schema) in [
        ("paths/~1api~1v1~1events", "InstancesEvent"),
        (
            "paths/~1api~1v1~1instances~1{name}~1logs~1stream",
            "LogEvent",
        ),
    ] {
        if let Some(target) = document.pointer_mut(&stream(path)) {
            *target = json!({"$ref": format!("#/components/schemas/{schema}")});
        }
    }
    let inference = "/paths/~1v1~1{path}/post/requestBody/content/application~1json/schema";
    if let Some(target) = document.pointer_mut(inference) {
        *target = json!({
            "type": "object",
            "description": "The backend's request; `model` names the instance or an alias",
            "required": ["model"],
            "properties": {"model": {"type": "string", "minLength": 1}},
        });
    }
}

/// Adds a response for `status` unless the handler documents one.
fn add_response(operation: &mut Value, status: &str, description: &str, schema: &str) {
    let responses = &mut operation["responses"];
    if responses.get(status).is_none() {
        responses[status] = json!({
            "description": description,
            "content": {"application/json": {"schema": {"$ref": schema}}},
        });
    }
}

/// One server-sent event as a client parses it: its `event` name and its `data`.
fn sse_event(events: &[(&str, &str)]) -> Value {
    let names: Vec<&str> = events.iter().map(|(name, _)| *name).collect();
    let description = events
        .iter()
        .map(|(name, data)| format!("`{name}`: {data}"))
        .collect::<Vec<_>>()
        .join(" ");
    json!({
        "type": "object",
        "description": format!("One server-sent event. {description} Keep-alive comments carry no event."),
        "required": ["event", "data"],
        "properties": {
            "event": {"type": "string", "enum": names},
            "data": {"type": "string"},
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
    })
}

/// `backend_options` follows the schema of the backend `backend_type` names, and both are
/// required (the server refuses a definition without them).
fn tie_backend_options(schema: &mut Value, response: bool) {
    let branches: Vec<Value> = BACKEND_SCHEMA_NAMES
        .iter()
        .map(|(backend, name)| {
            json!({"properties": {
                "backend_type": {"const": backend.as_str()},
                "backend_options": {"$ref": format!("#/components/schemas/{name}")},
            }})
        })
        .collect();
    schema["oneOf"] = Value::Array(branches);
    if !response {
        schema["required"] = json!(["backend_type", "backend_options"]);
        // 1 to 256 characters without control characters once trimmed (the server trims), each
        // alias once.
        schema["properties"]["aliases"]["items"] = json!({
            "type": "string",
            "pattern": "^\\s*[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]{0,254}[^\\s\\x00-\\x1f\\x7f-\\x9f])?\\s*$",
        });
        schema["properties"]["aliases"]["uniqueItems"] = json!(true);
        // Names a process environment can hold; values without a NUL.
        schema["properties"]["environment"]["propertyNames"] = json!({
            "pattern": "^[^=\\x00-\\x1f\\x7f-\\x9f]{1,256}$",
        });
        schema["properties"]["environment"]["additionalProperties"] = json!({
            "type": "string",
            "pattern": "^[^\\x00]*$",
        });
        // Blank (no group), or 1 to 64 characters without control characters once trimmed.
        schema["properties"]["group"]["pattern"] = json!(
            "^\\s*(?:[^\\s\\x00-\\x1f\\x7f-\\x9f](?:[^\\x00-\\x1f\\x7f-\\x9f]{0,62}[^\\s\\x00-\\x1f\\x7f-\\x9f])?)?\\s*$"
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;

    /// The OpenAPI 3.1 schema of OpenAPI documents, as the OpenAPI Initiative publishes it
    /// (https://spec.openapis.org/oas/3.1/schema/2022-10-07, Apache-2.0), copied from the
    /// `openapi-spec-validator` package on PyPI (resources/schemas/v3.1/schema.json).
    const OAS_3_1_SCHEMA: &str = include_str!("../../tests/fixtures/openapi-3.1-schema.json");

    #[tokio::test]
    async fn the_served_document_is_valid_openapi_3_1() {
        let Json(document) = openapi_json().await;
        let schema: serde_json::Value = serde_json::from_str(OAS_3_1_SCHEMA).unwrap();
        let validator = jsonschema::draft202012::new(&schema).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&document)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{}", errors.join("\n"));
        // The check does refuse a document that is not OpenAPI.
        let mut broken = document;
        broken["paths"] = serde_json::json!([]);
        assert!(!validator.is_valid(&broken));
    }

    /// The web UI's copy of the document: its TypeScript types (`schema.d.ts` beside it) are
    /// generated from this file, so the copy must be exactly what the engine serves.
    const UI_COPY: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../ui/src/lib/api/openapi.json"
    );

    /// The one command that rewrites the UI's copy and regenerates its types.
    const REFRESH: &str = "bash scripts/update-api-types.sh";

    /// The copy's text for `document`: pretty JSON with a final newline, so that a change to the
    /// document reads as a small diff in review.
    fn copy_text(document: &Value) -> String {
        let mut text = serde_json::to_string_pretty(document).unwrap();
        text.push('\n');
        text
    }

    /// Where `copy` first differs from `served`, or None when they are the same text.
    fn first_difference(copy: &str, served: &str) -> Option<String> {
        if copy == served {
            return None;
        }
        let mut copy_lines = copy.lines();
        let mut served_lines = served.lines();
        for number in 1.. {
            match (copy_lines.next(), served_lines.next()) {
                (Some(a), Some(b)) if a == b => continue,
                (None, None) => break,
                (a, b) => {
                    return Some(format!(
                        "line {number}: the UI's copy has {:?}, the engine serves {:?}",
                        a.unwrap_or("<end of file>"),
                        b.unwrap_or("<end of file>"),
                    ))
                }
            }
        }
        // Same lines, different line endings or final newline.
        Some("the files differ in line endings or the final newline".to_owned())
    }

    /// `CORRAL_UPDATE_OPENAPI=1` makes the test write the copy instead of comparing (the refresh
    /// script runs it so); CI runs it without and fails on any difference.
    #[test]
    fn the_ui_copy_of_the_document_is_the_document_the_engine_serves() {
        let served = copy_text(&document());
        if std::env::var_os("CORRAL_UPDATE_OPENAPI").is_some_and(|value| value != "0") {
            let path = std::path::Path::new(UI_COPY);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, &served).unwrap();
            return;
        }
        let copy = std::fs::read_to_string(UI_COPY)
            .unwrap_or_else(|e| panic!("{UI_COPY}: {e}; create it with `{REFRESH}`"));
        if let Some(difference) = first_difference(&copy, &served) {
            panic!(
                "ui/src/lib/api/openapi.json is not the document the engine serves ({difference}): \
                 run `{REFRESH}` to refresh it and the UI's types generated from it, then commit both"
            );
        }
        // The comparison does see a change anywhere in the file, including its last line.
        let changed = served.replacen("\"Corral API\"", "\"Other API\"", 1);
        assert!(first_difference(&changed, &served)
            .unwrap()
            .contains("Other API"));
        assert!(first_difference(served.trim_end(), &served).is_some());
    }
}
