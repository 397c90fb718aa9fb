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
        instances::proxy_token,
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
