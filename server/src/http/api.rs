//! The dashboard's JSON endpoints: each calls the ControlPlane method it
//! stands for (same validation, same errors) or a bounded chart aggregate,
//! after [`super::session::authorize`]. Errors are
//! `{"error": {"code": "<gRPC code>", "message": …}}` with the matching
//! HTTP status. Run JSON is [`ttg_proto::json`]'s, as `ttgctl -o json`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Request;
use ttg_proto::json::{agent_json, point_json, state_name, status_json};
use ttg_proto::v1::control_plane_server::ControlPlane;
use ttg_proto::v1::{
    BestRequest, CancelRequest, ListAgentsRequest, ListRunsRequest, RetryRequest, RunState,
    StatusRequest,
};

use super::session::{authorize, authorize_action};
use super::{Dashboard, MAX_SCAN_POINTS};
use crate::auth::Grant;
use crate::error::Error;
use crate::store::FileFormat;

/// An error answer: HTTP status, gRPC code name, message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl From<tonic::Status> for ApiError {
    fn from(s: tonic::Status) -> Self {
        use tonic::Code;
        let (status, code) = match s.code() {
            Code::InvalidArgument => (StatusCode::BAD_REQUEST, "InvalidArgument"),
            Code::OutOfRange => (StatusCode::BAD_REQUEST, "OutOfRange"),
            Code::Unauthenticated => (StatusCode::UNAUTHORIZED, "Unauthenticated"),
            Code::PermissionDenied => (StatusCode::FORBIDDEN, "PermissionDenied"),
            Code::NotFound => (StatusCode::NOT_FOUND, "NotFound"),
            Code::FailedPrecondition => (StatusCode::CONFLICT, "FailedPrecondition"),
            Code::AlreadyExists => (StatusCode::CONFLICT, "AlreadyExists"),
            Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, "ResourceExhausted"),
            Code::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            Code::DeadlineExceeded => (StatusCode::SERVICE_UNAVAILABLE, "DeadlineExceeded"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "Internal"),
        };
        Self::new(status, code, s.message())
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        tonic::Status::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        (self.status, body).into_response()
    }
}

type ApiResult<T> = Result<T, ApiError>;

pub(super) fn routes() -> Router<Arc<Dashboard>> {
    Router::new()
        .route("/api/v1/runs", get(runs))
        .route("/api/v1/runs/{id}", get(run))
        .route("/api/v1/runs/{id}/best", get(best))
        .route("/api/v1/runs/{id}/histogram", get(histogram))
        .route("/api/v1/runs/{id}/heatmap", get(heatmap))
        .route("/api/v1/runs/{id}/points", get(points))
        .route("/api/v1/runs/{id}/results.csv", get(results_csv))
        .route("/api/v1/runs/{id}/results.parquet", get(results_parquet))
        .route("/api/v1/runs/{id}/retry", post(retry))
        .route("/api/v1/runs/{id}/cancel", post(cancel))
        .route("/api/v1/agents", get(agents))
}

/// A ControlPlane request carrying the caller's grant, as the gRPC auth
/// layer would have put it there.
pub(super) fn request<T>(msg: T, grant: Option<Grant>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(g) = grant {
        r.extensions_mut().insert(g.id.clone());
        r.extensions_mut().insert(g);
    }
    r
}

#[derive(Deserialize)]
struct RunsQuery {
    #[serde(default)]
    limit: u32,
    #[serde(default)]
    state: String,
    #[serde(default)]
    page_token: String,
}

/// A page of runs, newest first: `?limit=&state=RUNNING,QUEUED&page_token=`.
async fn runs(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Value>> {
    let grant = authorize(&d, &headers, "ListRuns")?;
    let mut states = Vec::new();
    for s in q.state.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let st = RunState::from_str_name(&s.to_ascii_uppercase()).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "InvalidArgument",
                format!("state: unknown state {s:?}; use QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED"),
            )
        })?;
        states.push(st as i32);
    }
    let r = d
        .control
        .list_runs(request(
            ListRunsRequest {
                limit: q.limit,
                states,
                page_token: q.page_token,
                ..Default::default()
            },
            grant,
        ))
        .await?
        .into_inner();
    Ok(Json(json!({
        "runs": r.runs.iter().map(status_json).collect::<Vec<_>>(),
        "next_page_token": r.next_page_token,
    })))
}

