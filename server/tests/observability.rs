//! Observability end to end: a real server and three real agent processes
//! export OTLP spans to an in-process receiver; one agent is SIGKILLed so a
//! chunk is reclaimed. The run is one trace (submit → claim/compute/ack on
//! the agents, reclaim on the server, linked to the lost attempt), both
//! `/metrics` endpoints count what happened, and JSON logs carry the trace id.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::scrape::scrape;
use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

/// Spans received, with the service name of the process that sent them.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
}

fn attr(kv: &[KeyValue], key: &str) -> Option<String> {
    kv.iter()
        .find(|a| a.key == key)
        .and_then(|a| a.value.as_ref()?.value.as_ref())
        .map(|v| match v {
            AnyValue::StringValue(s) => s.clone(),
            AnyValue::IntValue(i) => i.to_string(),
            AnyValue::BoolValue(b) => b.to_string(),
            AnyValue::DoubleValue(d) => d.to_string(),
            other => format!("{other:?}"),
        })
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().expect("lock");
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| attr(&r.attributes, "service.name"))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                out.extend(ss.spans.into_iter().map(|s| (service.clone(), s)));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Value of an unlabelled sample (or the first with that name prefix).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// Every metric in a scrape has a `# HELP` and a `# TYPE` line (what
/// `promtool check metrics` asks); returns the names it saw.
fn assert_described(text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .filter(|l| {
            !l.starts_with('#')
                && !l.trim().is_empty()
                && !l.starts_with("HTTP/")
                && l.contains(' ')
        })
        .filter(|l| l.starts_with("ttg_"))
        .map(|l| l.split([' ', '{']).next().unwrap_or("").to_string())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s).map(str::to_string))
                .unwrap_or(n)
        })
        .collect();
    names.sort();
    names.dedup();
    for n in &names {
        assert!(
            text.lines().any(|l| l.starts_with(&format!("# HELP {n} "))),
            "metric {n} has no HELP text"
        );
        assert!(
            text.lines().any(|l| l.starts_with(&format!("# TYPE {n} "))),
            "metric {n} has no TYPE"
        );
    }
    names
}

/// An in-process OTLP receiver: the spans it got, its URL, its stop and task.
async fn otlp_receiver() -> (
    Receiver,
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
) {
    let receiver = Receiver::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let otlp = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    (receiver, otlp, stop, task)
}

