//! Live views as server-sent events. A run page follows the run's own event
//! stream (the same Watch the gRPC API serves: one blocking read per open
//! page, woken by the run's events). The runs and agents lists share one
//! snapshot per server: a single task reads the first page of runs and the
//! live agents once a second while anyone is subscribed, and every tab gets
//! that same snapshot — the cost does not grow with runs × tabs.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::watch;
use tokio_stream::{Stream, StreamExt};
use ttg_proto::json::{agent_json, event_json, status_json};
use ttg_proto::v1::control_plane_server::ControlPlane;
use ttg_proto::v1::WatchRequest;

use super::api::{request, ApiError};
use super::session::authorize;
use super::Dashboard;
use crate::store::{RunFilter, Store};

/// Runs in the shared snapshot (the newest).
const SNAPSHOT_RUNS: usize = 100;
/// How often the shared snapshot is refreshed while someone listens.
const SNAPSHOT_EVERY: Duration = Duration::from_secs(1);

pub(super) fn routes() -> Router<Arc<Dashboard>> {
    Router::new()
        .route("/api/v1/live", get(live))
        .route("/api/v1/runs/{id}/events", get(run_events))
}

/// The shared snapshot of the runs and agents lists.
pub(super) struct Hub {
    store: Arc<Store>,
    tx: watch::Sender<Arc<String>>,
    running: Arc<AtomicBool>,
}

impl Hub {
    pub(super) fn new(store: Arc<Store>) -> Hub {
        Hub {
            store,
            tx: watch::Sender::new(Arc::new(String::new())),
            running: Arc::new(AtomicBool::new(false)),
        }
    }

    /// A receiver of snapshots; starts the refresher if it is not running.
    fn subscribe(&self) -> watch::Receiver<Arc<String>> {
        let rx = self.tx.subscribe();
        if !self.running.swap(true, Ordering::SeqCst) {
            let (store, tx, running) = (self.store.clone(), self.tx.clone(), self.running.clone());
            tokio::spawn(async move {
                loop {
                    while tx.receiver_count() > 0 {
                        if let Some(s) = snapshot(&store).await {
                            tx.send_replace(Arc::new(s));
                        }
                        tokio::time::sleep(SNAPSHOT_EVERY).await;
                    }
                    running.store(false, Ordering::SeqCst);
                    // A subscriber that came as we stopped restarts us.
                    if tx.receiver_count() == 0 || running.swap(true, Ordering::SeqCst) {
                        return;
                    }
                }
            });
        }
        rx
    }
}

/// `{"runs": [...], "agents": [...], "time_ms": …}` (None if Redis is away).
async fn snapshot(store: &Store) -> Option<String> {
    let filter = RunFilter {
        limit: SNAPSHOT_RUNS,
        states: Vec::new(),
        name_contains: String::new(),
        max_age: None,
        min_age: None,
        after: None,
    };
    let (runs, _) = store.list_runs(&filter).await.ok()?;
    let mut agents = store.live_agents().await.ok()?;
    agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    let counters = store.counters().await.ok()?;
    let count = |k: &str| counters.get(k).copied().unwrap_or(0);
    Some(
        json!({
            "runs": runs.iter().map(status_json).collect::<Vec<_>>(),
            "agents": agents.iter().map(agent_json).collect::<Vec<_>>(),
            "counters": {"completed": count("completed"), "failed": count("failed"), "reclaimed": count("reclaimed"), "dead": count("dead")},
            "time_ms": ttg_proto::now_ms(),
        })
        .to_string(),
    )
}

type SseStream = std::pin::Pin<Box<dyn Stream<Item = Result<SseEvent, Infallible>> + Send>>;
/// An SSE answer with keep-alive comments every 15 s.
type LiveSse = Sse<axum::response::sse::KeepAliveStream<SseStream>>;

/// End `s` when the grant's token is revoked or the server stops.
fn guarded(
    s: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
    grant: Option<crate::auth::Grant>,
    stop: tokio_util::sync::CancellationToken,
) -> LiveSse {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        tokio::pin!(s);
        loop {
            tokio::select! {
                _ = crate::auth::revoked(grant.clone()) => return,
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
                next = s.next() => match next {
                    Some(e) => if tx.send(e).await.is_err() { return },
                    None => return,
                },
            }
        }
    });
    let s: SseStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
    Sse::new(s).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// The shared runs-and-agents snapshot, once a second.
async fn live(State(d): State<Arc<Dashboard>>, headers: HeaderMap) -> Result<LiveSse, ApiError> {
    let grant = authorize(&d, &headers, "ListRuns")?;
    let rx = d.hub.subscribe();
    let s = tokio_stream::wrappers::WatchStream::new(rx)
        .filter(|s| !s.is_empty())
        .map(|s| Ok(SseEvent::default().event("snapshot").data(s.as_str())));
    Ok(guarded(s, grant, d.shutdown.clone()))
}

/// A run's events from the start, then live, as Watch streams them; an
/// `end` event when the run is over (or the stream broke: the page
/// reconnects).
async fn run_events(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<LiveSse, ApiError> {
    let grant = authorize(&d, &headers, "Watch")?;
    let events = d
        .control
        .watch(request(
            WatchRequest {
                run_id: id,
                after_event_id: String::new(),
                no_follow: false,
            },
            grant.clone(),
        ))
        .await?
        .into_inner();
    let s = events
        .map(|e| {
            Ok(match e {
                Ok(e) => SseEvent::default()
                    .event("event")
                    .data(event_json(&e).to_string()),
                Err(s) => SseEvent::default().event("error").data(
                    json!({"code": format!("{:?}", s.code()), "message": s.message()}).to_string(),
                ),
            })
        })
        .chain(tokio_stream::once(Ok(SseEvent::default()
            .event("end")
            .data("{}"))));
    Ok(guarded(s, grant, d.shutdown.clone()))
}
