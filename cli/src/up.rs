//! `ttgctl up`: a local cluster in the foreground until Ctrl-C, SIGTERM, or
//! the exit of whoever started it. It checks its address is free before
//! anything else, adds a context named after that address (and makes it
//! current) instead of touching any other cluster's files, takes the
//! context away again on exit, and keeps its logs when something failed.

use std::io::Write;
use std::time::Duration;

use crate::client::{CliError, CliResult, EXIT_OK};
use crate::cluster::{write_private, Cluster, ClusterOpts};
use crate::context::UpContext;
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
    opts.check()?;
    // Our parent's exit (a closed terminal, a killed script) stops us too.
    sys::die_with_parent(libc::SIGTERM);
    let mut cluster = Cluster::start(opts.clone()).await?;
    let name = opts.listen.to_string();
    let token_file = cluster.dir.join("client.token");
    let context = match write_private(&token_file, &format!("{}\n", cluster.client_token))
        .and_then(|()| UpContext::add(&name, &cluster.server_url, &token_file))
    {
        Ok(c) => c,
        Err(e) => {
            cluster.stop().await;
            return Err(e);
        }
    };
    banner(&opts, &cluster, &context, &token_file);

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
    if let Err(e) = context.remove() {
        eprintln!("ttgctl: could not remove context {}: {e}", context.name);
    }
    match failure {
        None => {
            cluster.stop().await;
            Ok(EXIT_OK)
        }
        Some(what) => {
            let tail = cluster.tail("server");
            cluster.stop_keeping_logs().await;
            Err(CliError::failed(format!(
                "{what}; cluster stopped. Logs kept in {}; the server's last lines:\n{tail}",
                cluster.dir.display()
            )))
        }
    }
}

fn banner(
    opts: &ClusterOpts,
    cluster: &Cluster,
    context: &UpContext,
    token_file: &std::path::Path,
) {
    let default = opts.listen.to_string() == "127.0.0.1:50051";
    say!("TTG local cluster is up");
    say!("  server  {}", cluster.server_url);
    say!(
        "  context {}   (current; removed when this stops)",
        context.name
    );
    let redis_mode = match (&opts.redis_url, &opts.data_dir) {
        (Some(_), _) => String::new(),
        (None, _) if opts.redis_cluster.is_some() => {
            "\n          (private, in a temporary folder: runs are gone on exit; runs spread over one slot group per primary; SIGKILL a primary and its replica takes over in ~2 s)"
                .to_string()
        }
        (None, Some(d)) => format!(
            "   (private; runs kept in {}: `ttgctl up --data-dir {}` finds them again)",
            d.display(),
            d.display()
        ),
        (None, None) => {
            "   (private, in a temporary folder: runs are gone on exit; --data-dir DIR keeps them)"
                .to_string()
        }
    };
    say!(
        "  redis   {}{redis_mode}",
        ttg_proto::redis_conn::redact_url(&cluster.redis_url)
    );
    say!(
        "  agents  {} × concurrency {}",
        opts.agents,
        opts.concurrency_now()
    );
    say!(
        "  dashboard {}   (sign in with the token in {})",
        cluster.dashboard_url,
        token_file.display()
    );
    say!("  logs    {}/*.log", cluster.dir.display());
    for (name, addr) in &cluster.metrics {
        say!("  metrics {name:<8} http://{addr}/metrics");
    }
    say!(
        "  token   in {} (other clients: TTG_SERVER={} TTG_TOKEN_FILE={})",
        token_file.display(),
        cluster.server_url,
        token_file.display()
    );
    let ctl = if default {
        "ttgctl".to_string()
    } else {
        format!("ttgctl --context {}", context.name)
    };
    say!("submit from another terminal:  {ctl} submit --params 10000 --watch");
    if opts.allow_exec {
        say!("your own code (agents allow exec): {ctl} submit --params 10000 --kernel exec --arg mode=worker --arg program=$PWD/model.py --watch");
        say!("  a Python model is one decorated function with the ttg library: pip install ./python (docs/kernels.md)");
    }
    say!("Ctrl-C stops everything.");
}