fn metrics_port() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().expect("addr")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_run_metrics_move_and_logs_join_traces() {
    let (receiver, otlp, stop, server_task) = otlp_receiver().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];

    let redis = Redis::start();
    let p = prefix();
    let server_metrics = metrics_port();
    let sm = server_metrics.to_string();
    let mut server = ServerProc::start_env(
        &redis.url,
        &p,
        &[
            "--lease",
            "1s",
            "--heartbeat-interval",
            "100ms",
            "--metrics-addr",
            &sm,
        ],
        &env,
    );
    let agent_metrics: Vec<SocketAddr> = (0..3).map(|_| metrics_port()).collect();
    let logs = tempfile::NamedTempFile::new().expect("log file");
    let mut agents: Vec<Agent> = (0..3)
        .map(|i| {
            let m = agent_metrics[i].to_string();
            let mut extra = vec!["--metrics-addr", m.as_str()];
            let stderr = if i == 0 {
                extra.extend(["--log-format", "json"]);
                Stdio::from(logs.reopen().expect("log file"))
            } else {
                Stdio::inherit()
            };
            let mut env: Vec<(&str, &str)> = env.to_vec();
            if i == 0 {
                env.push(("RUST_LOG", "ttg_agent=debug"));
            }
            Agent::spawn_env(
                &server.url,
                &redis.url,
                &p,
                &format!("o{i}"),
                1,
                &extra,
                &env,
                stderr,
            )
        })
        .collect();
    let mut c = control(&server.url).await;
    wait_until("3 agents", Duration::from_secs(10), || {
        let mut c = c.clone();
        async move {
            (c.list_agents(ttg_proto::v1::ListAgentsRequest {})
                .await
                .ok()?
                .into_inner()
                .agents
                .len()
                == 3)
                .then_some(())
        }
    })
    .await;
    let before = scrape(agent_metrics[0]).await;
    assert_eq!(
        sample(&before, "ttg_agent_chunks_computed_total").unwrap_or(0.0),
        0.0
    );

    // 30 chunks × 400 ms over 3 agents. A chunk outlasts a heartbeat (100 ms)
    // plus the wait below, so the chunk killed is the one reported held.
    let run = c
        .submit(submit_req(600, 20, 20))
        .await
        .expect("submit")
        .into_inner();
    // Kill o2 once a heartbeat has reported what it holds (the server links
    // a reclaim to the lost attempt's claim span from that report).
    wait_until("o2 reports a held chunk", Duration::from_secs(20), || {
        let mut c = c.clone();
        async move {
            let a = c
                .list_agents(ttg_proto::v1::ListAgentsRequest {})
                .await
                .ok()?
                .into_inner()
                .agents;
            a.iter()
                .any(|a| a.agent_id == "o2" && !a.held.is_empty())
                .then_some(())
        }
    })
    .await;
    // Let o2's claim span be exported before it dies (100 ms batch delay).
    tokio::time::sleep(Duration::from_millis(150)).await;
    agents[2].signal("KILL");
    let events = watch_all(&mut c, &run.run_id, "").await;
    assert_exactly_once(&events, 600, 30);
    let reclaimed = reclaims(&events);
    assert!(!reclaimed.is_empty());

    // Metrics, scraped while everything is still up.
    let sm = wait_until(
        "server counters updated",
        Duration::from_secs(15),
        || async move {
            let t = scrape(server_metrics).await;
            (sample(&t, "ttg_chunks_completed_total") == Some(30.0)).then_some(t)
        },
    )
    .await;
    assert_eq!(
        sample(&sm, "ttg_chunks_reclaimed_total"),
        Some(reclaimed.len() as f64),
        "{sm}"
    );
    assert_eq!(sample(&sm, "ttg_chunks_dead_lettered_total"), Some(0.0));
    assert_eq!(sample(&sm, "ttg_sessions_connected"), Some(2.0));
    assert!(sample(&sm, "ttg_submit_seconds_count") >= Some(1.0), "{sm}");
    assert!(
        sample(&sm, "ttg_claim_to_ack_seconds_count") >= Some(20.0),
        "{sm}"
    );
    assert_eq!(
        sample(&sm, "ttg_reclaim_seconds_count"),
        Some(reclaimed.len() as f64)
    );
    assert!(sm.contains("ttg_runs{state=\"SUCCEEDED\"} 1"), "{sm}");
    assert!(
        sm.contains("ttg_queue_lag{kernel=\"placeholder\"} 0"),
        "{sm}"
    );
    assert!(
        sample(&sm, "ttg_redis_used_memory_bytes").is_some_and(|b| b > 0.0),
        "{sm}"
    );
    assert_eq!(sample(&sm, "ttg_runs_stored"), Some(1.0), "{sm}");
    let described = assert_described(&sm);
    assert!(described.len() >= 15, "{described:?}");
    let mut computed = 0.0;
    for m in &agent_metrics[..2] {
        // The gauge drops when the agent has the completion's reply, a moment
        // after watchers see the run end.
        let t = wait_until("agent in_flight back to 0", Duration::from_secs(5), || {
            let m = *m;
            async move {
                let t = scrape(m).await;
                (sample(&t, "ttg_agent_in_flight") == Some(0.0)).then_some(t)
            }
        })
        .await;
        computed += sample(&t, "ttg_agent_chunks_computed_total").unwrap_or(0.0);
        assert_described(&t);
        assert!(
            sample(&t, "ttg_agent_compute_seconds_count").unwrap_or(0.0) > 0.0,
            "{t}"
        );
        assert_eq!(sample(&t, "ttg_agent_in_flight"), Some(0.0), "{t}");
        assert_eq!(
            sample(&t, "ttg_agent_kernel_errors_total").unwrap_or(0.0),
            0.0
        );
    }
    assert!(
        computed >= 20.0,
        "o0 and o1 computed most chunks ({computed})"
    );

    // Stop cleanly so every process flushes its spans.
    for a in &mut agents[..2] {
        a.signal("TERM");
        assert_eq!(a.wait(Duration::from_secs(10)), Some(0));
    }
    assert_eq!(server.terminate(), Some(0));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let _ = server_task.await;

    let spans = receiver.spans.lock().expect("lock").clone();
    if std::env::var_os("TTG_DEBUG_SPANS").is_some() {
        for (svc, s) in &spans {
            eprintln!(
                "{svc} {} {:?}",
                s.name,
                s.attributes
                    .iter()
                    .map(|a| (a.key.clone(), attr(std::slice::from_ref(a), &a.key)))
                    .collect::<Vec<_>>()
            );
        }
    }
    let named = |n: &'static str| spans.iter().filter(move |(_, s)| s.name == n);
    let submit: Vec<_> = named("submit")
        .filter(|(_, s)| attr(&s.attributes, "run_id").as_deref() == Some(run.run_id.as_str()))
        .collect();
    assert_eq!(submit.len(), 1, "one submit span for the run");
    let (svc, root) = submit[0];
    assert_eq!(svc, "ttg-server");
    let trace = root.trace_id.clone();
    assert_eq!(attr(&root.attributes, "params").as_deref(), Some("600"));
    assert_eq!(attr(&root.attributes, "chunks").as_deref(), Some("30"));

    // Every chunk: claim, compute and ack on an agent, children of submit, in the run's trace.
    let mut by_chunk: HashMap<(String, u64), usize> = HashMap::new();
    let mut agent_ids = BTreeSet::new();
    for kind in ["claim", "compute", "ack"] {
        for (svc, s) in named(kind) {
            assert_eq!(svc, "ttg-agent");
            assert_eq!(s.trace_id, trace, "{kind} span in the run's trace");
            assert_eq!(
                s.parent_span_id, root.span_id,
                "{kind} span is a child of submit"
            );
            assert_eq!(
                attr(&s.attributes, "run_id").as_deref(),
                Some(run.run_id.as_str())
            );
            assert_eq!(
                attr(&s.attributes, "kernel").as_deref(),
                Some("placeholder")
            );
            let chunk: u64 = attr(&s.attributes, "chunk")
                .expect("chunk")
                .parse()
                .expect("int");
            let start: u64 = attr(&s.attributes, "params.start")
                .expect("start")
                .parse()
                .expect("int");
            let end: u64 = attr(&s.attributes, "params.end")
                .expect("end")
                .parse()
                .expect("int");
            assert_eq!((start, end), (chunk * 20, chunk * 20 + 20));
            assert!(attr(&s.attributes, "attempt").is_some());
            agent_ids.insert(attr(&s.attributes, "agent_id").expect("agent_id"));
            *by_chunk.entry((kind.to_string(), chunk)).or_default() += 1;
        }
    }
    for chunk in 0..30u64 {
        for kind in ["claim", "compute", "ack"] {
            assert!(
                by_chunk.contains_key(&(kind.to_string(), chunk)),
                "chunk {chunk} has a {kind} span"
            );
        }
    }
    assert!(
        agent_ids.len() >= 2,
        "spans from several agents: {agent_ids:?}"
    );

    // The reclaim: on the server, in the run's trace, linked to the lost claim.
    let rec: Vec<_> = named("reclaim").collect();
    assert_eq!(rec.len(), reclaimed.len());
    let claims: HashMap<Vec<u8>, &Span> = named("claim")
        .map(|(_, s)| (s.span_id.clone(), s))
        .collect();
    for (svc, r) in rec {
        assert_eq!(svc, "ttg-server");
        assert_eq!(r.trace_id, trace);
        assert_eq!(r.parent_span_id, root.span_id);
        assert_eq!(attr(&r.attributes, "agent_id").as_deref(), Some("o2"));
        assert_eq!(
            attr(&r.attributes, "cause").as_deref(),
            Some("session-lost")
        );
        assert_eq!(r.links.len(), 1, "linked to the lost attempt");
        let link = &r.links[0];
        assert_eq!(link.trace_id, trace);
        let lost = claims
            .get(&link.span_id)
            .expect("the link names o2's exported claim span");
        assert_eq!(attr(&lost.attributes, "agent_id").as_deref(), Some("o2"));
        assert_eq!(
            attr(&lost.attributes, "chunk"),
            attr(&r.attributes, "chunk")
        );
    }
    // Session spans on both sides.
    assert!(spans
        .iter()
        .any(|(svc, s)| s.name == "session" && svc == "ttg-server"));
    assert!(spans
        .iter()
        .any(|(svc, s)| s.name == "session" && svc == "ttg-agent"));

    // JSON logs: chunk lines carry run, chunk and agent, and the trace id.
    let text = std::fs::read_to_string(logs.path()).expect("logs");
    let hex: String = trace.iter().map(|b| format!("{b:02x}")).collect();
    let line = text
        .lines()
        .find(|l| l.contains("chunk completed"))
        .unwrap_or_else(|| panic!("no chunk log line in:\n{text}"));
    let v: serde_json_lite::Obj = serde_json_lite::parse(line);
    assert_eq!(v.get("trace_id").as_deref(), Some(hex.as_str()), "{line}");
    assert!(
        line.contains(&format!("\"run\":\"{}\"", run.run_id)),
        "{line}"
    );
    assert!(
        line.contains("\"agent\":\"o0\"") && line.contains("\"chunk\":"),
        "{line}"
    );
}

