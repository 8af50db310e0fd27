//! Live views as server-sent events, each read from Redis once per server
//! however many tabs show it. A run page follows the run's event stream
//! (the same Watch the gRPC API serves) through one shared follower per run
//! ([`Feeds`]), which passes failures, reclaims and the end at once and
//! progress at most four times a second. The runs and agents lists share
//! one snapshot ([`Hub`]): a single task reads the first page of runs and
//! the live agents once a second while anyone is subscribed. The cost does
//! not grow with runs × tabs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio_stream::{Stream, StreamExt};
use ttg_proto::json::{agent_json, event_json, status_json};

use super::api::ApiError;
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

/// A place among the [`super::MAX_STREAMS`] live streams, given back on drop.
struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Slot {
    fn take(d: &Dashboard) -> Result<Slot, ApiError> {
        let open = d.streams.fetch_add(1, Ordering::SeqCst);
        let slot = Slot(d.streams.clone());
        if open >= super::MAX_STREAMS {
            return Err(ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "ResourceExhausted",
                format!(
                    "{} live streams are open on this server; close some tabs",
                    super::MAX_STREAMS
                ),
            ));
        }
        Ok(slot)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// End `s` when the grant's token is revoked or the server stops; it holds
/// its `slot` while it runs.
fn guarded(
    s: impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static,
    grant: Option<crate::auth::Grant>,
    stop: tokio_util::sync::CancellationToken,
    slot: Slot,
) -> LiveSse {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let _slot = slot;
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
    let slot = Slot::take(&d)?;
    let rx = d.hub.subscribe();
    let s = tokio_stream::wrappers::WatchStream::new(rx)
        .filter(|s| !s.is_empty())
        .map(|s| Ok(SseEvent::default().event("snapshot").data(s.as_str())));
    Ok(guarded(s, grant, d.shutdown.clone(), slot))
}

/// A run's events from now on, through the run's [`Feeds`] entry: every
/// event but completions at once, the latest completion (its progress) at
/// most every [`PROGRESS_EVERY`]; `end` once the run is over.
async fn run_events(
    State(d): State<Arc<Dashboard>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<LiveSse, ApiError> {
    let grant = authorize(&d, &headers, "Watch")?;
    let slot = Slot::take(&d)?;
    // NotFound and bad ids answer the request itself, not inside the stream.
    d.store.spec(&id).await?;
    let mut rx = d.feeds.subscribe(&id);
    let s = async_stream(move |tx| async move {
        loop {
            match rx.recv().await {
                Ok(msg) if msg.is_empty() => {
                    let _ = tx
                        .send(Ok(SseEvent::default().event("end").data("{}")))
                        .await;
                    return;
                }
                Ok(msg) => {
                    if tx
                        .send(Ok(SseEvent::default().event("event").data(&*msg)))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    Ok(guarded(s, grant, d.shutdown.clone(), slot))
}

/// A stream fed by `f` through a small channel.
fn async_stream<F, Fut>(f: F) -> impl Stream<Item = Result<SseEvent, Infallible>> + Send + 'static
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<SseEvent, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Most often a run page hears of progress.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// One follower of a run's event stream per run and server, shared by every
/// page that shows the run: a run watched in 50 tabs is read from Redis and
/// encoded once, not 50 times. It stops when its last page closes.
pub(super) struct Feeds {
    store: Arc<Store>,
    runs: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>,
}

impl Feeds {
    pub(super) fn new(store: Arc<Store>) -> Feeds {
        Feeds {
            store,
            runs: Arc::default(),
        }
    }

    /// The run's event JSON from now on (`""`: the run is over).
    fn subscribe(&self, run_id: &str) -> broadcast::Receiver<Arc<str>> {
        let Ok(mut runs) = self.runs.lock() else {
            return broadcast::channel(1).1;
        };
        if let Some(tx) = runs.get(run_id) {
            return tx.subscribe();
        }
        let (tx, rx) = broadcast::channel(256);
        runs.insert(run_id.to_string(), tx.clone());
        tokio::spawn(feed(
            self.store.clone(),
            run_id.to_string(),
            tx,
            self.runs.clone(),
        ));
        rx
    }
}

/// Follow `run_id`'s events into `tx` until the run ends or nobody listens.
async fn feed(
    store: Arc<Store>,
    run_id: String,
    tx: broadcast::Sender<Arc<str>>,
    runs: Arc<Mutex<HashMap<String, broadcast::Sender<Arc<str>>>>>,
) {
    let (etx, mut erx) = tokio::sync::mpsc::channel(1024);
    let stop = tokio_util::sync::CancellationToken::new();
    let watch = {
        let (store, run_id, stop) = (store.clone(), run_id.clone(), stop.clone());
        // "$": from now on (a page reads the run's state when it opens).
        tokio::spawn(async move { store.watch(&run_id, "$", true, etx, stop).await })
    };
    let mut tick = tokio::time::interval(PROGRESS_EVERY);
    // The latest completion not yet passed on: encoded only when it is.
    let mut pending: Option<ttg_proto::v1::Event> = None;
    let json = |e: &ttg_proto::v1::Event| -> Arc<str> { event_json(e).to_string().into() };
    loop {
        tokio::select! {
            e = erx.recv() => match e {
                Some(Ok(e)) => {
                    if matches!(e.kind, Some(ttg_proto::v1::event::Kind::ChunkCompleted(_))) {
                        pending = Some(e);
                    } else {
                        if let Some(p) = pending.take() {
                            let _ = tx.send(json(&p));
                        }
                        let _ = tx.send(json(&e));
                    }
                }
                // The run ended (or the watch failed): pages are told, and
                // reload the run.
                Some(Err(_)) | None => break,
            },
            _ = tick.tick() => {
                if let Some(p) = pending.take() {
                    let _ = tx.send(json(&p));
                }
                if tx.receiver_count() == 0 {
                    break;
                }
            }
        }
    }
    if let Some(p) = pending.take() {
        let _ = tx.send(json(&p));
    }
    let _ = tx.send(Arc::from(""));
    stop.cancel();
    watch.abort();
    if let Ok(mut r) = runs.lock() {
        // Only ours: a later feed for the run may have replaced it.
        if r.get(&run_id).is_some_and(|t| t.same_channel(&tx)) {
            r.remove(&run_id);
        }
    }
}
