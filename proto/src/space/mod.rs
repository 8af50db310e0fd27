//! Parameter spaces (issue #18, first part): named axes combined as a grid
//! or sampled by seed, and the one rule that turns a point's index into its
//! values. Point `i` is a pure function of (space, i): chunks stay ranges of
//! indices, nothing is stored per point, and any process recomputes any
//! point — the server to validate and show, agents to compute, the CLI to
//! print `--dry-run`.
//!
//! - **Grid**: the Cartesian product of the axes, the last axis fastest
//!   (index → point by mixed-radix decoding).
//! - **Repeat K**: every point K times in a row, with an extra, fastest
//!   axis `rep` = 0..K-1.
//! - **Sample N with seed S**: N points drawn independently; point i's value
//!   on axis j depends only on (S, i, j). A listed axis (values, range,
//!   linspace, logspace) is drawn uniformly among its values; `uniform`,
//!   `loguniform` and `randint` axes exist only in samples.
//!
//! [`wire`] converts to and from the gRPC `Space` message; [`outputs`]
//! holds a run's named outputs and the [`Sweep`] (space + outputs) every
//! process derives from a run's spec.

use std::fmt;

mod grid;
mod outputs;
mod wire;

pub use outputs::{check_output_names, validate_outputs, Sweep, DEFAULT_OUTPUT, MAX_OUTPUTS};

/// Longest axis name.
pub const MAX_NAME: usize = 64;
/// Most axes in one space.
pub const MAX_AXES: usize = 32;
/// Most values an explicit list may hold.
pub const MAX_LIST: usize = 10_000;
/// Longest text value.
pub const MAX_TEXT: usize = 256;
/// Most values a range, linspace or logspace axis may have.
pub const MAX_AXIS_LEN: u64 = 100_000_000;
/// Most repeats of each point.
pub const MAX_REPEAT: u64 = 1_000_000;

/// One coordinate of a point.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A whole number.
    Int(i64),
    /// A finite number.
    Float(f64),
    /// A word (shared: a point's text is the axis's, not a copy).
    Text(std::sync::Arc<str>),
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Int(v) => write!(f, "{v}"),
            Value::Float(v) => write!(f, "{v}"),
            Value::Text(v) => f.write_str(v),
        }
    }
}

/// How an axis's values are given.
#[derive(Clone, Debug, PartialEq)]
pub enum AxisKind {
    /// An explicit list (`NAME=v1,v2,v3`).
    List(Vec<Value>),
    /// Whole numbers `start, start+step, …` before `stop` (Python's `range`).
    IntRange {
        /// First value.
        start: i64,
        /// Excluded end.
        stop: i64,
        /// Step, not 0.
        step: i64,
    },
    /// Numbers `start + k·step` before `stop`.
    FloatRange {
        /// First value.
        start: f64,
        /// Excluded end.
        stop: f64,
        /// Step, not 0.
        step: f64,
    },
    /// `n` evenly spaced values, both ends included (numpy's `linspace`).
    Linspace {
        /// First value.
        start: f64,
        /// Last value.
        stop: f64,
        /// How many.
        n: u64,
    },
    /// `n` values evenly spaced in log from `start` to `stop`, both
    /// included (values, not exponents).
    Logspace {
        /// First value, > 0.
        start: f64,
        /// Last value, > 0.
        stop: f64,
        /// How many.
        n: u64,
    },
    /// Sampling only: uniform in `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (excluded).
        high: f64,
    },
    /// Sampling only: log-uniform in `[low, high)`, both > 0.
    LogUniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (excluded).
        high: f64,
    },
    /// Sampling only: a whole number in `low..high` (high excluded, as numpy).
    RandInt {
        /// Lowest value.
        low: i64,
        /// Excluded upper bound.
        high: i64,
    },
}

/// A named axis.
#[derive(Clone, Debug, PartialEq)]
pub struct Axis {
    /// Its name: a letter or `_`, then letters, digits or `_`.
    pub name: String,
    /// Its values.
    pub kind: AxisKind,
}

/// Random search: `n` points drawn with `seed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Points drawn.
    pub n: u64,
    /// The seed.
    pub seed: u64,
}

/// A parameter space.
#[derive(Clone, Debug, PartialEq)]
pub struct Space {
    /// The axes, slowest first.
    pub axes: Vec<Axis>,
    /// Every point this many times (1: once), with the axis `rep`.
    pub repeat: u64,
    /// Random search instead of the grid.
    pub sample: Option<Sample>,
}