/// One run: its status (spec, progress, outputs, dead chunks), its space's
/// axes with their sizes, and its trace's link.
async fn run(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let grant = authorize(&d, &headers, "Status")?;
    let st = d
        .control
        .status(request(StatusRequest { run_id: id }, grant))
        .await?
        .into_inner();
    let spec = st.spec.clone().unwrap_or_default();
    let mut v = status_json(&st);
    let sweep = ttg_proto::space::Sweep::of(&spec).ok();
    if let Some(s) = &sweep {
        let axes: Vec<Value> = s
            .space
            .names()
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"name": n, "values": s.space.axis_len(i)}))
            .collect();
        v["axes"] = json!(axes);
        v["output_names"] = json!(s.outputs);
        v["random_search"] = json!(s.space.sample.is_some());
    }
    v["trace_url"] = json!(trace_url(d.trace_url.as_deref(), &spec.traceparent));
    Ok(Json(v))
}

/// The trace link: the template with `{trace_id}` replaced by the trace id
/// of the run's `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_url(template: Option<&str>, traceparent: &str) -> Option<String> {
    let id = traceparent.split('-').nth(1).filter(|t| t.len() == 32)?;
    Some(template?.replace("{trace_id}", id))
}

#[derive(Deserialize)]
struct BestQuery {
    #[serde(default)]
    output: String,
    #[serde(default)]
    k: u32,
    #[serde(default)]
    max: bool,
}

/// The K best points by one output (as `ttgctl best`; K in 1..=10000).
async fn best(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<BestQuery>,
) -> ApiResult<Json<Value>> {
    let grant = authorize(&d, &headers, "Best")?;
    if q.k > crate::store::MAX_BEST {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "InvalidArgument",
            format!("k: must be in 1..={}, got {}", crate::store::MAX_BEST, q.k),
        ));
    }
    let r = d
        .control
        .best(request(
            BestRequest {
                run_id: id,
                output: q.output,
                max: q.max,
                k: q.k,
            },
            grant,
        ))
        .await?
        .into_inner();
    Ok(Json(json!({
        "outputs": r.outputs,
        "chunks_read": r.chunks_read,
        "points": r.points.iter().map(|p| point_json(p, &r.outputs)).collect::<Vec<_>>(),
    })))
}

#[derive(Deserialize)]
struct ChartQuery {
    #[serde(default)]
    output: String,
    #[serde(default)]
    bins: Option<u32>,
    #[serde(default)]
    x: String,
    #[serde(default)]
    y: String,
    #[serde(default)]
    reduce: String,
    #[serde(default)]
    limit: Option<u32>,
}

/// A turn to compute a chart: at most [`super::MAX_CHARTS`] at once.
async fn chart_turn(d: &Dashboard) -> ApiResult<tokio::sync::SemaphorePermit<'_>> {
    match tokio::time::timeout(super::CHART_WAIT, d.charts.acquire()).await {
        Ok(Ok(p)) => Ok(p),
        _ => Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "ResourceExhausted",
            format!(
                "{} charts are being computed; retry in a few seconds",
                super::MAX_CHARTS
            ),
        )),
    }
}

/// A histogram of one output (`?output=&bins=`, bins 1..=200, default 40).
async fn histogram(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ChartQuery>,
) -> ApiResult<Json<crate::store::Histogram>> {
    authorize(&d, &headers, "GetResults")?;
    let _turn = chart_turn(&d).await?;
    Ok(Json(
        d.store
            .histogram(&id, &q.output, q.bins.unwrap_or(40), MAX_SCAN_POINTS)
            .await?,
    ))
}

