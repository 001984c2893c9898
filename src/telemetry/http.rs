//! The metrics listener's router: `GET /metrics` in the Prometheus text format.

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

pub fn router() -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::NOT_FOUND,
                "not found: metrics are at /metrics\n",
            )
        })
}

async fn metrics() -> Response {
    let (content_type, body) = super::metrics::render();
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}