/// Why a space is refused: the field and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpaceError {
    /// `space.axes[NAME]`, `space.repeat`, …
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn err(field: impl Into<String>, message: impl Into<String>) -> SpaceError {
    SpaceError {
        field: field.into(),
        message: message.into(),
    }
}

/// Parse a number: an integer if it reads as one, else a finite float.
fn number(s: &str) -> Option<Value> {
    let s = s.trim();
    if let Ok(i) = s.parse::<i64>() {
        return Some(Value::Int(i));
    }
    s.parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .map(Value::Float)
}

fn float(field: &str, s: &str) -> Result<f64, SpaceError> {
    s.trim()
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
        .ok_or_else(|| err(field, format!("{s:?} is not a finite number")))
}

fn int(field: &str, s: &str) -> Result<i64, SpaceError> {
    s.trim()
        .parse::<i64>()
        .map_err(|_| err(field, format!("{s:?} is not a whole number")))
}

fn count(field: &str, s: &str) -> Result<u64, SpaceError> {
    s.trim()
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=MAX_AXIS_LEN).contains(n))
        .ok_or_else(|| err(field, format!("N must be in 1..={MAX_AXIS_LEN}, got {s:?}")))
}

impl Axis {
    /// Parse `NAME=SPEC` as `--axis` takes it: `v1,v2,…`,
    /// `range:START:STOP[:STEP]`, `linspace:START:STOP:N`,
    /// `logspace:START:STOP:N`, `uniform:LOW:HIGH`, `loguniform:LOW:HIGH`
    /// or `randint:LOW:HIGH`.
    pub fn parse(arg: &str) -> Result<Axis, SpaceError> {
        let (name, spec) = arg
            .split_once('=')
            .ok_or_else(|| err("axis", format!("{arg:?} is not NAME=VALUES")))?;
        let name = name.trim().to_string();
        let field = format!("axes[{name}]");
        let parts: Vec<&str> = spec.split(':').collect();
        let args = &parts[1..];
        let want = |n: &[usize], usage: &str| {
            if n.contains(&args.len()) {
                Ok(())
            } else {
                Err(err(&field, format!("expected {usage}, got {spec:?}")))
            }
        };
        let kind = match parts[0] {
            "range" => {
                want(&[2, 3], "range:START:STOP[:STEP]")?;
                let step = args.get(2).copied().unwrap_or("1");
                if [args[0], args[1], step]
                    .iter()
                    .all(|s| s.trim().parse::<i64>().is_ok())
                {
                    AxisKind::IntRange {
                        start: int(&field, args[0])?,
                        stop: int(&field, args[1])?,
                        step: int(&field, step)?,
                    }
                } else {
                    AxisKind::FloatRange {
                        start: float(&field, args[0])?,
                        stop: float(&field, args[1])?,
                        step: float(&field, step)?,
                    }
                }
            }
            "linspace" | "logspace" => {
                want(&[3], &format!("{}:START:STOP:N", parts[0]))?;
                let (start, stop, n) = (
                    float(&field, args[0])?,
                    float(&field, args[1])?,
                    count(&field, args[2])?,
                );
                if parts[0] == "linspace" {
                    AxisKind::Linspace { start, stop, n }
                } else {
                    AxisKind::Logspace { start, stop, n }
                }
            }
            "uniform" | "loguniform" => {
                want(&[2], &format!("{}:LOW:HIGH", parts[0]))?;
                let (low, high) = (float(&field, args[0])?, float(&field, args[1])?);
                if parts[0] == "uniform" {
                    AxisKind::Uniform { low, high }
                } else {
                    AxisKind::LogUniform { low, high }
                }
            }
            "randint" => {
                want(&[2], "randint:LOW:HIGH")?;
                AxisKind::RandInt {
                    low: int(&field, args[0])?,
                    high: int(&field, args[1])?,
                }
            }
            _ => AxisKind::List(
                spec.split(',')
                    .map(|v| number(v).unwrap_or_else(|| Value::Text(v.trim().into())))
                    .collect(),
            ),
        };
        Ok(Axis { name, kind })
    }

