//! `ControlPlane`: thin handlers that call the [`Store`] and convert its errors once.

use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use ttg_proto::v1::control_plane_server::ControlPlane;
use ttg_proto::v1::{
    CancelRequest, CancelResponse, DeleteRequest, DeleteResponse, Event, GetResultsRequest,
    ListAgentsRequest, ListAgentsResponse, ListRunsRequest, ListRunsResponse, ResultChunk,
    RetryRequest, RetryResponse, RunState, RunStatus, StatusRequest, SubmitRequest, SubmitResponse,
    WatchRequest,
};

use crate::error::Error;
use crate::gateway::Sessions;
use crate::store::{RunFilter, Store};

/// Most runs one ListRuns returns.
pub const MAX_LIST: u32 = 1_000;

/// The ControlPlane service.
pub struct Control {
    store: Arc<Store>,
    sessions: Arc<Sessions>,
    shutdown: CancellationToken,
    submit_rate: u32,
    /// Per token: start of the current one-minute window and Submits in it.
    windows: std::sync::Mutex<std::collections::HashMap<String, (std::time::Instant, u32)>>,
}

impl Control {
    /// A control plane over `store`, pushing cancels to `sessions`.
    pub fn new(
        store: Arc<Store>,
        sessions: Arc<Sessions>,
        shutdown: CancellationToken,
        submit_rate: u32,
    ) -> Self {
        Self {
            store,
            sessions,
            shutdown,
            submit_rate,
            windows: Default::default(),
        }
    }

    /// Count a Submit against its token's per-minute budget.
    fn rate_check(&self, who: &str) -> Result<(), Error> {
        let Ok(mut w) = self.windows.lock() else {
            return Ok(());
        };
        let now = std::time::Instant::now();
        if w.len() > 10_000 {
            w.retain(|_, (t, _)| now.duration_since(*t) < std::time::Duration::from_secs(60));
        }
        let e = w.entry(who.to_string()).or_insert((now, 0));
        if now.duration_since(e.0) >= std::time::Duration::from_secs(60) {
            *e = (now, 0);
        }
        if e.1 >= self.submit_rate {
            let wait = 60 - now.duration_since(e.0).as_secs();
            return Err(Error::ResourceExhausted(format!(
                "submit rate: token {who:?} made {} Submits this minute, the limit is {} (--submit-rate); retry in {wait} s",
                e.1, self.submit_rate
            )));
        }
        e.1 += 1;
        Ok(())
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

fn to_status_stream<T: Send + 'static>(rx: mpsc::Receiver<Result<T, Error>>) -> BoxStream<T> {
    Box::pin(ReceiverStream::new(rx).map(|r| r.map_err(Status::from)))
}

#[tonic::async_trait]
impl ControlPlane for Control {
    async fn submit(
        &self,
        request: Request<SubmitRequest>,
    ) -> Result<Response<SubmitResponse>, Status> {
        let who = request
            .extensions()
            .get::<crate::auth::Identity>()
            .map(|i| i.name.clone())
            .unwrap_or_else(|| "anonymous".into());
        let req = request.get_ref();
        if req.dry_run {
            let v = self.store.validate(req).await?;
            return Ok(Response::new(SubmitResponse {
                run_id: String::new(),
                chunks: v.chunks,
                params: v.params,
            }));
        }
        self.rate_check(&who)?;
        let (run_id, chunks, params) = self.store.submit(req).await?;
        Ok(Response::new(SubmitResponse {
            run_id,
            chunks,
            params,
        }))
    }

    async fn status(&self, request: Request<StatusRequest>) -> Result<Response<RunStatus>, Status> {
        Ok(Response::new(
            self.store.status(&request.get_ref().run_id).await?,
        ))
    }

    type WatchStream = BoxStream<Event>;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let grant = request.extensions().get::<crate::auth::Grant>().cloned();
        let req = request.into_inner();
        check_event_id(&req.after_event_id)?;
        // Fail fast with NotFound as the call's status, not inside the stream.
        self.store.spec(&req.run_id).await?;
        let (tx, rx) = mpsc::channel(256);
        let store = self.store.clone();
        let stop = self.shutdown.child_token();
        tokio::spawn(async move {
            tokio::select! {
                _ = store.watch(&req.run_id, &req.after_event_id, !req.no_follow, tx.clone(), stop) => {}
                _ = crate::auth::revoked(grant) => {
                    let _ = tx.send(Err(Error::Revoked)).await;
                }
            }
        });
        Ok(Response::new(to_status_stream(rx)))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let req = request.get_ref();
        let state = self.store.cancel(&req.run_id, &req.reason).await?;
        // Its undelivered tasks leave the stream in the background; delivered
        // ones are dropped by their agents.
        let (store, run_id) = (self.store.clone(), req.run_id.clone());
        tokio::spawn(async move { store.remove_cancelled_tasks(&run_id).await });
        // This replica's agents at once; the others' through Redis pub/sub.
        self.sessions.broadcast_cancel(&req.run_id);
        if let Err(e) = self
            .store
            .publish_cancel(&req.run_id, self.sessions.server_id())
            .await
        {
            // Agents on other replicas still learn it at their next completion.
            tracing::warn!(run = %req.run_id, error = %e, "cancel not published to other replicas");
        }
        Ok(Response::new(CancelResponse {
            state: state as i32,
        }))
    }