/// Pull string fields out of one JSON log line without a JSON dependency.
mod serde_json_lite {
    pub struct Obj(String);
    impl Obj {
        pub fn get(&self, key: &str) -> Option<String> {
            let pat = format!("\"{key}\":\"");
            let i = self.0.find(&pat)? + pat.len();
            Some(self.0[i..].split('"').next()?.to_string())
        }
    }
    pub fn parse(line: &str) -> Obj {
        assert!(line.starts_with('{'), "not a JSON line: {line}");
        Obj(line.to_string())
    }
}

/// exec mode=worker: a trace shows each program's cold start as its own
/// `exec.start` span inside the compute span of the chunk that started it,
/// and every chunk's time in the program as `exec.chunk`; the agent's
/// metrics count programs started, restarted (by reason) and live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_worker_traces_show_cold_starts_and_metrics_count_workers() {
    let (receiver, otlp, stop, receiver_task) = otlp_receiver().await;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
    ];
    let dir = tempfile::tempdir().expect("tmp");
    // Crashes on chunk 3's first attempt: one restart.
    let model = py_model(
        dir.path(),
        "model.py",
        "@ttg.kernel\ndef model(p):\n    c = ttg.current_chunk()\n\
         \x20   if c.index == 3 and c.attempt == 1:\n        os._exit(1)\n    return p\n",
    );
    let redis = Redis::start();
    let p = prefix();
    let server = Server::start(&redis.url, &p).await;
    let m = metrics_port();
    let ms = m.to_string();
    let mut agent = Agent::spawn_env(
        &server.url,
        &redis.url,
        &p,
        "x0",
        1,
        &["--allow-exec", "--metrics-addr", &ms],
        &env,
        Stdio::inherit(),
    );
    let mut c = control(&server.url).await;
    let mut req = exec_req(10, 1, &model, &[("mode", "worker")], 3);
    req.fail_fast = Some(0);
    let run = c.submit(req).await.expect("submit").into_inner();
    let (rc, _) = run_end(&mut c, &run.run_id).await;
    assert_eq!(
        rc.state,
        ttg_proto::v1::RunState::Succeeded as i32,
        "{}",
        rc.message
    );
    // The run ended: its program stops, and the gauge says so.
    let text = wait_until("no live worker", Duration::from_secs(10), || async move {
        let t = scrape(m).await;
        (sample(&t, "ttg_agent_exec_workers_live") == Some(0.0)).then_some(t)
    })
    .await;
    assert_described(&text);
    assert_eq!(
        sample(&text, "ttg_agent_exec_workers_started_total"),
        Some(2.0)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("ttg_agent_exec_worker_restarts_total{reason=\"crash\"} 1")),
        "{text}"
    );
    assert_eq!(
        sample(&text, "ttg_agent_exec_worker_start_seconds_count"),
        Some(2.0)
    );
    agent.signal("TERM");
    assert_eq!(agent.wait(Duration::from_secs(10)), Some(0));
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    let _ = receiver_task.await;

    let spans = receiver.spans.lock().expect("lock").clone();
    let of_run: Vec<&Span> = spans
        .iter()
        .map(|(_, s)| s)
        .filter(|s| attr(&s.attributes, "run_id").as_deref() == Some(run.run_id.as_str()))
        .collect();
    let named = |n: &str| {
        of_run
            .iter()
            .filter(|s| s.name == n)
            .copied()
            .collect::<Vec<_>>()
    };
    let (starts, chunks, computes) = (named("exec.start"), named("exec.chunk"), named("compute"));
    assert_eq!(starts.len(), 2, "one exec.start per program started");
    // 10 chunks served, plus the one that crashed.
    assert_eq!(chunks.len(), 11);
    for s in starts.iter().chain(&chunks) {
        let parent = computes
            .iter()
            .find(|c| c.span_id == s.parent_span_id)
            .unwrap_or_else(|| panic!("{} is inside a compute span", s.name));
        assert_eq!(parent.trace_id, s.trace_id);
        assert!(s.start_time_unix_nano >= parent.start_time_unix_nano);
        assert!(s.end_time_unix_nano <= parent.end_time_unix_nano);
    }
    // Two cold starts, in two chunks' compute spans (the first chunk's and
    // the one after the crash); every other chunk was warm.
    let cold: BTreeSet<_> = starts.iter().map(|s| s.parent_span_id.clone()).collect();
    assert_eq!(cold.len(), 2);
}
