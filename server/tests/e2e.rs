//! The end-to-end path with real parts: redis-server, the tonic server, agent
//! processes. Exact sums, watch resume, cancel, results, double completion,
//! chunk coverage, reflection and health.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use ttg_proto::keys::{Keys, GROUP};
use ttg_proto::records::{decode_task, encode};
use ttg_proto::scripts::{ChunkResult, Completion, Scripts};
use ttg_proto::v1::{event, CancelRequest, GetResultsRequest, RunState, Task};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_params_on_three_agent_processes_sum_exactly() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let agents: Vec<Agent> = (0..3)
        .map(|i| Agent::spawn(&server.url, &redis.url, &p, &format!("a{i}"), 1, &[]))
        .collect();
    let mut c = control(&server.url).await;
    wait_until("3 agents connected", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            let n = c
                .list_agents(ttg_proto::v1::ListAgentsRequest {})
                .await
                .ok()?
                .into_inner()
                .agents
                .len();
            (n == 3).then_some(())
        }
    })
    .await;
    let run = c
        .submit(submit_req(10_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    assert_eq!(run.chunks, 100);
    let events = watch_all(&mut c, &run.run_id, "").await;
    let last = events.last().expect("events");
    let Some(event::Kind::RunCompleted(done)) = &last.kind else {
        panic!("last event {last:?}")
    };
    assert_eq!(done.state, RunState::Succeeded as i32);
    let agg = done.aggregate.expect("aggregate");
    assert_eq!(agg.count, 10_000);
    assert_eq!(cents(agg.sum), cents(5_000_355.00));
    assert_eq!(agg.min, 0.41);
    assert_eq!(agg.max, 999.98);
    let completed: Vec<_> = events
        .iter()
        .filter_map(|e| match &e.kind {
            Some(event::Kind::ChunkCompleted(k)) => Some(k.chunk_index),
            _ => None,
        })
        .collect();
    assert_eq!(completed.len(), 100, "one ChunkCompleted per chunk");
    assert_eq!(completed.iter().collect::<BTreeSet<_>>().len(), 100);
    let st = status(&mut c, &run.run_id).await;
    assert_eq!(st.state, RunState::Succeeded as i32);
    assert_eq!(st.progress.expect("progress").chunks_done, 100);
    assert!(st.finished_ms >= st.started_ms && st.started_ms >= st.created_ms);
    // Completed deliveries are acked and deleted: nothing left in the stream.
    let mut r = redis.conn();
    let keys = Keys::new(&p);
    let len: u64 = redis::cmd("XLEN")
        .arg(keys.tasks("placeholder"))
        .query(&mut r)
        .expect("xlen");
    assert_eq!(len, 0);
    drop(agents);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_from_a_mid_run_event_id_and_several_watchers_agree() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let agent = InProcAgent::start(&server.url, &redis.url, &p, 2);
    let mut c = control(&server.url).await;
    // 40 chunks × 10 params × 2 ms = 0.8 s of work: long enough to cut mid-run.
    let run = c
        .submit(submit_req(400, 10, 2))
        .await
        .expect("submit")
        .into_inner();
    let mut s = c
        .watch(ttg_proto::v1::WatchRequest {
            run_id: run.run_id.clone(),
            after_event_id: String::new(),
            no_follow: false,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut head = Vec::new();
    while let Some(e) = s.message().await.expect("stream") {
        let is_chunk = matches!(e.kind, Some(event::Kind::ChunkCompleted(_)));
        head.push(e);
        if is_chunk && head.len() >= 8 {
            break;
        }
    }
    drop(s); // the client goes away mid-run
    let cut = head.last().expect("cut").id.clone();
    let (full, resumed) = tokio::join!(
        {
            let mut c = c.clone();
            let id = run.run_id.clone();
            async move { watch_all(&mut c, &id, "").await }
        },
        {
            let mut c = c.clone();
            let id = run.run_id.clone();
            async move { watch_all(&mut c, &id, &cut).await }
        }
    );
    let ids = |v: &[ttg_proto::v1::Event]| v.iter().map(|e| e.id.clone()).collect::<Vec<_>>();
    // Head + resumed is exactly the full stream: nothing missed, nothing repeated.
    let mut joined = ids(&head);
    joined.extend(ids(&resumed));
    assert_eq!(joined, ids(&full));
    assert!(matches!(
        full.last().and_then(|e| e.kind.as_ref()),
        Some(event::Kind::RunCompleted(_))
    ));
    // Resuming after the terminal event ends at once with nothing.
    let after_end = watch_all(&mut c, &run.run_id, &full.last().expect("last").id).await;
    assert!(after_end.is_empty());
    assert_eq!(agent.stop().await, ttg_agent::Exit::Drained);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_the_run_and_agents_drop_its_chunks() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let agent = Agent::spawn(&server.url, &redis.url, &p, "canceller", 2, &[]);
    let mut c = control(&server.url).await;
    // 200 chunks × 100 ms: 10 s of work at concurrency 2; cancelled early.
    let run = c
        .submit(submit_req(2_000, 10, 10))
        .await
        .expect("submit")
        .into_inner();
    wait_until("some chunks done", Duration::from_secs(20), || {
        let mut c = c.clone();
        let id = run.run_id.clone();
        async move { (status(&mut c, &id).await.progress?.chunks_done >= 2).then_some(()) }
    })
    .await;
    let r = c
        .cancel(CancelRequest {
            run_id: run.run_id.clone(),
            reason: "test".into(),
        })
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(r.state, RunState::Cancelled as i32);
    let events = watch_all(&mut c, &run.run_id, "").await;
    let Some(event::Kind::RunCancelled(rc)) = events.last().and_then(|e| e.kind.clone()) else {
        panic!("watch must end with RunCancelled")
    };
    assert_eq!(rc.reason, "test");
    // Agents drop the remaining chunks unanswered: the stream drains to empty
    // long before the 10 s the work would take, with nothing pending.
    let keys = Keys::new(&p);
    let mut r = redis.conn();
    let started = std::time::Instant::now();
    wait_until("tasks stream drained", Duration::from_secs(8), || {
        let len: u64 = redis::cmd("XLEN")
            .arg(keys.tasks("placeholder"))
            .query(&mut r)
            .unwrap_or(1);
        async move { (len == 0).then_some(()) }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(8));
    let done_at_cancel = status(&mut c, &run.run_id)
        .await
        .progress
        .expect("p")
        .chunks_done;
    assert!(done_at_cancel < 200, "cancel came before the end");
    let st = status(&mut c, &run.run_id).await;
    assert_eq!(st.state, RunState::Cancelled as i32);
    assert_eq!(
        st.progress.expect("p").chunks_done,
        done_at_cancel,
        "no result is counted after cancel"
    );
    // Cancelling again is a FailedPrecondition naming the state.
    let e = c
        .cancel(CancelRequest {
            run_id: run.run_id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("second cancel");
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(e.message().contains("CANCELLED"), "{}", e.message());
    drop(agent);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_stream_every_value_in_parameter_order() {
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let agent = InProcAgent::start(&server.url, &redis.url, &p, 4);
    let mut c = control(&server.url).await;
    // 1,000 params in chunks of 7: a short last chunk.
    let run = c
        .submit(submit_req(1_000, 7, 0))
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(30)).await;
    assert_eq!(cents(st.aggregate.expect("agg").sum), cents(500_035.50));
    let mut s = c
        .get_results(GetResultsRequest {
            run_id: run.run_id.clone(),
        })
        .await
        .expect("results")
        .into_inner();
    let mut next = 0u64;
    while let Some(chunk) = s.message().await.expect("chunk") {
        assert_eq!(chunk.start, next, "chunks in order, no gap");
        for (i, v) in chunk.values.iter().enumerate() {
            assert_eq!(
                *v,
                ttg_proto::kernels::placeholder_value(chunk.start + i as u64)
            );
        }
        next += chunk.values.len() as u64;
    }
    assert_eq!(next, 1_000);

    // The CLI exports the same values as CSV.
    let out = ttgctl_cmd()
        .args(["--server", &server.url, "results", &run.run_id, "-o", "csv"])
        .output()
        .expect("ttgctl results");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf8");
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some("param,value"));
    let rows: Vec<(u64, f64)> = lines
        .map(|l| {
            let (a, b) = l.split_once(',').expect("row");
            (a.parse().expect("param"), b.parse().expect("value"))
        })
        .collect();
    assert_eq!(rows.len(), 1_000);
    assert!(rows
        .iter()
        .all(|(p, v)| *v == ttg_proto::kernels::placeholder_value(*p)));
    let sum: f64 = rows.iter().map(|r| r.1).sum();
    assert_eq!(cents(sum), cents(500_035.50));
    agent.stop().await;
    server.stop().await;
}

/// The same chunk completed twice (two deliveries: a duplicate entry, as a
/// reclaim would make) is counted once, whatever the second result says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunk_completed_twice_is_counted_once() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(20, 10, 0))
        .await
        .expect("submit")
        .into_inner();
    let tasks = keys.tasks("placeholder");
    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    // Add a second delivery of chunk 0, then read all three entries as one consumer.
    let first = claim_read(&mut conn, &keys, "placeholder", "tester", 10).await;
    let first = &first.keys[0];
    let t0 = match first.ids[0].map.get("t") {
        Some(redis::Value::BulkString(b)) => b.clone(),
        other => panic!("task field {other:?}"),
    };
    let _: String = redis::cmd("XADD")
        .arg(&tasks)
        .arg("*")
        .arg("t")
        .arg(&t0)
        .arg("a")
        .arg(2)
        .query_async(&mut conn)
        .await
        .expect("xadd");
    let read: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(GROUP)
        .arg("tester")
        .arg("COUNT")
        .arg(10)
        .arg("STREAMS")
        .arg(&tasks)
        .arg(">")
        .query_async(&mut conn)
        .await
        .expect("xreadgroup");
    let entries: Vec<_> = first.ids.iter().chain(&read.keys[0].ids).cloned().collect();
    assert_eq!(entries.len(), 3);
    let scripts = Scripts::new();
    let scripts = &scripts;
    let complete = |entry: String, task: Task, value: f64| {
        let mut conn = conn.clone();
        let keys = keys.clone();
        let tasks = tasks.clone();
        let run_id = run.run_id.clone();
        async move {
            let n = (task.end - task.start) as usize;
            let chunk = tester_chunk(&run_id, &entry, &task, &vec![value; n]);
            let (codes, state): (Vec<i64>, String) = scripts
                .complete(&mut conn, &keys, &run_id, &tasks, "tester", &[chunk])
                .await
                .expect("complete");
            Completion::from_reply(codes[0], &state)
        }
    };
    let task_of = |i: usize| match entries[i].map.get("t") {
        Some(redis::Value::BulkString(b)) => decode_task(b).expect("task"),
        other => panic!("{other:?}"),
    };
    // Chunk 0 first delivery: counted. Its duplicate, with a different value: ignored.
    assert_eq!(
        complete(entries[0].id.clone(), task_of(0), 1.0).await,
        Completion::Counted(RunState::Running)
    );
    assert_eq!(
        complete(entries[2].id.clone(), task_of(2), 1000.0).await,
        Completion::Duplicate
    );
    // And the very same delivery completed again (a retried script call): ignored.
    assert_eq!(
        complete(entries[0].id.clone(), task_of(0), 7.0).await,
        Completion::Duplicate
    );
    assert_eq!(
        complete(entries[1].id.clone(), task_of(1), 2.0).await,
        Completion::Counted(RunState::Succeeded)
    );
    let st = status(&mut c, &run.run_id).await;
    let agg = st.aggregate.expect("agg");
    assert_eq!(agg.count, 20);
    assert_eq!(agg.sum, 10.0 * 1.0 + 10.0 * 2.0);
    assert_eq!((agg.min, agg.max), (1.0, 2.0));
    assert_eq!(st.progress.expect("p").chunks_done, 2);
    assert_eq!(st.state, RunState::Succeeded as i32);
    // Nothing pending, nothing left: every delivery was acked and deleted.
    let pending: redis::streams::StreamPendingReply = redis::cmd("XPENDING")
        .arg(&tasks)
        .arg(GROUP)
        .query_async(&mut conn)
        .await
        .expect("xpending");
    assert_eq!(pending.count(), 0);
    let events = watch_all(&mut c, &run.run_id, "").await;
    let completed = events
        .iter()
        .filter(|e| matches!(e.kind, Some(event::Kind::ChunkCompleted(_))))
        .count();
    assert_eq!(
        completed, 2,
        "one ChunkCompleted per chunk, not per delivery"
    );
    // The encoded events in Redis are plain protobuf, decodable by any
    // client, and they are the Watch's.
    assert_eq!(raw_events(&redis, &keys, &run.run_id).len(), events.len());
    server.stop().await;
}

/// Several chunks completed in ONE script call (as an agent batches what
/// finished while its previous call was in flight), a duplicate among them:
/// each chunk is counted once, each gets its own event with its own progress,
/// and the run ends with the exact aggregate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_completions_counts_each_chunk_once() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(40, 10, 0))
        .await
        .expect("submit")
        .into_inner();
    let tasks = keys.tasks("placeholder");
    let client = redis::Client::open(redis.url.as_str()).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("conn");
    let read = claim_read(&mut conn, &keys, "placeholder", "tester", 10).await;
    let mut batch = Vec::new();
    for e in &read.keys[0].ids {
        let Some(redis::Value::BulkString(b)) = e.map.get("t") else {
            panic!("task field")
        };
        let t = decode_task(b).expect("task");
        let values: Vec<f64> = (t.start..t.end).map(|p| p as f64).collect();
        batch.push(tester_chunk(&run.run_id, &e.id, &t, &values));
    }
    assert_eq!(batch.len(), 4);
    // The same delivery of chunk 1 again, inside the batch, with other values.
    let dup = ChunkResult::new(
        &batch[1].entry_id,
        batch[1].chunk_index,
        0,
        &[1e9; 10],
        vec![],
    );
    batch.push(dup);
    let scripts = Scripts::new();
    let (codes, state): (Vec<i64>, String) = scripts
        .complete(&mut conn, &keys, &run.run_id, &tasks, "tester", &batch)
        .await
        .expect("complete");
    assert_eq!(codes, vec![1, 1, 1, 1, 0]);
    assert_eq!(state, "SUCCEEDED");
    let st = status(&mut c, &run.run_id).await;
    let agg = st.aggregate.expect("agg");
    assert_eq!(
        (agg.count, agg.sum, agg.min, agg.max),
        (40, 780.0, 0.0, 39.0)
    );
    assert!(st.started_ms > 0 && st.finished_ms >= st.started_ms);
    let events = watch_all(&mut c, &run.run_id, "").await;
    let progress: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| matches!(e.kind, Some(event::Kind::ChunkCompleted(_))))
        .map(|e| {
            let p = e.progress.expect("progress");
            (p.chunks_done, p.params_done)
        })
        .collect();
    assert_eq!(progress, vec![(1, 10), (2, 20), (3, 30), (4, 40)]);
    assert!(matches!(
        events.last().and_then(|e| e.kind.clone()),
        Some(event::Kind::RunCompleted(_))
    ));
    let values: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
        .arg(keys.results(&run.run_id))
        .arg(&[0, 1, 2, 3])
        .query_async(&mut conn)
        .await
        .expect("results");
    let chunk1 =
        ttg_proto::records::unpack_values(values[1].as_deref().expect("chunk 1")).expect("values");
    assert_eq!(chunk1[0], 10.0, "first result wins inside a batch too");
    assert_eq!(queue_state(&redis, &p), (0, 0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submitted_runs_hand_out_chunks_that_tile_the_range_exactly() {
    let redis = Redis::start();
    let server = Server::start(&redis.url, &prefix()).await;
    let mut c = control(&server.url).await;
    let mut conn = redis.conn();
    let mut aconn = redis.async_conn().await;
    // Includes chunk > params (one chunk), exact multiples, short last
    // chunks, and claims of 1,000 (claim.lua's most) across chunk 0.
    for (params, chunk_size) in [
        (1, 1),
        (1, 100),
        (10, 100),
        (100, 10),
        (101, 10),
        (9_999, 100),
        (4_001, 1),
        (12_345, 6),
    ] {
        let p = prefix();
        let keys = Keys::new(&p);
        let server2 = Server::start(&redis.url, &p).await;
        let mut c2 = control(&server2.url).await;
        let run = c2
            .submit(submit_req(params, chunk_size, 0))
            .await
            .expect("submit")
            .into_inner();
        assert_eq!(run.chunks, params.div_ceil(chunk_size));
        // Submit writes no task entry: the scheduler hands chunks out.
        let len: u64 = redis::cmd("XLEN")
            .arg(keys.tasks("placeholder"))
            .query(&mut conn)
            .expect("xlen");
        assert_eq!(len, 0, "submit queues in O(1)");
        let mut tasks = Vec::new();
        loop {
            let reply = claim_read(&mut aconn, &keys, "placeholder", "probe", 1000).await;
            if reply.keys.is_empty() {
                break;
            }
            for e in reply.keys.iter().flat_map(|k| k.ids.iter()) {
                let Some(redis::Value::BulkString(b)) = e.map.get("t") else {
                    panic!("task")
                };
                tasks.push(decode_task(b).expect("task"));
            }
        }
        let mut next = 0;
        for (i, t) in tasks.iter().enumerate() {
            assert_eq!(t.chunk_index, i as u64);
            assert_eq!(t.run_id, run.run_id);
            assert_eq!(t.start, next, "no gap, no overlap ({params}, {chunk_size})");
            assert!(t.end > t.start && t.end - t.start <= chunk_size);
            next = t.end;
        }
        assert_eq!(
            next, params,
            "chunks cover [0, params) for ({params}, {chunk_size})"
        );
        assert_eq!(tasks.len() as u64, run.chunks);
        let idle = ttg_proto::sched::claim(
            &mut aconn,
            &Scripts::new(),
            &keys,
            &["placeholder".to_string()],
            "probe",
            10,
        )
        .await
        .expect("claim");
        assert!(idle.keys.is_empty());
        assert_eq!(idle.wake_ids.len(), 1, "an idle claim says where to wait");
        let inflight: u64 = redis::cmd("HGET")
            .arg(keys.run(&run.run_id))
            .arg("inflight")
            .query(&mut conn)
            .expect("inflight");
        assert_eq!(inflight, run.chunks, "every handed-out chunk is in flight");
        server2.stop().await;
    }
    let _ = &mut c;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_v1_and_v1alpha_and_health_list_every_service() {
    use tonic_reflection::pb::{v1, v1alpha};
    let redis = Redis::start();
    let server = Server::start(&redis.url, &prefix()).await;
    let channel = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let want = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "ttg.v1.AgentGateway",
        "ttg.v1.ControlPlane",
    ];

    let mut a = v1alpha::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut s = a
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("v1alpha")
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(l)) = s
        .message()
        .await
        .expect("msg")
        .expect("some")
        .message_response
    else {
        panic!("list services")
    };
    let got: BTreeSet<_> = l.service.into_iter().map(|s| s.name).collect();
    assert_eq!(got, want.iter().map(|s| s.to_string()).collect());

    let mut b = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let req = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                "ttg.v1.ControlPlane".into(),
            ),
        ),
    };
    let mut s = b
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("v1")
        .into_inner();
    let r = s.message().await.expect("msg").expect("some");
    assert!(matches!(
        r.message_response,
        Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(_))
    ));

    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    for svc in ["", "ttg.v1.ControlPlane", "ttg.v1.AgentGateway"] {
        let r = h
            .check(tonic_health::pb::HealthCheckRequest {
                service: svc.into(),
            })
            .await
            .expect("health");
        assert_eq!(
            r.get_ref().status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{svc}"
        );
    }
    server.stop().await;
}

/// Records are protobuf: a round trip through encode/decode loses nothing.
#[test]
fn task_records_round_trip() {
    let t = Task {
        run_id: "r".into(),
        chunk_index: 3,
        start: 300,
        end: 400,
        kernel: "placeholder".into(),
        max_attempts: 3,
        ..Default::default()
    };
    assert_eq!(decode_task(&encode(&t)).expect("decode"), t);
}
