//! `ttg-agent` binary: parse flags, run until SIGTERM/SIGINT, drain, exit 0.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use ttg_agent::{Config, Exit};

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(msg) = config.validate() {
        eprintln!("ttg-agent: {msg}");
        std::process::exit(64);
    }
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
