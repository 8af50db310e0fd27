//! What the dashboard draws, computed here in bounded size: a histogram of
//! an output, a heatmap of an output over two axes of a grid (the other
//! axes reduced by min or mean), and a sample of points for scatter and
//! parallel-coordinates views of a random search. Each reads the run's
//! stored values with [`Store::scan_results`]; past `max_points` it reads
//! every k-th chunk instead (and says so), so a 10^8-point run costs a
//! bounded scan and ships a few kilobytes, never its points.

use ttg_proto::space::{Sweep, Value as AxisValue};

use super::*;

/// Most histogram bins.
pub const MAX_BINS: u32 = 200;
/// Most cells per heatmap axis (an axis with more values is bucketed).
pub const MAX_CELLS: u64 = 100;
/// Most points a sample returns.
pub const MAX_SAMPLE: u32 = 5_000;

/// How much of the run a chart read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Coverage {
    /// Points read.
    pub points: u64,
    /// Every k-th chunk was read (1: all).
    pub stride: u64,
}

/// A histogram of one output.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Histogram {
    /// The output.
    pub output: String,
    /// Lower edge of the first bin.
    pub min: f64,
    /// Upper edge of the last bin.
    pub max: f64,
    /// Points per bin (equal widths).
    pub counts: Vec<u64>,
    /// What was read.
    pub coverage: Coverage,
}

/// An output over two axes of a grid.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Heatmap {
    /// The output.
    pub output: String,
    /// `min` or `mean`: how the other axes are reduced.
    pub reduce: String,
    /// Column axis name and one label per column (a bucket's first value).
    pub x: (String, Vec<String>),
    /// Row axis name and labels.
    pub y: (String, Vec<String>),
    /// `cells[row][col]`: the reduced value, None where nothing was read.
    pub cells: Vec<Vec<Option<f64>>>,
    /// What was read.
    pub coverage: Coverage,
}

/// A sample of points: their coordinates and outputs.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PointSample {
    /// Axis names.
    pub axes: Vec<String>,
    /// Output names.
    pub outputs: Vec<String>,
    /// `[index, axis values…, outputs…]` per point; text values as text.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// What was read.
    pub coverage: Coverage,
}

impl Store {
    /// Chunks to skip between reads so about `max_points` are read.
    fn stride(spec: &RunSpec, max_points: u64) -> u64 {
        let done = spec.params.max(1);
        done.div_ceil(max_points.max(1)).max(1)
    }

    /// The run's spec, its sweep and the index of `output` ("" = the
    /// first; an unknown name is InvalidArgument listing the outputs).
    pub(super) async fn sweep_output(
        &self,
        run_id: &str,
        output: &str,
    ) -> Result<(RunSpec, Sweep, usize)> {
        let spec = self.spec(run_id).await?;
        let sweep = Sweep::of(&spec).map_err(|e| {
            Error::Corrupt(ttg_proto::records::DecodeError::Field {
                what: "run spec",
                detail: e.to_string(),
            })
        })?;
        let o = if output.is_empty() {
            0
        } else {
            sweep
                .outputs
                .iter()
                .position(|n| n == output)
                .ok_or_else(|| {
                    Error::invalid(
                        "output",
                        format!(
                            "run {run_id} has no output {output:?}; its outputs are {}",
                            sweep.outputs.join(", ")
                        ),
                    )
                })?
        };
        Ok((spec, sweep, o))
    }

