//! The HTTP API: management routes under /api/v1, auth, errors and the OpenAPI document.
