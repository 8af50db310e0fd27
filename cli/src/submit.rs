//! `ttgctl submit`: validate locally what can be, send Submit, optionally watch.

use std::collections::HashMap;

use ttg_proto::v1::{SubmitRequest, SubmitResponse};

use crate::client::{self, CliError, CliResult, EXIT_OK};
use crate::output::Out;
use crate::sweep::{self, SweepSpec};
use crate::watch;

/// `ttgctl submit`'s flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of parameters, 1..=10^10: one integer axis `p` = 0..N-1 (or give a space: --axis / --space).
    #[arg(long, required_unless_present_any = ["axis", "space"], conflicts_with_all = ["axis", "space"])]
    pub params: Option<u64>,
    /// An axis of the space, repeatable, slowest first: NAME=v1,v2,… | NAME=range:START:STOP[:STEP] | NAME=linspace:START:STOP:N | NAME=logspace:START:STOP:N; with --sample also uniform:LOW:HIGH, loguniform:LOW:HIGH, randint:LOW:HIGH (HIGH excluded). The grid is their product, last axis fastest.
    #[arg(long = "axis", value_name = "NAME=SPEC", conflicts_with = "space")]
    pub axis: Vec<String>,
    /// Every point K times, with an extra axis `rep` = 0..K-1 (seeds for noisy models).
    #[arg(long, value_name = "K")]
    pub repeat: Option<u64>,
    /// Random search: draw N points from the axes instead of the grid (point i depends only on the space, the seed and i).
    #[arg(long, value_name = "N")]
    pub sample: Option<u64>,
    /// Seed of --sample [default: 0].
    #[arg(long, value_name = "S")]
    pub seed: Option<u64>,
    /// The space (and outputs) as a YAML or JSON file: `axes: {lr: "logspace:1e-4:1e-1:4", depth: [2, 4]}`, `repeat`, `sample`, `seed`, `outputs` (docs/sweeps.md).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["repeat", "sample", "seed"])]
    pub space: Option<std::path::PathBuf>,
    /// The run's named outputs, comma-separated: the kernel returns one number per output per point [default: one named `value`].
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub outputs: Vec<String>,
    /// Validate with the server and print the number of points and the first few, without submitting.
    #[arg(long)]
    pub dry_run: bool,
    /// Parameters per chunk, 1..=10^6 [default: 100].
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// Kernel (`ttgctl kernels` lists what the agents offer).
    #[arg(long, default_value = "placeholder")]
    pub kernel: String,
    /// Kernel argument key=value, repeatable (e.g. --arg work_ms=1).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub args: Vec<String>,
    /// Attempts per chunk before dead-lettering, 1..=100 [default: 3].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Name of the run.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// Keep the run's data this long after it ends, e.g. 30d or 12h [default: the server's --run-retention, 7d].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: Option<std::time::Duration>,
    /// Stop the run as FAILED once this many chunk attempts in a row fail with the same first line of error, 0..=100000 (0: never) [default: 10].
    #[arg(long, value_name = "N")]
    pub fail_fast: Option<u32>,
    /// Scheduling class: high runs take every free agent slot before normal ones, normal before low (every 20th chunk handed out still goes to the lowest class with work, so none starves; docs/scheduling.md).
    #[arg(long, value_name = "CLASS", value_parser = ["high", "normal", "low"], default_value = "normal")]
    pub priority: String,
    /// Most chunks this run may hold at once across all agents (claimed, not yet completed), 1..=1000000; the other slots stay free for other runs [default: no cap].
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_in_flight: Option<u32>,
    /// Fair-share weight within the run's class, 1..=100: a run gets agent time in proportion to its weight (the run with the least agent time used per unit of weight is served first) [default: 1].
    #[arg(long, value_name = "W", value_parser = clap::value_parser!(u32).range(1..=100))]
    pub weight: Option<u32>,
    /// Watch the run to its end after submitting.
    #[arg(long)]
    pub watch: bool,
}

/// Parse `key=value` pairs.
pub fn parse_args(raw: &[String]) -> CliResult<HashMap<String, String>> {
    let mut out = HashMap::new();
    for a in raw {
        let Some((k, v)) = a.split_once('=') else {
            return Err(CliError::usage(format!(
                "--arg expects key=value, got {a:?}"
            )));
        };
        if k.is_empty() {
            return Err(CliError::usage(format!("--arg {a:?} has an empty key")));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(CliError::usage(format!("--arg {k} given twice")));
        }
    }
    Ok(out)
}

/// The space and outputs the flags give (a `--space` file's outputs are
/// used unless `--outputs` is given).
fn sweep_of(o: &Args) -> CliResult<SweepSpec> {
    let mut s = match &o.space {
        Some(path) => sweep::from_file(path)?,
        None => SweepSpec {
            space: sweep::from_flags(&o.axis, o.repeat, o.sample, o.seed)?,
            outputs: Vec::new(),
        },
    };
    if !o.outputs.is_empty() {
        s.outputs = o.outputs.clone();
    }
    if let Some(space) = &s.space {
        sweep::check(space, u64::MAX)?;
    }
    if !s.outputs.is_empty() {
        ttg_proto::space::validate_outputs(&s.outputs)
            .map_err(|e| CliError::usage(format!("--outputs: {}", e.message)))?;
        let space = s
            .space
            .clone()
            .unwrap_or_else(|| ttg_proto::space::Space::params(o.params.unwrap_or(1)));
        ttg_proto::space::check_output_names(&space, &s.outputs)
            .map_err(|e| CliError::usage(format!("--outputs: {}", e.message)))?;
    }
    Ok(s)
}