    /// Values on the axis; None for sampling-only kinds.
    pub fn len(&self) -> Option<u64> {
        match &self.kind {
            AxisKind::List(v) => Some(v.len() as u64),
            AxisKind::IntRange { start, stop, step } => {
                let (span, step) = (*stop as i128 - *start as i128, *step as i128);
                Some(if step == 0 || span == 0 || (span > 0) != (step > 0) {
                    0
                } else {
                    ((span.abs() + step.abs() - 1) / step.abs()).min(u64::MAX as i128) as u64
                })
            }
            AxisKind::FloatRange { start, stop, step } => {
                let n = ((stop - start) / step).ceil();
                Some(if n.is_finite() && n > 0.0 {
                    n.min(u64::MAX as f64) as u64
                } else {
                    0
                })
            }
            AxisKind::Linspace { n, .. } | AxisKind::Logspace { n, .. } => Some(*n),
            AxisKind::Uniform { .. } | AxisKind::LogUniform { .. } | AxisKind::RandInt { .. } => {
                None
            }
        }
    }

    /// Whether a listed axis has no value (a sampling-only axis is not empty).
    pub fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }

    /// The `k`-th value of a listed axis (`k < len`).
    pub(crate) fn value(&self, k: u64) -> Value {
        match &self.kind {
            AxisKind::List(v) => v[k as usize].clone(),
            AxisKind::IntRange { start, step, .. } => Value::Int(start + step * k as i64),
            AxisKind::FloatRange { start, step, .. } => Value::Float(start + step * k as f64),
            AxisKind::Linspace { start, stop, n } => Value::Float(if *n <= 1 || k == 0 {
                *start
            } else if k + 1 == *n {
                *stop
            } else {
                start + (stop - start) * (k as f64 / (*n - 1) as f64)
            }),
            AxisKind::Logspace { start, stop, n } => Value::Float(if *n <= 1 || k == 0 {
                *start
            } else if k + 1 == *n {
                *stop
            } else {
                let (a, b) = (start.log10(), stop.log10());
                pow10(a + (b - a) * (k as f64 / (*n - 1) as f64))
            }),
            // Not reached: sampling-only axes are drawn, not indexed.
            AxisKind::Uniform { low, .. } | AxisKind::LogUniform { low, .. } => Value::Float(*low),
            AxisKind::RandInt { low, .. } => Value::Int(*low),
        }
    }

    /// The value drawn for uniform `u` in [0, 1).
    fn draw(&self, u: f64) -> Value {
        match &self.kind {
            AxisKind::Uniform { low, high } => Value::Float(low + (high - low) * u),
            AxisKind::LogUniform { low, high } => Value::Float(
                (low.ln() + (high.ln() - low.ln()) * u)
                    .exp()
                    .min(*high)
                    .max(*low),
            ),
            AxisKind::RandInt { low, high } => {
                let span = (*high as i128 - *low as i128) as f64;
                let k = ((u * span) as i128).min(*high as i128 - *low as i128 - 1);
                Value::Int((*low as i128 + k) as i64)
            }
            _ => {
                let n = self.len().unwrap_or(1).max(1);
                self.value(((u * n as f64) as u64).min(n - 1))
            }
        }
    }

    fn check(&self, sampling: bool) -> Result<(), SpaceError> {
        let field = format!("axes[{}]", self.name);
        let n = &self.name;
        if !valid_name(n) {
            return Err(err(
                "axes",
                format!("axis names are 1..={MAX_NAME} letters, digits or '_', not starting with a digit; got {n:?}"),
            ));
        }
        if RESERVED.contains(&n.as_str()) {
            return Err(err(
                "axes",
                format!("{n:?} is the results' first column: rename the axis"),
            ));
        }
        let finite = match &self.kind {
            AxisKind::FloatRange { start, stop, step } => {
                [*start, *stop, *step].iter().all(|x| x.is_finite())
            }
            AxisKind::Linspace { start, stop, .. } | AxisKind::Logspace { start, stop, .. } => {
                start.is_finite() && stop.is_finite()
            }
            AxisKind::Uniform { low, high } | AxisKind::LogUniform { low, high } => {
                low.is_finite() && high.is_finite()
            }
            _ => true,
        };
        if !finite {
            return Err(err(&field, "bounds must be finite (no NaN or infinity)"));
        }
        match &self.kind {
            AxisKind::List(v) => {
                if v.is_empty() || v.len() > MAX_LIST {
                    return Err(err(&field, format!("a list of 1..={MAX_LIST} values")));
                }
                for x in v {
                    match x {
                        Value::Text(t)
                            if t.is_empty()
                                || t.len() > MAX_TEXT
                                || t.chars().any(char::is_control) =>
                        {
                            return Err(err(&field, format!("text values are 1..={MAX_TEXT} bytes without control characters, got {t:?}")));
                        }
                        Value::Float(f) if !f.is_finite() => {
                            return Err(err(&field, "values must be finite"));
                        }
                        _ => {}
                    }
                }
            }
            AxisKind::IntRange { step: 0, .. } => {
                return Err(err(&field, "range step must not be 0"))
            }
            AxisKind::FloatRange { step, .. } if *step == 0.0 => {
                return Err(err(&field, "range step must not be 0"))
            }
            AxisKind::Logspace { start, stop, .. } if !(*start > 0.0 && *stop > 0.0) => {
                return Err(err(
                    &field,
                    "logspace bounds must be > 0 (they are values, not exponents)",
                ));
            }
            AxisKind::Uniform { low, high } if low >= high => {
                return Err(err(
                    &field,
                    format!("uniform needs LOW < HIGH, got {low} and {high}"),
                ));
            }
            AxisKind::LogUniform { low, high } if !(*low > 0.0 && low < high) => {
                return Err(err(
                    &field,
                    format!("loguniform needs 0 < LOW < HIGH, got {low} and {high}"),
                ));
            }
            AxisKind::RandInt { low, high } if low >= high => {
                return Err(err(
                    &field,
                    format!("randint needs LOW < HIGH (HIGH excluded), got {low} and {high}"),
                ));
            }
            _ => {}
        }
        match self.len() {
            Some(0) => Err(err(&field, "the axis has no values")),
            Some(l) if l > MAX_AXIS_LEN && !matches!(self.kind, AxisKind::List(_)) => Err(err(
                &field,
                format!("at most {MAX_AXIS_LEN} values, got {l}"),
            )),
            None if !sampling => Err(err(
                &field,
                "uniform, loguniform and randint axes need random search (--sample N)",
            )),
            _ => Ok(()),
        }
    }
}

