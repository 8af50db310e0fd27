//! The page: `server/dashboard/` embedded in the binary (no CDN, no Node
//! server: it works on an air-gapped cluster). Plain ES modules, canvas
//! charts drawn by hand, no third-party script.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use super::Dashboard;

const INDEX: &str = include_str!("../../dashboard/index.html");
const APP: &str = include_str!("../../dashboard/app.js");
const CHARTS: &str = include_str!("../../dashboard/charts.js");
const STYLE: &str = include_str!("../../dashboard/style.css");

pub(super) fn routes() -> Router<Arc<Dashboard>> {
    let file = |body: &'static str, kind: &'static str| {
        get(move || async move {
            (
                [
                    (header::CONTENT_TYPE, kind),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                body,
            )
                .into_response()
        })
    };
    Router::new()
        .route("/", file(INDEX, "text/html; charset=utf-8"))
        .route("/app.js", file(APP, "text/javascript; charset=utf-8"))
        .route("/charts.js", file(CHARTS, "text/javascript; charset=utf-8"))
        .route("/style.css", file(STYLE, "text/css; charset=utf-8"))
}
