//! `ttg-loadgen`: the load of benchmark P5 (see docs/benchmarks.md).
//!
//! Opens `--sessions` agent sessions against one server (each on its own
//! HTTP/2 connection, as real agents are, heartbeating at the interval the
//! server's Welcome sets, holding nothing), reports when all are welcomed,
//! keeps them idle for `--idle` (so the caller can measure the server's
//! memory and heartbeat CPU), then submits a run and follows it with
//! `--watchers` concurrent Watch streams, measuring for every
//! `ChunkCompleted` the delay from its completion script (the event's Redis
//! timestamp) to its arrival at the watcher. Ends every session with Bye.
//!
//! Prints one JSON object per line on stdout: `{"event":"ready",…}`,
//! `{"event":"idle_end"}`, `{"event":"done",…}`.

use std::time::{Duration, Instant};

use clap::Parser;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use ttg_proto::client::{endpoint, Bearer, ConnectOpts};
use ttg_proto::v1::agent_gateway_client::AgentGatewayClient;
use ttg_proto::v1::control_plane_client::ControlPlaneClient;
use ttg_proto::v1::{
    agent_message, event, server_message, AgentMessage, Bye, Heartbeat, Hello, SubmitRequest,
    WatchRequest,
};

#[derive(Parser, Debug)]
#[command(
    name = "ttg-loadgen",
    about = "Many agent sessions and watchers against one TTG server (benchmark P5)"
)]
struct Args {
    /// Server URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    server: String,
    /// Bearer token with the agent role for sessions (and client role for Submit/Watch: use --client-token).
    #[arg(long, env = "TTG_AGENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Bearer token for Submit and Watch (default: --token).
    #[arg(long, env = "TTG_TOKEN", hide_env_values = true)]
    client_token: Option<String>,
    /// Agent sessions to open.
    #[arg(long, default_value_t = 200)]
    sessions: u32,
    /// How long to hold the sessions idle before the run.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    idle: Duration,
    /// Concurrent Watch streams on the run.
    #[arg(long, default_value_t = 10)]
    watchers: u32,
    /// Parameters of the run.
    #[arg(long, default_value_t = 10_000)]
    params: u64,
    /// Chunk size of the run.
    #[arg(long, default_value_t = 100)]
    chunk_size: u64,
    /// work_ms of the run (placeholder kernel).
    #[arg(long, default_value_t = 1)]
    work_ms: u64,
}

fn now_ms() -> i64 {
    ttg_proto::now_ms()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One fake agent: Hello, Welcome, heartbeats until `stop`, then Bye.
async fn session(
    args: &Args,
    i: u32,
    ready: mpsc::Sender<Result<Duration, String>>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let opts = ConnectOpts {
        token: args.token.clone(),
        ..Default::default()
    };
    let setup = async {
        let channel = endpoint(&args.server, &opts)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let mut client = AgentGatewayClient::with_interceptor(
            channel,
            Bearer::new(opts.token.as_deref()).map_err(|e| e.to_string())?,
        );
        let (tx, rx) = mpsc::channel::<AgentMessage>(4);
        let hello = Hello {
            agent_id: format!("loadgen-{}-{i}", std::process::id()),
            host: "loadgen".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            concurrency: 1,
            kernels: Vec::new(),
            pid: std::process::id(),
            kernel_decls: Vec::new(),
            // Unique per session; the server only needs it stable per process.
            instance: format!("loadgen-{:016x}-{i}", std::process::id()),
        };
        tx.send(AgentMessage {
            msg: Some(agent_message::Msg::Hello(hello)),
        })
        .await
        .map_err(|_| "closed".to_string())?;
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("session: {}", s.message()))?
            .into_inner();
        match inbound.message().await {
            Ok(Some(m)) => match m.msg {
                Some(server_message::Msg::Welcome(w)) => Ok((tx, inbound, w)),
                _ => Err("expected Welcome".to_string()),
            },
            other => Err(format!("no Welcome: {other:?}")),
        }
    };
    let (tx, mut inbound, welcome) = match setup.await {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e)).await;
            return;
        }
    };
    let _ = ready.send(Ok(started.elapsed())).await;
    drop(ready);
    let mut tick =
        tokio::time::interval(Duration::from_millis(welcome.heartbeat_interval_ms.max(50)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let hb = AgentMessage { msg: Some(agent_message::Msg::Heartbeat(Heartbeat::default())) };
                if tx.send(hb).await.is_err() { return; }
            }
            m = inbound.message() => if !matches!(m, Ok(Some(_))) { return },
            _ = stop.cancelled() => {
                let bye = AgentMessage { msg: Some(agent_message::Msg::Bye(Bye { reason: "loadgen done".into() })) };
                let _ = tx.send(bye).await;
                drop(tx);
                let _ = tokio::time::timeout(Duration::from_secs(2), async {
                    while let Ok(Some(_)) = inbound.message().await {}
                }).await;
                return;
            }
        }
    }
}

