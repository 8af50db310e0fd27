//! Every event the Lua scripts write (or finish writing: they append the
//! time and progress to a body encoded in Rust, or build RunCompleted whole)
//! decodes with the prost `Event` type, field by field — the check that ties
//! the Lua encoders to `records.proto`.

mod common;

use std::time::Duration;

use common::*;
use ttg_proto::keys::Keys;
use ttg_proto::reclaim::{reclaim_entry, Cause};
use ttg_proto::records::event_body;
use ttg_proto::scripts::{ChunkResult, FailedAttempt, Scripts};
use ttg_proto::v1::{
    event, ChunkCompleted, ChunkFailed, Progress, RetryRequest, RunStarted, RunState,
};

/// The ids of a Watch's events from `after`, following or not.
async fn watch_ids(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    run_id: &str,
    after: &str,
    follow: bool,
) -> Vec<String> {
    watch_events(c, run_id, after, follow)
        .await
        .into_iter()
        .map(|e| e.id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_completions_is_one_entry_and_each_event_keeps_its_id() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let id = submit_run(&mut c, submit_req(20, 2, 0)).await;
    let tasks = keys.tasks("placeholder");
    let scripts = Scripts::new();
    let mut conn = redis.async_conn().await;
    let got = read_group(&mut conn, &tasks, "tester", 10).await;
    assert_eq!(got.len(), 10);
    let result = |(entry, t): &(String, ttg_proto::records::TaskEntry)| {
        let values: Vec<f64> = (t.task.start..t.task.end).map(|p| p as f64).collect();
        tester_chunk(&id, entry, &t.task, &values)
    };
    // Two completions: chunks 0-3 in one call, 4-9 in the next.
    for (batch, end) in [(&got[..4], "RUNNING"), (&got[4..], "SUCCEEDED")] {
        let results: Vec<_> = batch.iter().map(result).collect();
        let (codes, state): (Vec<i64>, String) = scripts
            .complete(&mut conn, &keys, &id, &tasks, "tester", &results)
            .await
            .expect("complete");
        assert_eq!((codes, state.as_str()), (vec![1; batch.len()], end));
    }
    // Each completion is one entry of the stream, holding its events.
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(keys.events(&id))
        .arg("-")
        .arg("+")
        .query(&mut redis.conn())
        .expect("xrange");
    let batches: Vec<&str> = entries
        .ids
        .iter()
        .filter(|e| e.map.contains_key("b"))
        .map(|e| e.id.as_str())
        .collect();
    assert_eq!(batches.len(), 2, "{:?}", entries.ids);
    assert_eq!(raw_events(&redis, &keys, &id).len(), 1 + 10 + 1);
    // Every event has an id of its own, in order; the batch's last is the
    // entry's.
    let ids = events_in_redis(&redis, &p, &id)
        .into_iter()
        .map(|e| e.id)
        .collect::<Vec<_>>();
    let parsed: Vec<(u64, u64)> = ids
        .iter()
        .map(|i| ttg_proto::records::parse_stream_id(i).expect("a stream id"))
        .collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert_eq!(ids[4], batches[0]);
    assert_eq!(ids[10], batches[1]);
    // A Watch gives the same ids, and resumes after any of them, inside a
    // batch too, with exactly the events after it.
    assert_eq!(watch_ids(&mut c, &id, "", false).await, ids);
    assert_eq!(watch_ids(&mut c, &id, "", true).await, ids);
    for k in [1, 2, 4, 5, 9, 10] {
        assert_eq!(
            watch_ids(&mut c, &id, &ids[k], false).await,
            ids[k + 1..],
            "after {k}"
        );
        assert_eq!(
            watch_ids(&mut c, &id, &ids[k], true).await,
            ids[k + 1..],
            "after {k}"
        );
    }
    let st = status(&mut c, &id).await;
    assert_eq!(st.aggregate.expect("agg").sum, (0..20).sum::<u64>() as f64);
    // With nothing left to hand out, a claim answers (with nothing).
    assert!(read_group(&mut conn, &tasks, "tester", 10).await.is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_the_scripts_write_decodes_with_prost() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let mut req = submit_req(20, 10, 0);
    req.max_attempts = Some(2);
    let run = c.submit(req).await.expect("submit").into_inner();
    let id = run.run_id.clone();
    let tasks = keys.tasks("placeholder");
    let scripts = Scripts::new();
    let mut conn = redis::Client::open(redis.url.as_str())
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let reader = conn.clone();
    let read = |n: usize| {
        let mut conn = reader.clone();
        let tasks = tasks.clone();
        async move { read_group(&mut conn, &tasks, "tester", n).await }
    };
    let first = read(2).await;
    let (e0, t0) = (first[0].0.clone(), first[0].1.task.clone());
    let (e1, t1) = (first[1].0.clone(), first[1].1.task.clone());
    // RunStarted, by the claim gate.
    let started = event_body(
        &id,
        event::Kind::RunStarted(RunStarted {
            agent_id: "tester".into(),
        }),
    );
    let (code, _): (i64, String) = scripts
        .claim_gate(&keys, &id, &tasks, &e0, "tester", &started)
        .invoke_async(&mut conn)
        .await
        .expect("gate");
    assert_eq!(code, 0);
    // ChunkReclaimed: chunk 0's agent "died" (attempt 1 of 2).
    reclaim_entry(
        &mut conn,
        &keys,
        &scripts,
        &tasks,
        &e0,
        "tester",
        "tester",
        Cause::SessionLost,
        Duration::from_millis(7),
        "",
    )
    .await
    .expect("reclaim")
    .expect("reclaimed");
    // ChunkFailed, dead: attempt 2 of 2 fails.
    let again = read(1).await;
    let (e0b, t0b) = (again[0].0.clone(), again[0].1.task.clone());
    let body = |dead| {
        event_body(
            &id,
            event::Kind::ChunkFailed(ChunkFailed {
                chunk_index: 0,
                agent_id: "tester".into(),
                attempt: 2,
                error: "boom".into(),
                dead,
            }),
        )
    };
    let (retry_body, dead_body) = (body(false), body(true));
    let (code, _): (i64, String) = scripts
        .fail(
            &keys,
            &id,
            &tasks,
            "tester",
            &FailedAttempt {
                entry_id: &e0b,
                task: &t0b,
                attempt: 2,
                error: "boom",
                first_line: "boom",
                traceparent: b"",
                retry_body: &retry_body,
                dead_body: &dead_body,
            },
        )
        .invoke_async(&mut conn)
        .await
        .expect("fail");
    assert_eq!(code, 3, "dead-lettered");
    // ChunkCompleted for chunk 1, then RunCompleted FAILED (1 done, 1 dead).
    let complete = |entry: String, t: ttg_proto::v1::Task| {
        let values: Vec<f64> = (t.start..t.end).map(|p| p as f64 + 0.25).collect();
        let body = event_body(
            &id,
            event::Kind::ChunkCompleted(ChunkCompleted {
                chunk_index: t.chunk_index,
                start: t.start,
                end: t.end,
                agent_id: "tester".into(),
                attempt: 1,
                sum: values.iter().sum(),
                compute_ms: 3,
            }),
        );
        ChunkResult::new(&entry, t.chunk_index, t.start, &values, body)
    };
    let (codes, state): (Vec<i64>, String) = scripts
        .complete(&mut conn, &keys, &id, &tasks, "tester", &[complete(e1, t1)])
        .await
        .expect("complete");
    assert_eq!((codes, state.as_str()), (vec![1], "FAILED"));
    // RunRetried, then chunk 0 completes: RunCompleted SUCCEEDED.
    c.retry(RetryRequest { run_id: id.clone() })
        .await
        .expect("retry");
    let third = read(1).await;
    let (codes, state): (Vec<i64>, String) = scripts
        .complete(
            &mut conn,
            &keys,
            &id,
            &tasks,
            "tester",
            &[complete(third[0].0.clone(), t0.clone())],
        )
        .await
        .expect("complete");
    assert_eq!((codes, state.as_str()), (vec![1], "SUCCEEDED"));

    let events = raw_events(&redis, &keys, &id);
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| match &e.kind {
            Some(event::Kind::RunSubmitted(_)) => "submitted",
            Some(event::Kind::RunStarted(_)) => "started",
            Some(event::Kind::ChunkReclaimed(_)) => "reclaimed",
            Some(event::Kind::ChunkFailed(f)) if f.dead => "dead",
            Some(event::Kind::ChunkFailed(_)) => "failed",
            Some(event::Kind::ChunkCompleted(_)) => "completed",
            Some(event::Kind::RunCompleted(_)) => "run completed",
            Some(event::Kind::RunRetried(_)) => "retried",
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "submitted",
            "started",
            "reclaimed",
            "dead",
            "completed",
            "run completed",
            "retried",
            "completed",
            "run completed"
        ]
    );
    for e in &events {
        assert_eq!(e.run_id, id);
        assert!(e.time_ms > 1_600_000_000_000, "{e:?}");
        assert_eq!(e.progress.expect("progress").chunks_total, 2);
    }
    let progress = |i: usize| events[i].progress.unwrap_or_default();
    assert_eq!(
        progress(3),
        Progress {
            chunks_total: 2,
            chunks_dead: 1,
            ..Default::default()
        }
    );
    assert_eq!(
        progress(4),
        Progress {
            chunks_total: 2,
            chunks_done: 1,
            chunks_dead: 1,
            params_done: 10,
            ..Default::default()
        }
    );
    assert_eq!(progress(8).chunks_done, 2);
    match &events[2].kind {
        Some(event::Kind::ChunkReclaimed(r)) => {
            assert_eq!(
                (r.chunk_index, r.attempt, r.after_ms, r.cause.as_str()),
                (0, 2, 7, "session-lost")
            )
        }
        other => panic!("{other:?}"),
    }
    match &events[6].kind {
        Some(event::Kind::RunRetried(r)) => assert_eq!(r.chunks, 1),
        other => panic!("{other:?}"),
    }
    let st = status(&mut c, &id).await;
    match (&events[5].kind, &events[8].kind) {
        (Some(event::Kind::RunCompleted(failed)), Some(event::Kind::RunCompleted(done))) => {
            assert_eq!(failed.state, RunState::Failed as i32);
            assert_eq!(failed.aggregate.expect("agg").count, 10);
            assert_eq!(done.state, RunState::Succeeded as i32);
            let (a, b) = (done.aggregate.expect("agg"), st.aggregate.expect("agg"));
            assert_eq!(
                (a.count, a.sum, a.min, a.max, a.mean),
                (b.count, b.sum, b.min, b.max, b.mean)
            );
            assert_eq!((a.count, a.sum, a.min, a.max), (20, 195.0, 0.25, 19.25));
            assert!(done.message.is_empty());
        }
        other => panic!("{other:?}"),
    }
    server.stop().await;
}