/// Names no axis or output may take: the first column of exported results.
pub const RESERVED: &[&str] = &["index", "param"];

/// A name of an axis or output: 1..=64 ASCII letters, digits or `_`, not
/// starting with a digit (a Python identifier, a CSV/Parquet column).
pub fn valid_name(n: &str) -> bool {
    let first = n.chars().next();
    !n.is_empty()
        && n.len() <= MAX_NAME
        && first.is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// 10^e, exact for whole e (so logspace's decades are 1e-3, not 0.0010000000000000002).
fn pow10(e: f64) -> f64 {
    // 10^0 ..= 10^22 are exact doubles, and 1 / 10^k is correctly rounded:
    // the same as parsing "1e-k".
    const EXACT: [f64; 23] = [
        1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16,
        1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
    ];
    if e.fract() != 0.0 || e.abs() >= 300.0 {
        return 10f64.powf(e);
    }
    match EXACT.get(e.abs() as usize) {
        Some(p) if e >= 0.0 => *p,
        Some(p) => 1.0 / p,
        None => format!("1e{}", e as i64)
            .parse()
            .unwrap_or_else(|_| 10f64.powf(e)),
    }
}

/// SplitMix64's finaliser: a bijection of u64 with good avalanche.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) for (seed, point, axis): 53 random bits.
fn unit(seed: u64, point: u64, axis: u64) -> f64 {
    let x = mix(mix(mix(seed) ^ point) ^ axis.wrapping_mul(0xd1b5_4a32_d192_ed03));
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

impl Space {
    /// The space of `--params n`: one integer axis `p` = 0..n-1.
    pub fn params(n: u64) -> Space {
        Space {
            axes: vec![Axis {
                name: "p".into(),
                kind: AxisKind::IntRange {
                    start: 0,
                    stop: n.min(i64::MAX as u64) as i64,
                    step: 1,
                },
            }],
            repeat: 1,
            sample: None,
        }
    }

    /// Check the space and return its number of points, at most `max`.
    pub fn validate(&self, max: u64) -> Result<u64, SpaceError> {
        if self.axes.is_empty() || self.axes.len() > MAX_AXES {
            return Err(err("axes", format!("1..={MAX_AXES} axes")));
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.axes {
            a.check(self.sample.is_some())?;
            if !seen.insert(a.name.as_str()) {
                return Err(err("axes", format!("axis {:?} is given twice", a.name)));
            }
            if self.repeat > 1 && a.name == "rep" {
                return Err(err(
                    "axes",
                    "\"rep\" is the repeat axis's name (--repeat): rename this axis",
                ));
            }
        }
        if !(1..=MAX_REPEAT).contains(&self.repeat) {
            return Err(err("repeat", format!("must be in 1..={MAX_REPEAT}")));
        }
        if let Some(s) = self.sample {
            if s.n == 0 {
                return Err(err("sample", "must be ≥ 1 point"));
            }
        }
        let n = self.len_checked().ok_or_else(|| {
            err(
                "space",
                format!("its size overflows (more than {max} points)"),
            )
        })?;
        if n > max {
            return Err(err("space", format!("{n} points; at most {max}")));
        }
        Ok(n)
    }

    fn len_checked(&self) -> Option<u64> {
        let base = match self.sample {
            Some(s) => s.n,
            None => self
                .axes
                .iter()
                .try_fold(1u64, |acc, a| acc.checked_mul(a.len()?))?,
        };
        base.checked_mul(self.repeat)
    }

    /// Number of points (of a validated space).
    pub fn len(&self) -> u64 {
        self.len_checked().unwrap_or(0)
    }

    /// Whether it has no point (never, once validated).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Names of a point's values, in order (`rep` last, when repeating).
    pub fn names(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self.axes.iter().map(|a| a.name.as_str()).collect();
        if self.repeat > 1 {
            v.push("rep");
        }
        v
    }

    /// Call `f(i, values)` for every point `start .. end` in order, with one
    /// buffer for all of them: a grid steps its mixed-radix digits (only
    /// the axes that change are decoded again), so a chunk costs about one
    /// value per point instead of a full decode and an allocation.
    pub fn walk(&self, start: u64, end: u64, mut f: impl FnMut(u64, &[Value])) {
        if start >= end {
            return;
        }
        if self.sample.is_some() {
            for i in start..end {
                f(i, &self.point(i));
            }
            return;
        }
        let mut cur = self.point(start);
        let axes = self.axes.len();
        let lens: Vec<u64> = self
            .axes
            .iter()
            .map(|a| a.len().unwrap_or(1).max(1))
            .collect();
        // Digits of the point's base index, last axis fastest.
        let mut digits = vec![0u64; axes];
        let mut rest = start / self.repeat;
        for j in (0..axes).rev() {
            digits[j] = rest % lens[j];
            rest /= lens[j];
        }
        let mut rep = start % self.repeat;
        f(start, &cur);
        for i in start + 1..end {
            if self.repeat > 1 {
                rep += 1;
                if rep < self.repeat {
                    cur[axes] = Value::Int(rep as i64);
                    f(i, &cur);
                    continue;
                }
                rep = 0;
                cur[axes] = Value::Int(0);
            }
            let mut j = axes;
            while j > 0 {
                j -= 1;
                digits[j] += 1;
                if digits[j] < lens[j] {
                    cur[j] = self.axes[j].value(digits[j]);
                    break;
                }
                digits[j] = 0;
                cur[j] = self.axes[j].value(0);
            }
            f(i, &cur);
        }
    }

    /// The values of point `i` (< len), in the order of [`Space::names`].
    pub fn point(&self, i: u64) -> Vec<Value> {
        let (base, rep) = (i / self.repeat, i % self.repeat);
        let mut out = Vec::with_capacity(self.axes.len() + 1);
        match self.sample {
            Some(s) => {
                for (j, a) in self.axes.iter().enumerate() {
                    out.push(a.draw(unit(s.seed, base, j as u64)));
                }
            }
            None => {
                // Mixed radix, last axis fastest.
                let mut rest = base;
                let mut rev = Vec::with_capacity(self.axes.len());
                for a in self.axes.iter().rev() {
                    let n = a.len().unwrap_or(1).max(1);
                    rev.push(a.value(rest % n));
                    rest /= n;
                }
                out.extend(rev.into_iter().rev());
            }
        }
        if self.repeat > 1 {
            out.push(Value::Int(rep as i64));
        }
        out
    }
}

#[cfg(test)]
mod tests;