/// One output over two axes of a grid (`?output=&x=&y=&reduce=min|mean`).
async fn heatmap(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ChartQuery>,
) -> ApiResult<Json<crate::store::Heatmap>> {
    authorize(&d, &headers, "GetResults")?;
    let _turn = chart_turn(&d).await?;
    Ok(Json(
        d.store
            .heatmap(&id, &q.output, (&q.x, &q.y), &q.reduce, MAX_SCAN_POINTS)
            .await?,
    ))
}

/// A sample of points spread over the run (`?limit=`, 1..=5000, default 1000).
async fn points(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ChartQuery>,
) -> ApiResult<Json<crate::store::PointSample>> {
    authorize(&d, &headers, "GetResults")?;
    let _turn = chart_turn(&d).await?;
    Ok(Json(
        d.store.sample_points(&id, q.limit.unwrap_or(1_000)).await?,
    ))
}

/// Every point of the run as CSV (index, named values, outputs), streamed
/// in index order: a download button.
async fn results_csv(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    download(&d, &headers, &id, FileFormat::Csv).await
}

/// The same as Parquet (opens in pandas, polars, DuckDB).
async fn results_parquet(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    download(&d, &headers, &id, FileFormat::Parquet).await
}

async fn download(
    d: &Dashboard,
    headers: &HeaderMap,
    id: &str,
    format: FileFormat,
) -> ApiResult<Response> {
    authorize(d, headers, "GetResults")?;
    let spec = d.store.spec(id).await?;
    let sweep = ttg_proto::space::Sweep::of(&spec)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "Internal", e.to_string()))?;
    let (kind, ext) = match format {
        FileFormat::Csv => ("text/csv; charset=utf-8", "csv"),
        FileFormat::Parquet => ("application/vnd.apache.parquet", "parquet"),
    };
    let rx = d.store.export(&spec, sweep, format)?;
    let body = axum::body::Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok((
        [
            (header::CONTENT_TYPE, kind.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{}.{ext}\"", spec.run_id),
            ),
        ],
        body,
    )
        .into_response())
}

/// Re-queue the run's dead chunks (needs the client role).
async fn retry(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let grant = authorize_action(&d, &headers, "Retry")?;
    let r = d
        .control
        .retry(request(RetryRequest { run_id: id }, grant))
        .await?
        .into_inner();
    Ok(Json(
        json!({"chunks_requeued": r.chunks_requeued, "state": state_name(r.state)}),
    ))
}

#[derive(Deserialize, Default)]
struct CancelBody {
    #[serde(default)]
    reason: String,
}

/// Cancel the run (needs the client role).
async fn cancel(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Option<Json<CancelBody>>,
) -> ApiResult<Json<Value>> {
    let grant = authorize_action(&d, &headers, "Cancel")?;
    let reason = body.map(|Json(b)| b.reason).unwrap_or_default();
    let r = d
        .control
        .cancel(request(CancelRequest { run_id: id, reason }, grant))
        .await?
        .into_inner();
    Ok(Json(json!({"state": state_name(r.state)})))
}

/// Live agents (sessions, kernels, slots, held chunks, last heartbeat).
async fn agents(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let grant = authorize(&d, &headers, "ListAgents")?;
    let r = d
        .control
        .list_agents(request(ListAgentsRequest {}, grant))
        .await?
        .into_inner();
    Ok(Json(json!(r
        .agents
        .iter()
        .map(agent_json)
        .collect::<Vec<_>>())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn trace_links_need_a_template_and_a_trace() {
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(
            super::trace_url(Some("http://jaeger:16686/trace/{trace_id}"), tp).as_deref(),
            Some("http://jaeger:16686/trace/0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(super::trace_url(None, tp), None);
        assert_eq!(super::trace_url(Some("x/{trace_id}"), ""), None);
    }
}
