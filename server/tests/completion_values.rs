//! A completion's values go into the run's results by `HSETNX`, in the same
//! MULTI as the completion script but outside it (complete.lua's header):
//! a results field is the first result's or was just written by the very
//! delivery being completed. These tests hold that against what can leave
//! values behind without their script: a NOSCRIPT (Redis flushed its
//! scripts), a delivery reclaimed before it completed, a run that ended
//! while the chunk computed, and forged completions.

mod common;

use std::time::Duration;

use common::*;
use ttg_proto::keys::Keys;
use ttg_proto::reclaim::{reclaim_entry, Cause};
use ttg_proto::records::{decode_task, pack_values};
use ttg_proto::scripts::{Completion, Scripts};
use ttg_proto::v1::{CancelRequest, GetResultsRequest, RunState, Task};

/// A server on a fresh Redis with one placeholder run of `params` points in
/// chunks of 10 submitted, and a connection to complete its chunks by hand.
struct Fixture {
    _redis: Redis,
    server: Server,
    keys: Keys,
    c: ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    id: String,
    tasks: String,
    scripts: Scripts,
    conn: redis::aio::MultiplexedConnection,
}

impl Fixture {
    async fn new(params: u64) -> Fixture {
        let redis = Redis::start();
        let p = prefix();
        let keys = Keys::new(&p);
        let server = Server::start(&redis.url, &p).await;
        let mut c = control(&server.url).await;
        let mut req = submit_req(params, 10, 0);
        req.max_attempts = Some(3);
        let id = c.submit(req).await.expect("submit").into_inner().run_id;
        let conn = redis.async_conn().await;
        Fixture {
            tasks: keys.tasks("placeholder"),
            _redis: redis,
            server,
            keys,
            c,
            id,
            scripts: Scripts::new(),
            conn,
        }
    }

    /// (entry id, task) of every entry `consumer` claims (up to 10).
    async fn claim(&mut self, consumer: &str) -> Vec<(String, Task)> {
        let read = claim_read(&mut self.conn, &self.keys, "placeholder", consumer, 10).await;
        read.keys
            .iter()
            .flat_map(|k| &k.ids)
            .map(|e| match e.map.get("t") {
                Some(redis::Value::BulkString(b)) => (e.id.clone(), decode_task(b).expect("task")),
                other => panic!("task field {other:?}"),
            })
            .collect()
    }

    /// Complete `task`, delivered as `entry` to `consumer`, with every
    /// point `value` (for run `run`: this fixture's unless named):
    /// (codes, state).
    async fn complete_as(
        &mut self,
        run: Option<&str>,
        consumer: &str,
        (entry, task): &(String, Task),
        value: f64,
    ) -> (Vec<i64>, String) {
        let run = run.unwrap_or(&self.id).to_string();
        let n = (task.end - task.start) as usize;
        let chunk = tester_chunk(&run, entry, task, &vec![value; n]);
        self.scripts
            .complete(
                &mut self.conn,
                &self.keys,
                &run,
                &self.tasks,
                consumer,
                &[chunk],
            )
            .await
            .expect("complete")
    }

    async fn complete(
        &mut self,
        consumer: &str,
        delivery: &(String, Task),
        value: f64,
    ) -> (Vec<i64>, String) {
        self.complete_as(None, consumer, delivery, value).await
    }

    /// Every value GetResults streams, in order.
    async fn results(&mut self) -> Vec<(u64, Vec<f64>)> {
        let mut s = self
            .c
            .get_results(GetResultsRequest {
                run_id: self.id.clone(),
            })
            .await
            .expect("results")
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = s.message().await.expect("chunk") {
            out.push((chunk.chunk_index, chunk.values));
        }
        out
    }

    async fn stored(&mut self, run: &str) -> usize {
        redis::cmd("HLEN")
            .arg(self.keys.results(run))
            .query_async(&mut self.conn)
            .await
            .expect("hlen")
    }
}

