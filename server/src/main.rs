//! `ttg-server` binary: parse flags, validate them, bind, serve until SIGTERM/SIGINT.

use clap::Parser;
use tokio_util::sync::CancellationToken;
use ttg_server::Config;

#[tokio::main]
async fn main() {
    let config = Config::parse();
    if let Err(msg) = config.validate() {
        eprintln!("ttg-server: {msg}");
        std::process::exit(64);
    }
    let telemetry = ttg_proto::telemetry::init("ttg-server", config.log_format, "info");
    if let Some(addr) = config.metrics_addr {
        if let Err(e) = ttg_proto::telemetry::serve_metrics(addr) {
            eprintln!("ttg-server: {e}");
            std::process::exit(69);
        }
        ttg_server::metrics_help::describe();
    }
    let listener = match tokio::net::TcpListener::bind(config.listen).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ttg-server: cannot listen on {}: {e}", config.listen);
            std::process::exit(69);
        }
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(ttg_proto::runtime::signal_cancels(shutdown.clone()));
    let result = ttg_server::run(listener, config, shutdown).await;
    telemetry.shutdown().await;
    if let Err(e) = result {
        eprintln!("ttg-server: {e}");
        std::process::exit(1);
    }
}
