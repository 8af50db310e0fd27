//! `ttgctl results RUN -o csv|json`: stream every value in parameter order,
//! without holding the run in memory. A run that is not SUCCEEDED has its
//! stored values written all the same, but the command says on stderr how
//! many are missing and exits 1, unless `--partial`.

use std::io::{BufWriter, Write};

use ttg_proto::v1::{GetResultsRequest, RunState};

use crate::client::{self, CliError, CliResult, EXIT_FAILED, EXIT_OK};
use crate::output::state_name;

/// `ttgctl results`'s flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run id.
    pub run: String,
    /// Write to this file instead of stdout.
    #[arg(long)]
    pub file: Option<String>,
    /// Exit 0 even if the run did not succeed (its values so far are written either way; without this a run that is not SUCCEEDED exits 1 and says on stderr how many values are missing).
    #[arg(long)]
    pub partial: bool,
}

/// Export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultsFormat {
    /// `param,value` lines with a header.
    Csv,
    /// A JSON array of `{"param": p, "value": v}`.
    Json,
}

/// Write the run's results to `path` (or stdout).
pub async fn results(
    server: &str,
    run_id: &str,
    format: ResultsFormat,
    path: Option<&str>,
    partial: bool,
) -> CliResult<i32> {
    let mut c = client::control(server).await?;
    // The state before reading: a run that succeeds meanwhile was complete
    // when read, and one still running is reported as such.
    let st = client::run_status(&mut c, run_id).await?;
    let mut stream = c
        .get_results(GetResultsRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    let sink: Box<dyn Write> = match path {
        Some(p) => Box::new(
            std::fs::File::create(p)
                .map_err(|e| CliError::usage(format!("cannot write {p}: {e}")))?,
        ),
        None => Box::new(std::io::stdout().lock()),
    };
    let mut out = BufWriter::with_capacity(1 << 16, sink);
    let mut first = true;
    let mut written = 0u64;
    match format {
        ResultsFormat::Csv => writeln!(out, "param,value")?,
        ResultsFormat::Json => write!(out, "[")?,
    }
    while let Some(chunk) = stream.message().await? {
        for (i, v) in chunk.values.iter().enumerate() {
            let p = chunk.start + i as u64;
            written += 1;
            match format {
                ResultsFormat::Csv => writeln!(out, "{p},{v}")?,
                ResultsFormat::Json => {
                    write!(
                        out,
                        "{}{{\"param\":{p},\"value\":{v}}}",
                        if first { "" } else { "," }
                    )?;
                    first = false;
                }
            }
        }
    }
    if format == ResultsFormat::Json {
        writeln!(out, "]")?;
    }
    out.flush()?;
    if st.state == RunState::Succeeded as i32 {
        return Ok(EXIT_OK);
    }
    let params = st.spec.as_ref().map(|s| s.params).unwrap_or(0);
    let missing = params.saturating_sub(written);
    eprintln!(
        "run {run_id} is {}: wrote {written} of {params} values, {missing} missing{}",
        state_name(st.state),
        if partial {
            ""
        } else {
            " (pass --partial to accept an incomplete export with exit 0)"
        }
    );
    Ok(if partial { EXIT_OK } else { EXIT_FAILED })
}
