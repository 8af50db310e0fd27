//! `ttgctl demo`: a local cluster, a placeholder run watched to the end, and
//! the sum checked against the kernel's exact expected value. Exit 0 only if
//! it matches.

use crate::client::{CliError, CliResult, EXIT_FAILED, EXIT_OK};
use crate::cluster::{free_port, Cluster, ClusterOpts};
use crate::output::{thousands, Format};
use crate::submit::{self, SubmitOpts};
use crate::watch;

/// Print a line, ignoring a closed stdout: the cluster must still be torn down.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Demo options.
pub struct DemoOpts {
    /// Parameters.
    pub params: u64,
    /// Agents.
    pub agents: u32,
    /// Concurrency per agent.
    pub concurrency: u32,
    /// Simulated work per parameter, ms.
    pub work_ms: u64,
    /// Use this Redis instead of a private one.
    pub redis_url: Option<String>,
}

/// Run the demo; returns the exit code.
pub async fn demo(o: DemoOpts) -> CliResult<i32> {
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
        listen,
        prefix: format!("ttg-demo-{}:", std::process::id()),
    })
    .await?;
    let result = run(&cluster, &o).await;
    cluster.stop().await;
    result
}

async fn run(cluster: &Cluster, o: &DemoOpts) -> CliResult<i32> {
    let opts = SubmitOpts {
        params: o.params,
        chunk_size: None,
        kernel: "placeholder".into(),
        args: vec![format!("work_ms={}", o.work_ms)],
        max_attempts: None,
        name: "demo".into(),
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
    let out = watch::watch(&cluster.server_url, &resp.run_id, "", Format::Text).await?;
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
