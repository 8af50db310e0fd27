//! A run's points as a downloadable file — CSV or Parquet, the same
//! columns as `ttgctl results` ([`ttg_proto::export`]) — streamed in index
//! order in pieces on a bounded channel, so a download goes at the
//! reader's pace with bounded memory (a Parquet row group at most).

use std::io::Write;
use std::sync::Mutex;

use ttg_proto::export::{column_names, csv_line, ParquetRows};
use ttg_proto::space::{Sweep, Value as AxisValue};

use super::*;

/// Bytes gathered before a piece is sent.
const PIECE: usize = 64 << 10;

/// A file format the rows are written in.
pub enum FileFormat {
    /// A header line, then a line per point.
    Csv,
    /// Apache Parquet (one row group per 2^18 points).
    Parquet,
}

/// Where rows go; `take` hands over the bytes ready to send.
trait Rows: Send {
    fn row(&mut self, index: u64, coords: &[AxisValue], outputs: &[f64]) -> std::io::Result<()>;
    fn take(&mut self) -> Vec<u8>;
    fn finish(self: Box<Self>) -> std::io::Result<Vec<u8>>;
}

struct Csv(String);

impl Rows for Csv {
    fn row(&mut self, index: u64, coords: &[AxisValue], outputs: &[f64]) -> std::io::Result<()> {
        csv_line(&mut self.0, index, coords, outputs);
        Ok(())
    }
    fn take(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0).into_bytes()
    }
    fn finish(self: Box<Self>) -> std::io::Result<Vec<u8>> {
        Ok(self.0.into_bytes())
    }
}

/// The bytes the Parquet writer has written and nobody has sent yet.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .map_err(|_| std::io::Error::other("poisoned"))?
            .extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Shared {
    fn drain(&self) -> Vec<u8> {
        self.0
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

struct Parquet(ParquetRows<Shared>, Shared);

impl Rows for Parquet {
    fn row(&mut self, index: u64, coords: &[AxisValue], outputs: &[f64]) -> std::io::Result<()> {
        self.0
            .row(index, coords, outputs)
            .map_err(std::io::Error::other)
    }
    fn take(&mut self) -> Vec<u8> {
        self.1.drain()
    }
    fn finish(self: Box<Self>) -> std::io::Result<Vec<u8>> {
        let Parquet(rows, shared) = *self;
        rows.finish().map_err(std::io::Error::other)?;
        Ok(shared.drain())
    }
}

/// Pieces of a download.
pub type Pieces = mpsc::Receiver<std::result::Result<Vec<u8>, std::io::Error>>;

impl Store {
    /// Every stored point of the run in `format`, in pieces of about 64 KiB.
    pub fn export(
        self: &Arc<Self>,
        spec: &RunSpec,
        sweep: Sweep,
        format: FileFormat,
    ) -> Result<Pieces> {
        let rows: Box<dyn Rows> = match format {
            FileFormat::Csv => {
                let mut header = column_names(&sweep).join(",");
                header.push('\n');
                Box::new(Csv(header))
            }
            FileFormat::Parquet => {
                let shared = Shared::default();
                let rows = ParquetRows::new(shared.clone(), &sweep).map_err(|e| {
                    Error::Corrupt(ttg_proto::records::DecodeError::Field {
                        what: "run spec (as Parquet columns)",
                        detail: e.to_string(),
                    })
                })?;
                Box::new(Parquet(rows, shared))
            }
        };
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(self.clone().stream_rows(spec.clone(), sweep, rows, tx));
        Ok(rx)
    }

    async fn stream_rows(
        self: Arc<Self>,
        spec: RunSpec,
        sweep: Sweep,
        mut rows: Box<dyn Rows>,
        tx: mpsc::Sender<std::result::Result<Vec<u8>, std::io::Error>>,
    ) {
        let k = sweep.outputs.len().max(1);
        let mut ready: Vec<u8> = Vec::new();
        let mut failed: Option<std::io::Error> = None;
        let r = self
            .scan_results(&spec, 1, |_, start, values| {
                let n = values.len() / k;
                let mut outs = vec![0.0; k];
                let mut write = |i: u64, coords: &[AxisValue]| {
                    let j = (i - start) as usize;
                    for (q, o) in outs.iter_mut().enumerate() {
                        *o = values[q * n + j];
                    }
                    if let Err(e) = rows.row(i, coords, &outs) {
                        failed.get_or_insert(e);
                    }
                };
                if sweep.named {
                    sweep.space.walk(start, start + n as u64, &mut write);
                } else {
                    (start..start + n as u64).for_each(|i| write(i, &[]));
                }
                ready.extend(rows.take());
                let go_on = failed.is_none();
                let sent: std::pin::Pin<Box<dyn Future<Output = bool> + Send>> =
                    if ready.len() >= PIECE {
                        let (tx, piece) = (tx.clone(), std::mem::take(&mut ready));
                        Box::pin(async move { go_on && tx.send(Ok(piece)).await.is_ok() })
                    } else {
                        Box::pin(std::future::ready(go_on))
                    };
                sent
            })
            .await;
        let end = match (r, failed) {
            (Err(e), _) => Err(std::io::Error::other(e.to_string())),
            (Ok(()), Some(e)) => Err(e),
            (Ok(()), None) => rows.finish().map(|last| {
                ready.extend(last);
                std::mem::take(&mut ready)
            }),
        };
        match end {
            Ok(last) => {
                if !last.is_empty() {
                    let _ = tx.send(Ok(last)).await;
                }
            }
            Err(e) => {
                let _ = tx.send(Err(e)).await;
            }
        }
    }
}