/// Build the request (shared with `demo`).
pub fn request(o: &Args) -> CliResult<SubmitRequest> {
    let sweep = sweep_of(o)?;
    Ok(SubmitRequest {
        params: o.params.unwrap_or(0),
        space: sweep.space.as_ref().map(|s| s.to_wire()),
        outputs: sweep.outputs,
        dry_run: o.dry_run,
        chunk_size: o.chunk_size,
        kernel: o.kernel.clone(),
        args: parse_args(&o.args)?,
        max_attempts: o.max_attempts,
        name: o.name.clone(),
        retention_s: match o.retention {
            None => None,
            Some(d) if d.as_secs() == 0 || d.subsec_nanos() != 0 => {
                return Err(CliError::usage(format!(
                    "--retention must be a whole number of seconds, at least 1s, got {}",
                    humantime::format_duration(d)
                )))
            }
            Some(d) => Some(d.as_secs()),
        },
        fail_fast: o.fail_fast,
        priority: ttg_proto::sched::parse_priority(&o.priority).unwrap_or_default() as i32,
        max_in_flight: o.max_in_flight.unwrap_or(0),
        weight: o.weight.unwrap_or(0),
    })
}

/// Submit, print the run id, and watch if asked. Returns the exit code.
pub async fn submit(server: &str, o: Args, out: Out) -> CliResult<i32> {
    let req = request(&o)?;
    let mut client = client::control(server).await?;
    let resp = client.submit(req.clone()).await?.into_inner();
    if o.dry_run {
        return dry_run(&req, &resp, out);
    }
    if out.quiet {
        println!("{}", resp.run_id);
    } else if !o.watch || !out.structured() {
        let json = serde_json::json!({"run_id": resp.run_id, "chunks": resp.chunks});
        if !out.value(&json) {
            println!("run {} submitted: {} chunks", resp.run_id, resp.chunks);
        }
    }
    // Nobody to take it: say so now, not after a silent wait.
    if let Some(why) = no_taker(&mut client, &req.kernel).await {
        eprintln!("ttgctl: warning: {why}; the run waits until one connects");
    }
    if !o.watch {
        return Ok(EXIT_OK);
    }
    Ok(watch::watch(server, &resp.run_id, "", out.format)
        .await?
        .exit)
}

/// Why no live agent can take a run of `kernel`, if none can.
async fn no_taker(c: &mut client::Control, kernel: &str) -> Option<String> {
    let kernel = if kernel.is_empty() {
        "placeholder"
    } else {
        kernel
    };
    let agents = c
        .list_agents(ttg_proto::v1::ListAgentsRequest {})
        .await
        .ok()?
        .into_inner()
        .agents;
    if agents.iter().any(|a| a.kernels.iter().any(|k| k == kernel)) {
        return None;
    }
    Some(if agents.is_empty() {
        "no agent is connected".to_string()
    } else {
        format!(
            "no connected agent offers kernel {kernel} (they offer: {}; exec needs agents started with --allow-exec)",
            {
                let mut ks: Vec<&str> = agents.iter().flat_map(|a| a.kernels.iter().map(String::as_str)).collect();
                ks.sort_unstable();
                ks.dedup();
                ks.join(", ")
            }
        )
    })
}

/// Points `--dry-run` shows.
const DRY_RUN_POINTS: u64 = 5;

/// Print what the server accepted: points, chunks, outputs, the first points.
fn dry_run(req: &SubmitRequest, resp: &SubmitResponse, out: Out) -> CliResult<i32> {
    let space = match &req.space {
        Some(w) => {
            ttg_proto::space::Space::from_wire(w).map_err(|e| CliError::usage(e.to_string()))?
        }
        None => ttg_proto::space::Space::params(resp.params),
    };
    let outputs = ttg_proto::space::validate_outputs(&req.outputs)
        .map_err(|e| CliError::usage(e.to_string()))?;
    let first: Vec<_> = (0..resp.params.min(DRY_RUN_POINTS))
        .map(|i| space.wire_point(i))
        .collect();
    let json = serde_json::json!({
        "points": resp.params,
        "chunks": resp.chunks,
        "axes": space.names(),
        "outputs": outputs,
        "first": first.iter().map(|p| sweep::point_json(p, &[])).collect::<Vec<_>>(),
    });
    if !out.value(&json) {
        {
            println!(
                "dry run: {} points in {} chunks; axes {}; outputs {} (nothing submitted)",
                resp.params,
                resp.chunks,
                space.names().join(", "),
                outputs.join(", ")
            );
            for p in &first {
                println!("  #{} {}", p.index, sweep::coords(&p.values));
            }
            if resp.params > DRY_RUN_POINTS {
                println!("  … {} more", resp.params - DRY_RUN_POINTS);
            }
        }
    }
    Ok(EXIT_OK)
}
