//! Rows into an Apache Parquet file (the `parquet` crate's column writer):
//! the index and integer axes as INT64, number axes and outputs as DOUBLE,
//! text (or mixed) axes as UTF-8 strings; one row group per `ROWS` rows,
//! so memory stays bounded whatever the run's size.

use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;
use ttg_proto::space::{AxisKind, Space, Value};

use super::{Columns, Sink};
use crate::client::{CliError, CliResult};

/// Rows per row group (2 MB per numeric column buffered).
const ROWS: usize = 1 << 18;

/// How a column is stored.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Int,
    Double,
    Text,
}

/// The column kind of each of the space's axes (and `rep`).
fn axis_kinds(space: &Space) -> Vec<Kind> {
    let mut v: Vec<Kind> = space
        .axes
        .iter()
        .map(|a| match &a.kind {
            AxisKind::IntRange { .. } | AxisKind::RandInt { .. } => Kind::Int,
            AxisKind::List(vals) if vals.iter().all(|x| matches!(x, Value::Int(_))) => Kind::Int,
            AxisKind::List(vals) if vals.iter().all(|x| !matches!(x, Value::Text(_))) => {
                Kind::Double
            }
            AxisKind::List(_) => Kind::Text,
            _ => Kind::Double,
        })
        .collect();
    if space.repeat > 1 {
        v.push(Kind::Int);
    }
    v
}

/// One column's buffered values.
enum Col {
    Int(Vec<i64>),
    Double(Vec<f64>),
    Text(Vec<ByteArray>),
}

impl Col {
    fn new(k: Kind) -> Col {
        match k {
            Kind::Int => Col::Int(Vec::new()),
            Kind::Double => Col::Double(Vec::new()),
            Kind::Text => Col::Text(Vec::new()),
        }
    }

    fn push(&mut self, v: &Value) {
        match (self, v) {
            (Col::Int(c), Value::Int(i)) => c.push(*i),
            (Col::Int(c), other) => c.push(other.as_f64().unwrap_or(0.0) as i64),
            (Col::Double(c), other) => c.push(other.as_f64().unwrap_or(f64::NAN)),
            (Col::Text(c), other) => c.push(ByteArray::from(other.to_string().into_bytes())),
        }
    }
}

/// The Parquet sink.
pub struct Parquet {
    writer: SerializedFileWriter<std::fs::File>,
    index: Vec<i64>,
    axes: Vec<Col>,
    outputs: Vec<Vec<f64>>,
    kinds: Vec<Kind>,
}

fn err(e: parquet::errors::ParquetError) -> CliError {
    CliError::usage(format!("writing Parquet: {e}"))
}

impl Parquet {
    /// A Parquet file with `cols`' columns.
    pub fn new(file: std::fs::File, cols: &Columns) -> CliResult<Self> {
        let kinds = cols.space.as_ref().map(axis_kinds).unwrap_or_default();
        let names = cols.names();
        let mut fields = vec![format!("REQUIRED INT64 {};", names[0])];
        for (n, k) in names[1..].iter().zip(&kinds) {
            fields.push(match k {
                Kind::Int => format!("REQUIRED INT64 {n};"),
                Kind::Double => format!("REQUIRED DOUBLE {n};"),
                Kind::Text => format!("REQUIRED BYTE_ARRAY {n} (UTF8);"),
            });
        }
        for n in &cols.outputs {
            fields.push(format!("REQUIRED DOUBLE {n};"));
        }
        let schema = parse_message_type(&format!("message ttg_results {{ {} }}", fields.join(" ")))
            .map_err(err)?;
        let props = WriterProperties::builder().build();
        let writer =
            SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).map_err(err)?;
        Ok(Parquet {
            writer,
            index: Vec::new(),
            axes: kinds.iter().map(|k| Col::new(*k)).collect(),
            outputs: vec![Vec::new(); cols.outputs.len()],
            kinds,
        })
    }

    /// Write the buffered rows as one row group.
    fn flush(&mut self) -> CliResult<()> {
        if self.index.is_empty() {
            return Ok(());
        }
        let mut rg = self.writer.next_row_group().map_err(err)?;
        let mut cols: Vec<Col> = Vec::with_capacity(2 + self.axes.len() + self.outputs.len());
        cols.push(Col::Int(std::mem::take(&mut self.index)));
        for (c, k) in self.axes.iter_mut().zip(&self.kinds) {
            cols.push(std::mem::replace(c, Col::new(*k)));
        }
        for o in self.outputs.iter_mut() {
            cols.push(Col::Double(std::mem::take(o)));
        }
        for c in cols {
            let Some(mut w) = rg.next_column().map_err(err)? else {
                break;
            };
            match c {
                Col::Int(v) => w.typed::<Int64Type>().write_batch(&v, None, None),
                Col::Double(v) => w.typed::<DoubleType>().write_batch(&v, None, None),
                Col::Text(v) => w.typed::<ByteArrayType>().write_batch(&v, None, None),
            }
            .map_err(err)?;
            w.close().map_err(err)?;
        }
        rg.close().map_err(err)?;
        Ok(())
    }
}

impl Sink for Parquet {
    fn row(&mut self, index: u64, coords: &[Value], outputs: &[f64]) -> CliResult<()> {
        self.index.push(index as i64);
        for (c, v) in self.axes.iter_mut().zip(coords) {
            c.push(v);
        }
        for (c, v) in self.outputs.iter_mut().zip(outputs) {
            c.push(*v);
        }
        if self.index.len() >= ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> CliResult<()> {
        self.flush()?;
        self.writer.close().map_err(err)?;
        Ok(())
    }
}
