//! `ttg-agent` binary: parse flags, run until SIGTERM/SIGINT, drain, exit 0.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use ttg_agent::{Config, Exit};

fn main() {
    let config = Config::parse();
    if let Err(msg) = config.validate() {
        eprintln!("ttg-agent: {msg}");
        std::process::exit(64);
    }
    // Kernels compute on the blocking pool (collatz) or in other processes
    // (exec): the runtime only moves chunks, so it needs no more threads
    // than chunks at once. Fewer threads, fewer cross-thread wake-ups per
    // chunk: with short chunks, those dominate an agent's cost.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = (config.effective_concurrency() as usize).clamp(1, cpus);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ttg-agent: cannot start the async runtime: {e}");
            std::process::exit(71);
        }
    };
    // On a worker thread, not this one: the claim loop and the chunks it
    // starts then share threads instead of waking each other across them.
    if let Err(e) = runtime.block_on(async { tokio::spawn(agent(config)).await }) {
        eprintln!("ttg-agent: {e}");
        std::process::exit(70);
    }
}

async fn agent(config: Config) {
    let telemetry = ttg_proto::telemetry::init("ttg-agent", config.log_format, "info");
    if let Some(addr) = config.metrics_addr {
        if let Err(e) = ttg_proto::telemetry::serve_metrics(addr) {
            eprintln!("ttg-agent: {e}");
            std::process::exit(69);
        }
        ttg_agent::metrics_help::describe();
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(ttg_proto::runtime::signal_cancels(shutdown.clone()));
    let result = ttg_agent::run(config, shutdown).await;
    telemetry.shutdown().await;
    match result {
        Ok(Exit::Drained) => {}
        Ok(Exit::Abandoned) => std::process::exit(1),
        Err(e) => {
            eprintln!("ttg-agent: {e}");
            std::process::exit(64);
        }
    }
}
