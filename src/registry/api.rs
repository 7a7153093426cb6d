//! The OCI Distribution API (v2) routes.

use axum::Router;
use axum::http::{HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;

use super::Registry;

pub fn router(reg: Registry) -> Router {
    Router::new().route("/v2/", get(base)).with_state(reg)
}

async fn base() -> impl IntoResponse {
    (
        StatusCode::OK,
        [(
            "Docker-Distribution-API-Version",
            HeaderValue::from_static("registry/2.0"),
        )],
        "{}",
    )
}