    async fn list_runs(
        &self,
        request: Request<ListRunsRequest>,
    ) -> Result<Response<ListRunsResponse>, Status> {
        let req = request.get_ref();
        let limit = match req.limit {
            0 => 50,
            n if n <= MAX_LIST => n,
            n => {
                return Err(
                    Error::invalid("limit", format!("must be in 1..={MAX_LIST}, got {n}")).into(),
                )
            }
        };
        let mut states = Vec::with_capacity(req.states.len());
        for s in &req.states {
            match RunState::try_from(*s) {
                Ok(st) if st != RunState::Unspecified => states.push(st),
                _ => {
                    return Err(Error::invalid(
                        "states",
                        format!(
                        "unknown state {s}; use QUEUED, RUNNING, SUCCEEDED, FAILED or CANCELLED"
                    ),
                    )
                    .into())
                }
            }
        }
        if req.name_contains.chars().count() > crate::store::MAX_NAME {
            return Err(Error::invalid(
                "name_contains",
                format!("at most {} characters", crate::store::MAX_NAME),
            )
            .into());
        }
        const MAX_AGE_S: u64 = 100 * 365 * 24 * 3_600;
        for (field, v) in [("max_age_s", req.max_age_s), ("min_age_s", req.min_age_s)] {
            if v > MAX_AGE_S {
                return Err(
                    Error::invalid(field, format!("must be in 0..={MAX_AGE_S}, got {v}")).into(),
                );
            }
        }
        let age = |s: u64| (s > 0).then(|| std::time::Duration::from_secs(s));
        let filter = RunFilter {
            limit: limit as usize,
            states,
            name_contains: req.name_contains.to_lowercase(),
            max_age: age(req.max_age_s),
            min_age: age(req.min_age_s),
            after: (!req.page_token.is_empty()).then(|| req.page_token.clone()),
        };
        let (runs, next_page_token) = self.store.list_runs(&filter).await?;
        Ok(Response::new(ListRunsResponse {
            runs,
            next_page_token,
        }))
    }

    async fn list_agents(
        &self,
        _: Request<ListAgentsRequest>,
    ) -> Result<Response<ListAgentsResponse>, Status> {
        let mut agents = self.store.live_agents().await?;
        agents.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        Ok(Response::new(ListAgentsResponse { agents }))
    }

    async fn list_kernels(
        &self,
        _: Request<ttg_proto::v1::ListKernelsRequest>,
    ) -> Result<Response<ttg_proto::v1::ListKernelsResponse>, Status> {
        Ok(Response::new(ttg_proto::v1::ListKernelsResponse {
            kernels: self.store.offered_kernels().await?,
        }))
    }

    async fn retry(
        &self,
        request: Request<RetryRequest>,
    ) -> Result<Response<RetryResponse>, Status> {
        let (n, state) = self.store.retry(&request.get_ref().run_id).await?;
        Ok(Response::new(RetryResponse {
            chunks_requeued: n,
            state: state as i32,
        }))
    }

    async fn delete(
        &self,
        request: Request<DeleteRequest>,
    ) -> Result<Response<DeleteResponse>, Status> {
        let state = self.store.delete(&request.get_ref().run_id).await?;
        Ok(Response::new(DeleteResponse {
            state: state as i32,
        }))
    }

    async fn best(
        &self,
        request: Request<ttg_proto::v1::BestRequest>,
    ) -> Result<Response<ttg_proto::v1::BestResponse>, Status> {
        let r = request.get_ref();
        Ok(Response::new(
            self.store.best(&r.run_id, &r.output, r.max, r.k).await?,
        ))
    }

    type GetResultsStream = BoxStream<ResultChunk>;

    async fn get_results(
        &self,
        request: Request<GetResultsRequest>,
    ) -> Result<Response<Self::GetResultsStream>, Status> {
        let req = request.into_inner();
        self.store.spec(&req.run_id).await?;
        // A small channel bounds memory: the store reads the next batch only
        // as fast as the client takes chunks.
        let (tx, rx) = mpsc::channel(16);
        let store = self.store.clone();
        tokio::spawn(async move { store.results(&req.run_id, tx).await });
        Ok(Response::new(to_status_stream(rx)))
    }
}

/// `after_event_id` must be empty or a stream id `<ms>-<seq>` (or `<ms>`):
/// anything else (`+`, `$`, text) is refused here rather than by Redis.
fn check_event_id(id: &str) -> Result<(), Error> {
    if id.is_empty() {
        return Ok(());
    }
    let mut parts = id.splitn(2, '-');
    let ok = parts.next().is_some_and(|ms| {
        !ms.is_empty() && ms.len() <= 20 && ms.bytes().all(|b| b.is_ascii_digit())
    }) && parts.next().is_none_or(|seq| {
        !seq.is_empty() && seq.len() <= 20 && seq.bytes().all(|b| b.is_ascii_digit())
    });
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(
            "after_event_id",
            "must be empty (from the start) or an event id as printed by watch, like 1700000000000-0",
        ))
    }
}
