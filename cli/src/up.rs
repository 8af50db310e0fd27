//! `ttgctl up`: a local cluster in the foreground until Ctrl-C, SIGTERM, or
//! the exit of whoever started it.

use std::io::Write;
use std::time::Duration;

use crate::client::{CliError, CliResult, EXIT_OK};
use crate::cluster::{Cluster, ClusterOpts};
use crate::sys;

/// Print a line; a closed stdout must not stop (or panic) the cluster, which
/// still has to be torn down.
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Run the cluster until told to stop.
pub async fn up(opts: ClusterOpts) -> CliResult<i32> {
    if opts.agents == 0 || opts.agents > 256 {
        return Err(CliError::usage(format!(
            "--agents must be in 1..=256, got {}",
            opts.agents
        )));
    }
    // Our parent's exit (a closed terminal, a killed script) stops us too.
    sys::die_with_parent(libc::SIGTERM);
    let mut cluster = Cluster::start(opts.clone()).await?;
    // Leave the client token where ttgctl looks by default.
    let saved = crate::client::token_file().filter(|f| {
        f.parent().map(std::fs::create_dir_all).is_some()
            && crate::cluster::write_private(f, &format!("{}\n", cluster.client_token)).is_ok()
    });
    let default = opts.listen.to_string() == "127.0.0.1:50051";
    say!("TTG local cluster is up");
    say!(
        "  server  {}{}",
        cluster.server_url,
        if default {
            ""
        } else {
            "   (export TTG_SERVER to use it)"
        }
    );
    say!(
        "  redis   {}{}",
        ttg_proto::redis_conn::redact_url(&cluster.redis_url),
        if opts.redis_url.is_none() {
            "   (private, removed on exit)"
        } else {
            ""
        }
    );
    say!(
        "  agents  {} × concurrency {}",
        opts.agents,
        opts.concurrency
            .map(|c| c.to_string())
            .unwrap_or_else(|| "CPUs".into())
    );
    say!("  logs    {}/*.log", cluster.dir.display());
    for (name, addr) in &cluster.metrics {
        say!("  metrics {name:<8} http://{addr}/metrics");
    }
    match &saved {
        Some(f) => say!(
            "  token   in {} (ttgctl uses it; other clients: TTG_TOKEN=$(cat {}))",
            f.display(),
            f.display()
        ),
        None => say!("  token   export TTG_TOKEN={}", cluster.client_token),
    }
    say!("submit from another terminal:  ttgctl submit --params 10000 --watch");
    if opts.allow_exec {
        say!("your own code (agents allow exec): ttgctl submit --params 10000 --kernel exec --arg mode=worker --arg program=$PWD/model.py --watch");
        say!("  a Python model is one decorated function with the ttg library: pip install ./python (docs/kernels.md)");
    }
    say!("Ctrl-C stops everything.");

    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let failure = loop {
        tokio::select! {
            _ = term.recv() => break None,
            _ = int.recv() => break None,
            _ = check.tick() => if let Some(what) = cluster.exited() { break Some(what) },
        }
    };
    say!("stopping: draining agents, then server and redis…");
    cluster.stop().await;
    if let Some(f) = saved {
        // Only our own token: another `up` may have replaced it since.
        if std::fs::read_to_string(&f).is_ok_and(|t| t.trim() == cluster.client_token) {
            let _ = std::fs::remove_file(f);
        }
    }
    match failure {
        None => Ok(EXIT_OK),
        Some(what) => Err(CliError::failed(format!("{what}; cluster stopped"))),
    }
}
