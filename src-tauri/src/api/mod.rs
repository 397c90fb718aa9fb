//! The HTTP API: management routes under /api/v1 (instances, backends, system, model downloads),
//! the inference routes under /v1, auth, errors and the OpenAPI document.

mod activity;
pub mod auth;
mod auth_keys;
mod backends;
pub mod body;
mod config;
pub mod desktop;
mod downloads;
pub mod error;
mod events;
pub mod host;
mod instances;
mod llama_router;
mod logs_stream;
mod metrics;
mod models;
pub mod ollama;
pub mod openai;
pub mod openapi;
mod schema;
mod system;
pub mod ui;
mod version;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::FromRef;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::routing::{any, get, post};
use axum::Router;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::access::KeyStore;
use crate::config::Config;
use crate::devices::Devices;
use crate::downloads::Downloads;
use crate::instances::Registry;
use crate::models::Library;
use crate::relay::Relay;
use error::ApiError;

tokio::task_local! {
    /// The address of the client whose request the current task is answering; set by the
    /// server around each request it hands the router.
    static CLIENT: std::net::SocketAddr;
}

/// Runs `answer` as the answer to a request from `client`.
pub async fn answering<F: std::future::Future>(
    client: std::net::SocketAddr,
    answer: F,
) -> F::Output {
    CLIENT.scope(client, answer).await
}

/// The client of the request being answered, where the server said.
pub fn current_client() -> Option<std::net::SocketAddr> {
    CLIENT.try_with(|client| *client).ok()
}

/// What the engine hands the router.
#[derive(Clone)]
pub struct AppState {
    pub registry: Arc<Registry>,
    pub config: Arc<Config>,
    /// The desktop app's controls when the engine runs inside it; `None` when headless.
    pub desktop: Option<Arc<dyn desktop::DesktopControl>>,
    /// Model downloads from Hugging Face.
    pub downloads: Arc<Downloads>,
    /// The inference keys made through `/api/v1/auth/keys`.
    pub keys: Arc<KeyStore>,
}

/// What the handlers see: the app state and the relay to the backends.
#[derive(Clone)]
pub struct Api {
    pub registry: Arc<Registry>,
    pub config: Arc<Config>,
    pub relay: Relay,
    /// The system report and its caches.
    pub devices: Arc<Devices>,
    pub desktop: Option<Arc<dyn desktop::DesktopControl>>,
    /// Tickets and sessions of backend pages opened through the per-instance proxy.
    pub passes: Arc<auth::ProxyPasses>,
    /// The model library and what it has read of the model files.
    pub library: Arc<Library>,
    /// Model downloads: the jobs, their events, what Corral downloaded.
    pub downloads: Arc<Downloads>,
    /// The inference keys with a scope.
    pub keys: Arc<KeyStore>,
}

impl FromRef<Api> for Arc<Config> {
    fn from_ref(api: &Api) -> Self {
        Arc::clone(&api.config)
    }
}

/// The whole HTTP surface: `/api/v1` behind management auth, `/v1` behind inference auth, the
/// web UI without auth at every other path, CORS, and the Host check.
pub fn router(state: AppState) -> Router {
    let relay = state.registry.relay();
    router_with(state, relay)
}

