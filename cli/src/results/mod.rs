//! `ttgctl results RUN -o csv|json|jsonl|parquet`: every point of a run in
//! index order — its index, its named values, then its outputs — streamed
//! with bounded memory; or, with `--sort OUTPUT --limit K`, the K best
//! points by one output (the server's Best, as `ttgctl best`). A run
//! that is not SUCCEEDED has its stored values written all the same, but
//! the command says on stderr how many are missing and exits 1, unless
//! `--partial`.

use std::io::{BufWriter, Write};

use ttg_proto::space::{Space, Sweep, Value};
use ttg_proto::v1::{BestRequest, GetResultsRequest, RunState};

use crate::client::{self, CliError, CliResult, EXIT_FAILED, EXIT_OK};
use crate::output::state_name;
use crate::sweep::json_value;

/// Most rows `--sort` may ask for (the server's Best limit).
pub const MAX_SORTED: u64 = 10_000;

/// `ttgctl results`'s flags.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Run id, a unique prefix of one, or `latest` (also `-`).
    pub run: String,
    /// Write to this file instead of stdout (required for -o parquet).
    #[arg(long)]
    pub file: Option<String>,
    /// Exit 0 even if the run did not succeed (its values so far are written either way; without this a run that is not SUCCEEDED exits 1 and says on stderr how many values are missing).
    #[arg(long)]
    pub partial: bool,
    /// Rows sorted by this output, smallest first (needs --limit; with --desc largest first).
    #[arg(long, value_name = "OUTPUT", requires = "limit")]
    pub sort: Option<String>,
    /// With --sort: largest first.
    #[arg(long, requires = "sort")]
    pub desc: bool,
    /// At most this many rows (with --sort: 1..=10000, the best ones).
    #[arg(long, value_name = "K")]
    pub limit: Option<u64>,
}

/// Export format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResultsFormat {
    /// A header line, then one line per point.
    Csv,
    /// One JSON array of objects.
    Json,
    /// One JSON object per line.
    Jsonl,
    /// An Apache Parquet file (--file).
    Parquet,
}

/// Column names and how to make rows: the index column is `param` for a
/// `--params` run (as before named spaces), `index` otherwise.
pub struct Columns {
    /// Name of the first column.
    pub index: &'static str,
    /// The space, when named (its axes are columns).
    pub space: Option<Space>,
    /// Output names.
    pub outputs: Vec<String>,
}

impl Columns {
    fn of(sweep: Sweep) -> Self {
        Columns {
            index: if sweep.named { "index" } else { "param" },
            space: sweep.named.then_some(sweep.space),
            outputs: sweep.outputs,
        }
    }

    /// Every column name, in order.
    pub fn names(&self) -> Vec<String> {
        let mut v = vec![self.index.to_string()];
        if let Some(s) = &self.space {
            v.extend(s.names().into_iter().map(String::from));
        }
        v.extend(self.outputs.iter().cloned());
        v
    }
}

/// Where rows go.
trait Sink {
    fn row(&mut self, index: u64, coords: &[Value], outputs: &[f64]) -> CliResult<()>;
    fn finish(self: Box<Self>) -> CliResult<()>;
}

struct Text {
    out: BufWriter<Box<dyn Write>>,
    format: ResultsFormat,
    names: Vec<String>,
    first: bool,
}

impl Text {
    fn new(sink: Box<dyn Write>, format: ResultsFormat, names: Vec<String>) -> CliResult<Self> {
        let mut out = BufWriter::with_capacity(1 << 16, sink);
        match format {
            ResultsFormat::Csv => writeln!(out, "{}", names.join(","))?,
            ResultsFormat::Json => write!(out, "[")?,
            _ => {}
        }
        Ok(Text {
            out,
            format,
            names,
            first: true,
        })
    }
}

/// The Parquet sink: [`ttg_proto::export::ParquetRows`] on a file.
struct Parquet(ttg_proto::export::ParquetRows<std::fs::File>);

fn parquet_err(e: ttg_proto::export::ParquetError) -> CliError {
    CliError::usage(format!("writing Parquet: {e}"))
}

impl Sink for Parquet {
    fn row(&mut self, index: u64, coords: &[Value], outputs: &[f64]) -> CliResult<()> {
        self.0.row(index, coords, outputs).map_err(parquet_err)
    }

    fn finish(self: Box<Self>) -> CliResult<()> {
        self.0.finish().map_err(parquet_err)
    }
}