/// Follow `run_id` to its end; the delay of every ChunkCompleted that
/// happened after the watch began, in ms.
async fn watcher(
    client: ControlPlaneClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, Bearer>,
    >,
    run_id: String,
) -> Result<Vec<f64>, String> {
    let mut client = client;
    let mut stream = client
        .watch(WatchRequest {
            run_id,
            after_event_id: String::new(),
            no_follow: false,
        })
        .await
        .map_err(|s| format!("watch: {}", s.message()))?
        .into_inner();
    let began = now_ms();
    let mut delays = Vec::new();
    while let Some(ev) = stream
        .message()
        .await
        .map_err(|s| format!("watch: {}", s.message()))?
    {
        let arrived = now_ms();
        // Events from before the watch began are history, not latency.
        if matches!(ev.kind, Some(event::Kind::ChunkCompleted(_))) && ev.time_ms > began {
            delays.push((arrived - ev.time_ms) as f64);
        }
    }
    Ok(delays)
}

fn emit(v: serde_json::Value) {
    println!("{v}");
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Err(e) = run(args).await {
        eprintln!("ttg-loadgen: {e}");
        std::process::exit(1);
    }
}

async fn run(args: Args) -> Result<(), String> {
    let args = std::sync::Arc::new(args);
    let stop = CancellationToken::new();
    let (ready_tx, mut ready_rx) = mpsc::channel(args.sessions.max(1) as usize);
    let mut handles = Vec::new();
    for i in 0..args.sessions {
        let (a, tx, stop) = (args.clone(), ready_tx.clone(), stop.clone());
        handles.push(tokio::spawn(async move { session(&a, i, tx, stop).await }));
    }
    drop(ready_tx);
    let mut welcome_ms = Vec::new();
    while let Some(r) = ready_rx.recv().await {
        welcome_ms.push(r?.as_secs_f64() * 1e3);
    }
    welcome_ms.sort_by(f64::total_cmp);
    emit(serde_json::json!({
        "event": "ready", "sessions": welcome_ms.len(),
        "welcome_ms_p50": percentile(&welcome_ms, 50.0), "welcome_ms_max": percentile(&welcome_ms, 100.0),
    }));
    tokio::time::sleep(args.idle).await;
    emit(serde_json::json!({"event": "idle_end"}));

    let opts = ConnectOpts {
        token: args.client_token.clone().or_else(|| args.token.clone()),
        ..Default::default()
    };
    let channel = endpoint(&args.server, &opts)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut control = ControlPlaneClient::with_interceptor(
        channel,
        Bearer::new(opts.token.as_deref()).map_err(|e| e.to_string())?,
    );
    let run_id = control
        .submit(SubmitRequest {
            params: args.params,
            chunk_size: Some(args.chunk_size),
            kernel: "placeholder".into(),
            args: [("work_ms".to_string(), args.work_ms.to_string())]
                .into_iter()
                .collect(),
            name: "loadgen".into(),
            ..Default::default()
        })
        .await
        .map_err(|s| format!("submit: {}", s.message()))?
        .into_inner()
        .run_id;
    let mut watches = Vec::new();
    for _ in 0..args.watchers {
        // Each watcher on its own connection, as separate users would be.
        let channel = endpoint(&args.server, &opts)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let c = ControlPlaneClient::with_interceptor(
            channel,
            Bearer::new(opts.token.as_deref()).map_err(|e| e.to_string())?,
        );
        watches.push(tokio::spawn(watcher(c, run_id.clone())));
    }
    let mut delays = Vec::new();
    for w in watches {
        delays.extend(w.await.map_err(|e| e.to_string())??);
    }
    delays.sort_by(f64::total_cmp);
    stop.cancel();
    for h in handles {
        let _ = h.await;
    }
    emit(serde_json::json!({
        "event": "done", "run_id": run_id, "samples": delays.len(),
        "latency_ms_p50": percentile(&delays, 50.0), "latency_ms_p90": percentile(&delays, 90.0),
        "latency_ms_p99": percentile(&delays, 99.0), "latency_ms_max": percentile(&delays, 100.0),
    }));
    Ok(())
}