    /// A histogram of `output` in `bins` equal bins between its min and max.
    pub async fn histogram(
        &self,
        run_id: &str,
        output: &str,
        bins: u32,
        max_points: u64,
    ) -> Result<Histogram> {
        if !(1..=MAX_BINS).contains(&bins) {
            return Err(Error::invalid(
                "bins",
                format!("must be in 1..={MAX_BINS}, got {bins}"),
            ));
        }
        let (spec, sweep, o) = self.sweep_output(run_id, output).await?;
        let k = sweep.outputs.len();
        let stride = Self::stride(&spec, max_points);
        let mut values = Vec::new();
        self.scan_results(&spec, stride, |_, _, v| {
            let n = v.len() / k;
            values.extend_from_slice(&v[o * n..(o + 1) * n]);
            std::future::ready(true)
        })
        .await?;
        let (lo, hi) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
                (a.min(x), b.max(x))
            });
        let mut counts = vec![0u64; bins as usize];
        if !values.is_empty() {
            let width = (hi - lo) / bins as f64;
            for x in &values {
                let b = if width > 0.0 {
                    (((x - lo) / width) as usize).min(bins as usize - 1)
                } else {
                    0
                };
                counts[b] += 1;
            }
        }
        Ok(Histogram {
            output: sweep.outputs[o].clone(),
            min: if values.is_empty() { 0.0 } else { lo },
            max: if values.is_empty() { 0.0 } else { hi },
            counts,
            coverage: Coverage {
                points: values.len() as u64,
                stride,
            },
        })
    }

    /// `output` over axes `x` (columns) and `y` (rows) of a grid, the other
    /// axes reduced by `reduce` (`min` or `mean`).
    pub async fn heatmap(
        &self,
        run_id: &str,
        output: &str,
        (x, y): (&str, &str),
        reduce: &str,
        max_points: u64,
    ) -> Result<Heatmap> {
        let mean = match reduce {
            "" | "min" => false,
            "mean" => true,
            other => {
                return Err(Error::invalid(
                    "reduce",
                    format!("must be min or mean, got {other:?}"),
                ))
            }
        };
        let (spec, sweep, o) = self.sweep_output(run_id, output).await?;
        let space = &sweep.space;
        let axis = |name: &str, field: &str| {
            let i = space.axis_index(name).ok_or_else(|| {
                Error::invalid(
                    field,
                    format!(
                        "no axis {name:?}; the axes are {}",
                        space.names().join(", ")
                    ),
                )
            })?;
            let n = space.axis_len(i).ok_or_else(|| {
                Error::invalid(
                    field,
                    "a heatmap needs a grid; this run is a random search (use its points)",
                )
            })?;
            Ok::<_, Error>((i, n))
        };
        let ((xi, xn), (yi, yn)) = (axis(x, "x")?, axis(y, "y")?);
        if xi == yi {
            return Err(Error::invalid("y", "must be another axis than x"));
        }
        // Buckets of at most MAX_CELLS per axis.
        let (xb, yb) = (xn.div_ceil(MAX_CELLS).max(1), yn.div_ceil(MAX_CELLS).max(1));
        let (cols, rows) = (xn.div_ceil(xb) as usize, yn.div_ceil(yb) as usize);
        let mut acc = vec![(f64::INFINITY, 0.0f64, 0u64); cols * rows];
        let k = sweep.outputs.len();
        let stride = Self::stride(&spec, max_points);
        let mut points = 0u64;
        self.scan_results(&spec, stride, |_, start, v| {
            let n = v.len() / k;
            for (j, &val) in v[o * n..(o + 1) * n].iter().enumerate() {
                let i = start + j as u64;
                let (c, r) = (
                    (space.digit(i, xi) / xb) as usize,
                    (space.digit(i, yi) / yb) as usize,
                );
                let cell = &mut acc[r * cols + c];
                cell.0 = cell.0.min(val);
                cell.1 += val;
                cell.2 += 1;
            }
            points += n as u64;
            std::future::ready(true)
        })
        .await?;
        let labels = |i: usize, n: u64, b: u64| {
            (0..n)
                .step_by(b as usize)
                .map(|kk| space.label(i, kk))
                .collect()
        };
        let cells = (0..rows)
            .map(|r| {
                (0..cols)
                    .map(|c| {
                        let (lo, sum, count) = acc[r * cols + c];
                        (count > 0).then(|| if mean { sum / count as f64 } else { lo })
                    })
                    .collect()
            })
            .collect();
        Ok(Heatmap {
            output: sweep.outputs[o].clone(),
            reduce: if mean { "mean" } else { "min" }.into(),
            x: (x.to_string(), labels(xi, xn, xb)),
            y: (y.to_string(), labels(yi, yn, yb)),
            cells,
            coverage: Coverage { points, stride },
        })
    }

    /// About `limit` points spread over the run (every k-th stored chunk,
    /// the first few points of each), with coordinates and outputs.
    pub async fn sample_points(&self, run_id: &str, limit: u32) -> Result<PointSample> {
        if !(1..=MAX_SAMPLE).contains(&limit) {
            return Err(Error::invalid(
                "limit",
                format!("must be in 1..={MAX_SAMPLE}, got {limit}"),
            ));
        }
        let (spec, sweep, _) = self.sweep_output(run_id, "").await?;
        let k = sweep.outputs.len();
        let chunks = spec.total_chunks.max(1);
        let stride = chunks.div_ceil(u64::from(limit)).max(1);
        // Points per chunk read: enough to reach the limit over the chunks read.
        let per_chunk = (u64::from(limit) / chunks.div_ceil(stride)).max(1) as usize;
        let mut rows = Vec::new();
        let mut points = 0u64;
        let json = |v: &AxisValue| match v {
            AxisValue::Int(i) => serde_json::json!(i),
            AxisValue::Float(f) => serde_json::json!(f),
            AxisValue::Text(t) => serde_json::json!(t.to_string()),
        };
        self.scan_results(&spec, stride, |_, start, v| {
            let n = v.len() / k;
            let take = n.min(per_chunk);
            let gap = (n / take.max(1)).max(1);
            for j in (0..n).step_by(gap).take(take) {
                if rows.len() >= limit as usize {
                    break;
                }
                let i = start + j as u64;
                let mut row = vec![serde_json::json!(i)];
                row.extend(sweep.space.point(i).iter().map(json));
                row.extend((0..k).map(|q| serde_json::json!(v[q * n + j])));
                rows.push(row);
            }
            points += n as u64;
            std::future::ready(rows.len() < limit as usize)
        })
        .await?;
        Ok(PointSample {
            axes: sweep.space.names().iter().map(|s| s.to_string()).collect(),
            outputs: sweep.outputs.clone(),
            rows,
            coverage: Coverage { points, stride },
        })
    }
}
