//! A run's points as rows: the column names, the CSV line of a point and
//! (feature `parquet`) a Parquet writer, shared by `ttgctl results` and the
//! dashboard's downloads so both write the same files.

#[cfg(feature = "parquet")]
mod parquet;
#[cfg(feature = "parquet")]
pub use self::parquet::{ParquetError, ParquetRows};

use std::fmt::Write as _;

use crate::space::{Sweep, Value};

/// Every column name, in order: `param` (a `--params` run) or `index`,
/// the named space's axes, then the outputs.
pub fn column_names(sweep: &Sweep) -> Vec<String> {
    let mut v = vec![if sweep.named { "index" } else { "param" }.to_string()];
    if sweep.named {
        v.extend(sweep.space.names().into_iter().map(String::from));
    }
    v.extend(sweep.outputs.iter().cloned());
    v
}

/// A CSV field, quoted when it holds a comma, a quote or a line break.
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Append one point's CSV line (with its newline) to `out`.
pub fn csv_line(out: &mut String, index: u64, coords: &[Value], outputs: &[f64]) {
    let _ = write!(out, "{index}");
    for c in coords {
        let _ = write!(out, ",{}", csv_field(&c.to_string()));
    }
    for o in outputs {
        let _ = write!(out, ",{o}");
    }
    out.push('\n');
}