/// An agent's MULTI wrote chunk 0's values (999) but its script never ran
/// (NOSCRIPT), and the agent died before sending it again. Its delivery is
/// reclaimed; the next delivery's values (1) are the ones stored and
/// counted, and GetResults never showed the 999s meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_whose_script_never_ran_never_count_for_another_delivery() {
    let mut f = Fixture::new(20).await;
    let id = f.id.clone();
    let held = f.claim("dead").await;
    assert_eq!(held.len(), 2);
    let by_chunk = |i: u64| {
        held.iter()
            .find(|(_, t)| t.chunk_index == i)
            .cloned()
            .expect("chunk")
    };
    let (d0, d1) = (by_chunk(0), by_chunk(1));
    // What the MULTI's first command did before its EVALSHA failed.
    let _: i64 = redis::cmd("HSETNX")
        .arg(f.keys.results(&id))
        .arg(0)
        .arg(pack_values(&[999.0; 10]))
        .query_async(&mut f.conn)
        .await
        .expect("hsetnx");
    assert!(
        f.results().await.is_empty(),
        "a field without its done bit is not a result"
    );
    // The agent is dead: its delivery of chunk 0 is reclaimed, and goes
    // with the values it left.
    let r = reclaim_entry(
        &mut f.conn,
        &f.keys,
        &f.scripts,
        &f.tasks,
        &d0.0,
        "dead",
        "dead",
        Cause::Sweep,
        Duration::from_secs(1),
        "",
    )
    .await
    .expect("reclaim")
    .expect("reclaimed");
    assert_eq!(r.chunk_index, 0);
    assert_eq!(f.stored(&id).await, 0);
    // The chunk's next delivery completes with its own values.
    let again = f.claim("live").await;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].1.chunk_index, 0);
    assert_eq!(f.complete("live", &again[0], 1.0).await.0, vec![1]);
    let (codes, state) = f.complete("dead", &d1, 2.0).await;
    assert_eq!((codes, state.as_str()), (vec![1], "SUCCEEDED"));
    assert_eq!(
        f.results().await,
        vec![(0, vec![1.0; 10]), (1, vec![2.0; 10])]
    );
    let agg = status(&mut f.c, &id).await.aggregate.expect("agg");
    assert_eq!((agg.count, agg.sum, agg.max), (20, 30.0, 2.0));
    f.server.stop().await;
}

/// Redis lost its scripts (SCRIPT FLUSH, as after a restart): a completion
/// loads the script and sends its MULTI again; the chunk counts once, with
/// its values. A late duplicate with other values changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_completion_after_a_script_flush_counts_once_with_its_values() {
    let mut f = Fixture::new(10).await;
    let d0 = f.claim("a").await.remove(0);
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut f.conn)
        .await
        .expect("flush");
    let (codes, state) = f.complete("a", &d0, 5.0).await;
    assert_eq!((codes, state.as_str()), (vec![1], "SUCCEEDED"));
    let (codes, _) = f.complete("a", &d0, 7.0).await;
    assert_eq!(
        Completion::from_reply(codes[0], "SUCCEEDED"),
        Completion::Duplicate
    );
    assert_eq!(f.results().await, vec![(0, vec![5.0; 10])]);
    let agg = status(&mut f.c, &f.id.clone())
        .await
        .aggregate
        .expect("agg");
    assert_eq!((agg.count, agg.sum), (10, 50.0));
    f.server.stop().await;
}

/// A chunk still held when its run was cancelled: its completion is refused
/// and leaves no values behind; a completion for a deleted run leaves no
/// results key behind either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_completions_leave_no_values() {
    let mut f = Fixture::new(20).await;
    let id = f.id.clone();
    let held = f.claim("a").await;
    assert_eq!(f.complete("a", &held[0], 1.0).await.0, vec![1]);
    f.c.cancel(CancelRequest {
        run_id: id.clone(),
        reason: "test".into(),
    })
    .await
    .expect("cancel");
    let (codes, state) = f.complete("a", &held[1], 9.0).await;
    assert_eq!((codes, state.as_str()), (vec![2], "CANCELLED"));
    assert_eq!(f.stored(&id).await, 1, "the counted chunk's values only");
    let first = held[0].1.chunk_index;
    assert_eq!(f.results().await, vec![(first, vec![1.0; 10])]);
    assert_eq!(
        status(&mut f.c, &id).await.state,
        RunState::Cancelled as i32
    );
    // A completion naming a run that does not exist (forged, or deleted
    // meanwhile) creates nothing.
    let ghost = "00000000000-ghost";
    let (codes, _) = f.complete_as(Some(ghost), "a", &held[1], 9.0).await;
    assert_eq!(codes, vec![-3]);
    assert_eq!(f.stored(ghost).await, 0);
    f.server.stop().await;
}
