//! The OpenAPI document of the whole API, generated from the handlers' and the types'
//! annotations; the three `backend_options` schemas come from the backends' option tables.

use axum::Json;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    backends, desktop, error, events, instances, logs_stream, openai, schema, server, system,
};
use crate::instances::BACKEND_SCHEMA_NAMES;

#[derive(OpenApi)]
#[openapi(
    info(title = "Corral API", description = "Runs, routes and supervises local LLM inference servers; compatible with llamactl's management API."),
    paths(
        server::version,
        server::help,
        server::server_version,
        server::devices,
        system::system,
        backends::parse_command,
        instances::list,
        instances::get,
        instances::create,
        instances::update,
        instances::delete,
        instances::start,
        instances::stop,
        instances::restart,
        instances::logs,
        instances::proxy,
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
    ),
    components(schemas(error::ErrorBody, openai::OpenAiErrorBody)),
    modifiers(&BackendSchemas, &Security),
    security(("bearer" = []), ("api_key" = [])),
)]
struct ApiDoc;

/// Adds `LlamaCppOptions`, `MlxLmOptions` and `VllmOptions`, which `backend_options` refers to.
struct BackendSchemas;

impl Modify for BackendSchemas {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (backend, name) in BACKEND_SCHEMA_NAMES {
            components
                .schemas
                .insert(name.to_owned(), crate::backends::options_schema(backend));
        }
    }
}

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

/// The document itself.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut document = ApiDoc::openapi();
    document.info.version = env!("CARGO_PKG_VERSION").to_owned();
    document
}

/// This OpenAPI document.
#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "system",
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(document())
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
        let document = serde_json::to_value(&document).unwrap();
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
}
