//! Rows into an Apache Parquet file (the `parquet` crate's column writer),
//! to any `Write` (a file for `ttgctl results`, an HTTP body for the
//! dashboard's download): the index and integer axes as INT64, number axes
//! and outputs as DOUBLE, text (or mixed) axes as UTF-8 strings; one row
//! group per `ROWS` rows, so memory stays bounded whatever the run's size.
//! Behind the `parquet` feature: agents do not link it.

use std::io::Write;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType, DoubleType, Int64Type};
pub use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::parser::parse_message_type;

use crate::space::{AxisKind, Space, Sweep, Value};

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

/// A run's points as a Parquet file.
pub struct ParquetRows<W: Write + Send> {
    writer: SerializedFileWriter<W>,
    index: Vec<i64>,
    axes: Vec<Col>,
    outputs: Vec<Vec<f64>>,
    kinds: Vec<Kind>,
}

impl<W: Write + Send> ParquetRows<W> {
    /// A Parquet file of `sweep`'s columns ([`super::column_names`]) on `out`.
    pub fn new(out: W, sweep: &Sweep) -> Result<Self, ParquetError> {
        let kinds = if sweep.named {
            axis_kinds(&sweep.space)
        } else {
            Vec::new()
        };
        let names = super::column_names(sweep);
        let mut fields = vec![format!("REQUIRED INT64 {};", names[0])];
        for (n, k) in names[1..].iter().zip(&kinds) {
            fields.push(match k {
                Kind::Int => format!("REQUIRED INT64 {n};"),
                Kind::Double => format!("REQUIRED DOUBLE {n};"),
                Kind::Text => format!("REQUIRED BYTE_ARRAY {n} (UTF8);"),
            });
        }
        for n in &sweep.outputs {
            fields.push(format!("REQUIRED DOUBLE {n};"));
        }
        let schema =
            parse_message_type(&format!("message ttg_results {{ {} }}", fields.join(" ")))?;
        let props = WriterProperties::builder().build();
        let writer = SerializedFileWriter::new(out, Arc::new(schema), Arc::new(props))?;
        Ok(ParquetRows {
            writer,
            index: Vec::new(),
            axes: kinds.iter().map(|k| Col::new(*k)).collect(),
            outputs: vec![Vec::new(); sweep.outputs.len()],
            kinds,
        })
    }

    /// Write the buffered rows as one row group.
    fn flush(&mut self) -> Result<(), ParquetError> {
        if self.index.is_empty() {
            return Ok(());
        }
        let mut rg = self.writer.next_row_group()?;
        let mut cols: Vec<Col> = Vec::with_capacity(2 + self.axes.len() + self.outputs.len());
        cols.push(Col::Int(std::mem::take(&mut self.index)));
        for (c, k) in self.axes.iter_mut().zip(&self.kinds) {
            cols.push(std::mem::replace(c, Col::new(*k)));
        }
        for o in self.outputs.iter_mut() {
            cols.push(Col::Double(std::mem::take(o)));
        }
        for c in cols {
            let Some(mut w) = rg.next_column()? else {
                break;
            };
            match c {
                Col::Int(v) => w.typed::<Int64Type>().write_batch(&v, None, None),
                Col::Double(v) => w.typed::<DoubleType>().write_batch(&v, None, None),
                Col::Text(v) => w.typed::<ByteArrayType>().write_batch(&v, None, None),
            }?;
            w.close()?;
        }
        rg.close()?;
        Ok(())
    }

    /// One point: its index, its coordinates (the named space's, else
    /// none) and its outputs.
    pub fn row(
        &mut self,
        index: u64,
        coords: &[Value],
        outputs: &[f64],
    ) -> Result<(), ParquetError> {
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

    /// Write what is buffered and the file's footer.
    pub fn finish(mut self) -> Result<(), ParquetError> {
        self.flush()?;
        self.writer.close()?;
        Ok(())
    }
}
