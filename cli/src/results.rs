//! `ttgctl results RUN -o csv|json`: stream every value in parameter order,
//! without holding the run in memory.

use std::io::{BufWriter, Write};

use ttg_proto::v1::GetResultsRequest;

use crate::client::{self, CliError, CliResult, EXIT_OK};

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
) -> CliResult<i32> {
    let mut c = client::control(server).await?;
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
    match format {
        ResultsFormat::Csv => writeln!(out, "param,value")?,
        ResultsFormat::Json => write!(out, "[")?,
    }
    while let Some(chunk) = stream.message().await? {
        for (i, v) in chunk.values.iter().enumerate() {
            let p = chunk.start + i as u64;
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
    Ok(EXIT_OK)
}
