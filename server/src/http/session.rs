//! Who is asking. A browser signs in once with its token (`POST
//! /api/v1/session`, JSON `{"token": …}`): the answer sets the cookie
//! `ttg_token` (HttpOnly: no script reads it; SameSite=Strict: no other
//! site's page sends it; Secure under TLS; never in a URL). Scripts may send
//! `Authorization: Bearer …` instead. Every request is checked against the
//! gRPC method its endpoint stands for ([`crate::auth::Auth::check`]), so
//! roles, revocation and the tokens file's reloads apply as they do to
//! gRPC. Requests that change something also need the header
//! `X-TTG-Action: 1`, which a cross-site form cannot send.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::api::ApiError;
use super::Dashboard;
use crate::auth::Grant;

/// The session cookie's name.
const COOKIE: &str = "ttg_token";
/// Longest token accepted at sign-in.
const MAX_TOKEN: usize = 4096;

pub(super) fn routes() -> Router<Arc<Dashboard>> {
    Router::new()
        .route("/api/v1/session", post(sign_in).delete(sign_out))
        .route("/api/v1/whoami", get(whoami))
}

/// The token a request carries: the bearer header, else the cookie.
fn presented(headers: &HeaderMap) -> Option<Vec<u8>> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        return Some(h.as_bytes().to_vec());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            c.trim()
                .strip_prefix(COOKIE)
                .and_then(|r| r.strip_prefix('='))
        })
        .filter(|t| !t.is_empty())
        .map(|t| format!("Bearer {t}").into_bytes())
}

/// Check the request against the gRPC `method` (`Status`, `Retry`, …) of
/// the ControlPlane: the grant (None without auth), or 401/403.
pub(super) fn authorize(
    d: &Dashboard,
    headers: &HeaderMap,
    method: &str,
) -> Result<Option<Grant>, ApiError> {
    let Some(auth) = &d.auth else {
        return Ok(None);
    };
    let token = presented(headers);
    auth.check(&format!("/ttg.v1.ControlPlane/{method}"), token.as_deref())
        .map_err(ApiError::from)
}

/// An action (retry, cancel): authorised for `method`, and asked for by the
/// page itself (the `X-TTG-Action` header).
pub(super) fn authorize_action(
    d: &Dashboard,
    headers: &HeaderMap,
    method: &str,
) -> Result<Option<Grant>, ApiError> {
    if headers.get("x-ttg-action").is_none_or(|v| v != "1") {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "PermissionDenied",
            "actions need the header X-TTG-Action: 1 (sent by the dashboard's own page)",
        ));
    }
    authorize(d, headers, method)
}

/// `{"token": …}` → the session cookie, and who the token is.
async fn sign_in(
    State(d): State<Arc<Dashboard>>,
    Json(body): Json<serde_json::Value>,
) -> Result<Response, ApiError> {
    let token = body
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::trim)
        .unwrap_or_default();
    // What a cookie value may hold (no `;`, `,`, quote or backslash: the
    // token cannot add cookie attributes).
    let cookie_safe = |b: u8| b.is_ascii_graphic() && !matches!(b, b';' | b',' | b'"' | b'\\');
    if token.is_empty() || token.len() > MAX_TOKEN || !token.bytes().all(cookie_safe) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!("token: 1..={MAX_TOKEN} printable characters other than ; , \" \\"),
        ));
    }
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                "token: not a header value",
            )
        })?,
    );
    let who = identity(&d, &headers)?;
    let cookie = format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict{}",
        if d.tls { "; Secure" } else { "" }
    );
    let mut r = Json(who).into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// Forget the session cookie.
async fn sign_out() -> Response {
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("ttg_token=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    r
}

/// Who the request's token is, what it may do, and the page's settings.
async fn whoami(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    identity(&d, &headers).map(Json)
}

fn identity(d: &Dashboard, headers: &HeaderMap) -> Result<serde_json::Value, ApiError> {
    let grant = authorize(d, headers, "Status")?;
    let (name, role) = match &grant {
        Some(g) => (g.id.name.clone(), g.id.role.as_str()),
        None => ("(no authentication)".to_string(), "client"),
    };
    // Acting needs the client role: the page greys out what this token cannot do.
    let can_act = grant.is_none() || authorize(d, headers, "Retry").is_ok();
    Ok(json!({
        "name": name, "role": role, "can_act": can_act,
        "auth": d.auth.is_some(), "trace_url_template": d.trace_url,
    }))
}
