//! `ttgctl submit`: validate locally what can be, send Submit, optionally watch.

use std::collections::HashMap;

use ttg_proto::v1::SubmitRequest;

use crate::client::{self, CliError, CliResult, EXIT_OK};
use crate::output::Format;
use crate::watch;

/// `ttgctl submit`'s flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Number of parameters, 1..=10^10.
    #[arg(long)]
    pub params: u64,
    /// Parameters per chunk, 1..=10^6 (default 100).
    #[arg(long)]
    pub chunk_size: Option<u64>,
    /// Kernel (default placeholder).
    #[arg(long, default_value = "placeholder")]
    pub kernel: String,
    /// Kernel argument key=value, repeatable (e.g. --arg work_ms=1).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    pub args: Vec<String>,
    /// Attempts per chunk before dead-lettering, 1..=100 (default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Name of the run (default none).
    #[arg(long, default_value = "")]
    pub name: String,
    /// Keep the run's data this long after it ends, e.g. 30d or 12h (default: the server's --run-retention, 7d).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub retention: Option<std::time::Duration>,
    /// Stop the run as FAILED once this many chunk attempts in a row fail with the same first line of error, 0..=100000 (0: never; default 10).
    #[arg(long, value_name = "N")]
    pub fail_fast: Option<u32>,
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

/// Build the request (shared with `demo`).
pub fn request(o: &Args) -> CliResult<SubmitRequest> {
    Ok(SubmitRequest {
        params: o.params,
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
    })
}

/// Submit, print the run id, and watch if asked. Returns the exit code.
pub async fn submit(server: &str, o: Args, format: Format) -> CliResult<i32> {
    let req = request(&o)?;
    let mut client = client::control(server).await?;
    let resp = client.submit(req).await?.into_inner();
    match format {
        Format::Json if !o.watch => println!(
            "{}",
            serde_json::json!({"run_id": resp.run_id, "chunks": resp.chunks})
        ),
        Format::Json => {}
        Format::Text | Format::Csv => {
            println!("run {} submitted: {} chunks", resp.run_id, resp.chunks)
        }
    }
    if !o.watch {
        return Ok(EXIT_OK);
    }
    Ok(watch::watch(server, &resp.run_id, "", format).await?.exit)
}