/// `router`, relaying through `relay` (the server shares it with the fast path: one pool of
/// backend connections).
pub(crate) fn router_with(state: AppState, relay: Relay) -> Router {
    let config = Arc::clone(&state.config);
    let api = Api {
        devices: state.registry.devices(),
        registry: state.registry,
        config: state.config,
        relay,
        desktop: state.desktop,
        passes: Arc::new(auth::ProxyPasses::default()),
        library: Arc::new(Library::new()),
        downloads: state.downloads,
        keys: state.keys,
    };
    let management_auth = auth::ManagementAuth {
        config: Arc::clone(&config),
        passes: Arc::clone(&api.passes),
        keys: Arc::clone(&api.keys),
    };
    let inference_auth = auth::InferenceAuth {
        config: Arc::clone(&config),
        keys: Arc::clone(&api.keys),
    };
    let ollama = ollama::router(api.clone(), inference_auth.clone());
    let management = Router::new()
        .route("/version", get(version::version))
        .route("/server/help", get(version::help))
        .route("/server/version", get(version::server_version))
        .route("/server/devices", get(version::devices))
        // Where llamactl 0.6+ moved the three.
        .route("/backends/llama-cpp/help", get(version::llama_help))
        .route("/backends/llama-cpp/version", get(version::llama_version))
        .route("/backends/llama-cpp/devices", get(version::llama_devices))
        .route("/system", get(system::system))
        .route("/config", get(config::config))
        .route("/activity", get(activity::list))
        .route("/activity/{id}", get(activity::get))
        .route("/auth/keys", get(auth_keys::list).post(auth_keys::create))
        .route(
            "/auth/keys/{id}",
            get(auth_keys::get)
                .patch(auth_keys::update)
                .delete(auth_keys::delete),
        )
        .route("/auth/keys/{id}/permissions", get(auth_keys::permissions))
        .route("/backends", get(backends::list))
        .route("/models", get(models::list).delete(downloads::delete_model))
        .route(
            "/backends/{backend}/parse-command",
            post(backends::parse_command),
        )
        .route(
            "/backends/{backend}/install",
            get(backends::install_job)
                .post(backends::install)
                .delete(backends::cancel_install),
        )
        .route("/instances", get(instances::list))
        .route("/instances/", get(instances::list))
        .route(
            "/instances/{name}",
            get(instances::get)
                .post(instances::create)
                .put(instances::update)
                .delete(instances::delete),
        )
        .route("/instances/{name}/start", post(instances::start))
        .route("/instances/{name}/stop", post(instances::stop))
        .route("/instances/{name}/restart", post(instances::restart))
        .route("/instances/{name}/logs", get(instances::logs))
        .route(
            "/instances/{name}/logs/stream",
            get(logs_stream::logs_stream),
        )
        .route(
            "/instances/{name}/proxy-token",
            post(instances::proxy_token),
        )
        .route("/instances/{name}/proxy", any(instances::proxy))
        .route("/instances/{name}/proxy/", any(instances::proxy))
        .route("/instances/{name}/proxy/{*path}", any(instances::proxy))
        .route("/llama-cpp/{name}/models", get(llama_router::models))
        .route(
            "/llama-cpp/{name}/models/{model}/load",
            post(llama_router::load),
        )
        .route(
            "/llama-cpp/{name}/models/{model}/unload",
            post(llama_router::unload),
        )
        .route("/models/download", post(downloads::download))
        .route("/models/jobs", get(downloads::jobs))
        .route(
            "/models/jobs/{id}",
            get(downloads::job).delete(downloads::cancel),
        )
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/events", get(events::events))
        .route("/schema", get(schema::schema))
        .route(
            "/desktop/settings",
            get(desktop::settings).put(desktop::update_settings),
        )
        .route("/desktop/open", post(desktop::open))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(
            management_auth,
            auth::require_management,
        ))
        .with_state(api.clone());
    let inference = Router::new()
        .route("/models", get(openai::models))
        .route("/models/{model}", get(openai::model))
        .route("/{*path}", post(openai::inference))
        .fallback(unknown_inference_route)
        .method_not_allowed_fallback(inference_method_not_allowed)
        .layer(from_fn_with_state(inference_auth, auth::require_inference))
        .with_state(api.clone());
    let metrics = Router::new()
        .route("/metrics", get(metrics::metrics))
        .layer(from_fn_with_state(
            Arc::clone(&config),
            auth::require_metrics,
        ))
        .with_state(api);
    Router::new()
        .nest("/api/v1", management)
        .merge(metrics)
        .nest("/v1", inference)
        .merge(ollama)
        .fallback(ui::serve)
        .layer(host::HostCheckLayer::new(
            Arc::clone(&config),
            cors(&config),
        ))
}

async fn unknown_route() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such API route: see /api/v1/openapi.json for the routes",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not accept that method: see /api/v1/openapi.json",
    )
}

async fn unknown_inference_route() -> openai::OpenAiError {
    openai::OpenAiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such inference route: /v1 takes GET /v1/models and POST /v1/<backend route>",
    )
}

async fn inference_method_not_allowed() -> openai::OpenAiError {
    openai::OpenAiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "inference routes take POST with a JSON body naming the `model`",
    )
}

/// llamactl's CORS, plus `X-API-Key` so a browser page may send keys that way too.
fn cors(config: &Config) -> CorsLayer {
    let origins = &config.server.allowed_origins;
    let allow_origin = if origins.iter().any(|origin| origin.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin.trim()).ok()),
        )
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers([
            header::ACCEPT,
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("x-api-key"),
        ])
        .expose_headers([header::LINK])
        .max_age(Duration::from_secs(300))
}
