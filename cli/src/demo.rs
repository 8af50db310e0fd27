//! `ttgctl demo`: a local cluster, a placeholder run watched to the end, and
//! the sum checked against the kernel's exact expected value. Exit 0 only if
//! it matches.

use crate::client::{CliError, CliResult, EXIT_FAILED, EXIT_OK};
use crate::cluster::{free_port, Cluster, ClusterOpts};
use crate::output::{thousands, Format};
use crate::submit;
use crate::watch;

/// Print a line, ignoring a closed stdout: the cluster must still be torn down.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Poll the run; at `pct` % of chunks done, SIGKILL `pid`. Returns the kill
/// time (ms since epoch) and the progress it happened at.
async fn kill_at(server: &str, run_id: &str, pid: u32, pct: u32) -> Option<(i64, u64)> {
    let mut c = crate::client::control(server).await.ok()?;
    loop {
        let st = crate::client::run_status(&mut c, run_id).await.ok()?;
        let p = st.progress.unwrap_or_default();
        if p.chunks_total > 0 && (p.chunks_done * 100) >= p.chunks_total * pct as u64 {
            crate::sys::signal(pid, libc::SIGKILL);
            return Some((ttg_proto::now_ms(), p.chunks_done * 100 / p.chunks_total));
        }
        if ttg_proto::records::is_finished(ttg_proto::v1::RunState::try_from(st.state).ok()?) {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `ttgctl demo`'s flags.
#[derive(clap::Args, Debug)]
pub struct DemoOpts {
    /// Number of parameters, 1..=10^10.
    #[arg(long, default_value_t = 10_000)]
    pub params: u64,
    /// Number of agents, 1..=64.
    #[arg(long, default_value_t = 3)]
    pub agents: u32,
    /// Chunks each agent computes at once, 1..=1024.
    #[arg(long, default_value_t = 1)]
    pub concurrency: u32,
    /// Simulated work per parameter in ms (1: about 3.4 s for 10,000 over 3 agents).
    #[arg(long, default_value_t = 1)]
    pub work_ms: u64,
    /// Use this Redis instead of starting a private redis-server.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// SIGKILL one agent when this percentage of chunks is done (1..=99), show the reclaim.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=99))]
    pub kill_at: Option<u32>,
    /// Compute with this Python model instead of the built-in kernel: a program using the ttg library that computes the placeholder's values, such as examples/python/model.py (`make demo-python`). It runs in exec mode=worker, gets `--work-ms N`, and the agents allow exec.
    #[arg(long, value_name = "PROGRAM")]
    pub python: Option<std::path::PathBuf>,
}

/// Run the demo; returns the exit code.
pub async fn demo(o: DemoOpts) -> CliResult<i32> {
    // Everything checkable is checked before a cluster starts.
    if o.params == 0 || o.params > 10_000_000_000 {
        return Err(CliError::usage(format!(
            "--params must be in 1..=10000000000, got {}",
            o.params
        )));
    }
    if o.concurrency == 0 || o.concurrency > 1024 {
        return Err(CliError::usage(format!(
            "--concurrency must be in 1..=1024, got {}",
            o.concurrency
        )));
    }
    if o.agents == 0 || o.agents > 64 {
        return Err(CliError::usage(format!(
            "--agents must be in 1..=64, got {}",
            o.agents
        )));
    }
    let python = match &o.python {
        Some(p) => Some(
            p.canonicalize()
                .map_err(|e| CliError::usage(format!("--python {}: {e}", p.display())))?,
        ),
        None => None,
    };
    if o.kill_at.is_some() && o.agents < 2 {
        return Err(CliError::usage(
            "--kill-at needs --agents 2 or more: someone must finish the run",
        ));
    }
    let listen = format!("127.0.0.1:{}", free_port()?)
        .parse()
        .map_err(|e| CliError::failed(format!("{e}")))?;
    say!(
        "starting a local cluster: redis, server, {} agents × concurrency {}",
        o.agents,
        o.concurrency
    );
    let mut cluster = Cluster::start(ClusterOpts {
        agents: o.agents,
        concurrency: Some(o.concurrency),
        redis_url: o.redis_url.clone(),
        redis_cluster: None,
        data_dir: None,
        listen,
        prefix: format!("ttg-demo-{}:", std::process::id()),
        allow_exec: python.is_some(),
        metrics: false,
    })
    .await?;
    crate::client::set_connect_opts(ttg_proto::client::ConnectOpts {
        token: Some(cluster.client_token.clone()),
        ..Default::default()
    });
    let result = sweep(&cluster, &o, python.as_deref()).await;
    cluster.stop().await;
    result
}

async fn sweep(
    cluster: &Cluster,
    o: &DemoOpts,
    python: Option<&std::path::Path>,
) -> CliResult<i32> {
    let (kernel, args) = match python {
        Some(p) => (
            "exec",
            vec![
                format!("program={}", p.display()),
                "mode=worker".to_string(),
                format!("args=--work-ms {}", o.work_ms),
            ],
        ),
        None => ("placeholder", vec![format!("work_ms={}", o.work_ms)]),
    };
    if let Some(p) = python {
        say!("computing with {} (exec mode=worker)", p.display());
    }
    let opts = submit::Args {
        params: Some(o.params),
        axis: Vec::new(),
        repeat: None,
        sample: None,
        seed: None,
        space: None,
        outputs: Vec::new(),
        dry_run: false,
        chunk_size: None,
        kernel: kernel.into(),
        args,
        max_attempts: None,
        fail_fast: None,
        name: "demo".into(),
        retention: None,
        priority: "normal".into(),
        max_in_flight: None,
        weight: None,
        watch: false,
    };
    let mut client = crate::client::control(&cluster.server_url).await?;
    let resp = client.submit(submit::request(&opts)?).await?.into_inner();
    say!(
        "run {} submitted: {} params in {} chunks",
        resp.run_id,
        o.params,
        resp.chunks
    );
    // The victim is chosen now; a task kills it when progress reaches kill_at.
    let killer = o.kill_at.and_then(|pct| {
        let pid = cluster.agents.first().and_then(|a| a.id())?;
        let server = cluster.server_url.clone();
        let run_id = resp.run_id.clone();
        Some(tokio::spawn(async move {
            kill_at(&server, &run_id, pid, pct).await
        }))
    });
    let out = watch::watch(&cluster.server_url, &resp.run_id, "", Format::Text).await?;
    if let Some(k) = killer {
        match k.await {
            Ok(Some((kill_ms, pct))) => {
                say!(
                    "agent 1 (pid {}) was SIGKILLed at {pct}% of chunks done",
                    cluster.agents.first().and_then(|a| a.id()).unwrap_or(0)
                );
                if out.reclaims.is_empty() {
                    say!("it held no chunk at that instant: nothing to reclaim");
                }
                for r in &out.reclaims {
                    say!(
                        "  chunk {} back in the queue {} ms after the kill (server: {} ms after it saw the session drop)",
                        r.chunk,
                        (r.time_ms - kill_ms).max(0),
                        r.after_ms
                    );
                }
            }
            _ => say!(
                "the run ended before {}% progress: no agent was killed",
                o.kill_at.unwrap_or(0)
            ),
        }
    }
    let expected = ttg_proto::kernels::placeholder_expected_sum_hundredths(o.params);
    let got = (out.sum * 100.0).round() as u128;
    if out.exit == EXIT_OK && got == expected && out.count == o.params {
        say!(
            "sum {} matches the expected {}",
            thousands(out.sum, 2),
            thousands(expected as f64 / 100.0, 2)
        );
        Ok(EXIT_OK)
    } else {
        say!(
            "MISMATCH: sum {} over {} values, expected {} over {}",
            thousands(out.sum, 2),
            out.count,
            thousands(expected as f64 / 100.0, 2),
            o.params
        );
        Ok(EXIT_FAILED)
    }
}
