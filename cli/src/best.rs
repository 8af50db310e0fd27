//! `ttgctl best RUN --by OUTPUT [--max] [-n K]`: a run's best points,
//! exactly. The server reads only the chunks whose stored extremes can hold
//! them (see `server/src/store/best.rs`) — never the whole run into the
//! client.

use ttg_proto::v1::BestRequest;

use crate::client::{self, CliError, CliResult, EXIT_OK};
use crate::output::Out;
use crate::sweep;

/// `ttgctl best`'s flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run id, a unique prefix of one, or `latest` (also `-`).
    pub run: String,
    /// Output to rank by [default: the run's first output].
    #[arg(long, value_name = "OUTPUT")]
    pub by: Option<String>,
    /// Largest first (smallest first without it).
    #[arg(long)]
    pub max: bool,
    /// How many points, 1..=10000.
    #[arg(short = 'n', long = "top", value_name = "K", default_value_t = 10)]
    pub n: u32,
}

/// Print the best points.
pub async fn best(server: &str, a: &Args, out: Out) -> CliResult<i32> {
    if !(1..=crate::results::MAX_SORTED as u32).contains(&a.n) {
        return Err(CliError::usage(format!(
            "-n must be in 1..={}, got {}",
            crate::results::MAX_SORTED,
            a.n
        )));
    }
    let mut c = client::control(server).await?;
    let r = c
        .best(BestRequest {
            run_id: a.run.clone(),
            output: a.by.clone().unwrap_or_default(),
            max: a.max,
            k: a.n,
        })
        .await?
        .into_inner();
    let by =
        a.by.clone()
            .unwrap_or_else(|| r.outputs.first().cloned().unwrap_or_default());
    let json = serde_json::json!({
        "run_id": a.run,
        "by": by,
        "max": a.max,
        "chunks_read": r.chunks_read,
        "points": r.points.iter().map(|p| sweep::point_json(p, &r.outputs)).collect::<Vec<_>>(),
    });
    if !out.value(&json) {
        {
            if r.points.is_empty() {
                println!("no values yet");
                return Ok(EXIT_OK);
            }
            println!(
                "{} {} points of run {} by {by}:",
                if a.max { "largest" } else { "smallest" },
                r.points.len(),
                a.run
            );
            for (rank, p) in r.points.iter().enumerate() {
                let outs: Vec<String> = r
                    .outputs
                    .iter()
                    .zip(&p.outputs)
                    .map(|(n, v)| format!("{n}={v}"))
                    .collect();
                println!(
                    "{:>4}. #{} {}  →  {}",
                    rank + 1,
                    p.index,
                    sweep::coords(&p.values),
                    outs.join(" ")
                );
            }
        }
    }
    Ok(EXIT_OK)
}