impl Sink for Text {
    fn row(&mut self, index: u64, coords: &[Value], outputs: &[f64]) -> CliResult<()> {
        if self.format == ResultsFormat::Csv {
            let mut line = String::new();
            ttg_proto::export::csv_line(&mut line, index, coords, outputs);
            self.out.write_all(line.as_bytes())?;
            return Ok(());
        }
        let mut m = serde_json::Map::with_capacity(self.names.len());
        m.insert(self.names[0].clone(), serde_json::json!(index));
        let (axes, outs) = self.names[1..].split_at(coords.len().min(self.names.len() - 1));
        for (n, c) in axes.iter().zip(coords) {
            m.insert(n.clone(), json_value(c));
        }
        for (n, o) in outs.iter().zip(outputs) {
            m.insert(n.clone(), serde_json::json!(o));
        }
        let line = serde_json::Value::Object(m);
        match self.format {
            ResultsFormat::Json => {
                write!(self.out, "{}{line}", if self.first { "" } else { "," })?;
            }
            _ => writeln!(self.out, "{line}")?,
        }
        self.first = false;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> CliResult<()> {
        if self.format == ResultsFormat::Json {
            writeln!(self.out, "]")?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// Write the run's results to `path` (or stdout).
pub async fn results(server: &str, a: &Args, format: ResultsFormat) -> CliResult<i32> {
    let run_id = a.run.as_str();
    if format == ResultsFormat::Parquet && a.file.is_none() {
        return Err(CliError::usage(
            "-o parquet writes a file: give --file out.parquet",
        ));
    }
    if let Some(k) = a.limit.filter(|_| a.sort.is_some()) {
        if !(1..=MAX_SORTED).contains(&k) {
            return Err(CliError::usage(format!(
                "--limit with --sort must be in 1..={MAX_SORTED}, got {k}"
            )));
        }
    }
    let mut c = client::control(server).await?;
    // The state before reading: a run that succeeds meanwhile was complete
    // when read, and one still running is reported as such.
    let st = client::run_status(&mut c, run_id).await?;
    let spec = st.spec.clone().unwrap_or_default();
    let sweep = Sweep::of(&spec).map_err(|e| CliError::usage(e.to_string()))?;
    let cols = Columns::of(sweep.clone());
    let file: Option<std::fs::File> = match &a.file {
        Some(p) => Some(
            std::fs::File::create(p)
                .map_err(|e| CliError::usage(format!("cannot write {p}: {e}")))?,
        ),
        None => None,
    };
    let mut sink: Box<dyn Sink> = match (format, file) {
        (ResultsFormat::Parquet, Some(f)) => Box::new(Parquet(
            ttg_proto::export::ParquetRows::new(f, &sweep).map_err(parquet_err)?,
        )),
        (_, f) => {
            let w: Box<dyn Write> = match f {
                Some(f) => Box::new(f),
                None => Box::new(std::io::stdout().lock()),
            };
            Box::new(Text::new(w, format, cols.names())?)
        }
    };
    let limit = a.limit.unwrap_or(u64::MAX);
    let mut written = 0u64;
    let coords_of = |i: u64| cols.space.as_ref().map(|s| s.point(i)).unwrap_or_default();
    if let Some(by) = &a.sort {
        let best = c
            .best(BestRequest {
                run_id: run_id.to_string(),
                output: by.clone(),
                max: a.desc,
                k: limit as u32,
            })
            .await?
            .into_inner();
        for p in &best.points {
            sink.row(p.index, &coords_of(p.index), &p.outputs)?;
        }
        sink.finish()?;
        return Ok(EXIT_OK);
    }
    let mut stream = c
        .get_results(GetResultsRequest {
            run_id: run_id.to_string(),
        })
        .await?
        .into_inner();
    let k = cols.outputs.len().max(1);
    let mut outs = vec![0.0; k];
    'chunks: while let Some(chunk) = stream.message().await? {
        let n = chunk.values.len() / k;
        for i in 0..n {
            if written >= limit {
                break 'chunks;
            }
            for (o, v) in outs.iter_mut().enumerate() {
                *v = chunk.values[o * n + i];
            }
            let index = chunk.start + i as u64;
            sink.row(index, &coords_of(index), &outs)?;
            written += 1;
        }
    }
    sink.finish()?;
    if st.state == RunState::Succeeded as i32 || a.limit.is_some_and(|l| written >= l) {
        return Ok(EXIT_OK);
    }
    let params = spec.params;
    let missing = params.saturating_sub(written);
    eprintln!(
        "run {run_id} is {}: wrote {written} of {params} values, {missing} missing{}",
        state_name(st.state),
        if a.partial {
            ""
        } else {
            " (pass --partial to accept an incomplete export with exit 0)"
        }
    );
    Ok(if a.partial { EXIT_OK } else { EXIT_FAILED })
}
