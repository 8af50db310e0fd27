//! The gRPC `Space` message ↔ [`Space`], and points as `Point` messages.
//! Decoding names the field of anything missing; range checks are
//! [`Space::validate`]'s.

use super::{err, Axis, AxisKind, Sample, Space, SpaceError, Value};
use crate::v1;
use v1::axis::Kind;
use v1::axis_value::Value as Wv;

impl Value {
    /// As the gRPC `AxisValue`.
    pub fn to_wire(&self) -> v1::AxisValue {
        v1::AxisValue {
            value: Some(match self {
                Value::Int(i) => Wv::Int(*i),
                Value::Float(f) => Wv::Float(*f),
                Value::Text(t) => Wv::Text(t.to_string()),
            }),
        }
    }

    /// From the gRPC `AxisValue`; None when it holds nothing.
    pub fn from_wire(v: &v1::AxisValue) -> Option<Value> {
        Some(match v.value.as_ref()? {
            Wv::Int(i) => Value::Int(*i),
            Wv::Float(f) => Value::Float(*f),
            Wv::Text(t) => Value::Text(t.as_str().into()),
        })
    }

    /// As a number, if it is one (for kernels that compute on coordinates).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            Value::Text(_) => None,
        }
    }
}

impl Space {
    /// Decode the gRPC message (not yet validated: see [`Space::validate`]).
    pub fn from_wire(w: &v1::Space) -> Result<Space, SpaceError> {
        let mut axes = Vec::with_capacity(w.axes.len());
        for (j, a) in w.axes.iter().enumerate() {
            let field = format!("space.axes[{j}]");
            let kind = match a.kind.as_ref() {
                None => {
                    return Err(err(
                        format!("{field}.kind"),
                        "missing: one of values, int_range, float_range, linspace, logspace, uniform, loguniform, randint",
                    ))
                }
                Some(Kind::Values(v)) => AxisKind::List(
                    v.values
                        .iter()
                        .enumerate()
                        .map(|(k, x)| {
                            Value::from_wire(x).ok_or_else(|| {
                                err(format!("{field}.values[{k}]"), "empty: give int, float or text")
                            })
                        })
                        .collect::<Result<_, _>>()?,
                ),
                Some(Kind::IntRange(r)) => AxisKind::IntRange {
                    start: r.start,
                    stop: r.stop,
                    step: if r.step == 0 { 1 } else { r.step },
                },
                Some(Kind::FloatRange(r)) => AxisKind::FloatRange {
                    start: r.start,
                    stop: r.stop,
                    step: r.step,
                },
                Some(Kind::Linspace(s)) => AxisKind::Linspace {
                    start: s.start,
                    stop: s.stop,
                    n: s.n,
                },
                Some(Kind::Logspace(s)) => AxisKind::Logspace {
                    start: s.start,
                    stop: s.stop,
                    n: s.n,
                },
                Some(Kind::Uniform(b)) => AxisKind::Uniform {
                    low: b.low,
                    high: b.high,
                },
                Some(Kind::Loguniform(b)) => AxisKind::LogUniform {
                    low: b.low,
                    high: b.high,
                },
                Some(Kind::Randint(r)) => AxisKind::RandInt {
                    low: r.start,
                    high: r.stop,
                },
            };
            axes.push(Axis {
                name: a.name.clone(),
                kind,
            });
        }
        Ok(Space {
            axes,
            repeat: w.repeat.max(1),
            sample: (w.sample > 0).then_some(Sample {
                n: w.sample,
                seed: w.seed,
            }),
        })
    }

    /// As the gRPC message.
    pub fn to_wire(&self) -> v1::Space {
        let axes = self
            .axes
            .iter()
            .map(|a| v1::Axis {
                name: a.name.clone(),
                kind: Some(match &a.kind {
                    AxisKind::List(v) => Kind::Values(v1::AxisValues {
                        values: v.iter().map(Value::to_wire).collect(),
                    }),
                    AxisKind::IntRange { start, stop, step } => Kind::IntRange(v1::IntRange {
                        start: *start,
                        stop: *stop,
                        step: *step,
                    }),
                    AxisKind::FloatRange { start, stop, step } => {
                        Kind::FloatRange(v1::FloatRange {
                            start: *start,
                            stop: *stop,
                            step: *step,
                        })
                    }
                    AxisKind::Linspace { start, stop, n } => Kind::Linspace(v1::Spaced {
                        start: *start,
                        stop: *stop,
                        n: *n,
                    }),
                    AxisKind::Logspace { start, stop, n } => Kind::Logspace(v1::Spaced {
                        start: *start,
                        stop: *stop,
                        n: *n,
                    }),
                    AxisKind::Uniform { low, high } => Kind::Uniform(v1::Bounds {
                        low: *low,
                        high: *high,
                    }),
                    AxisKind::LogUniform { low, high } => Kind::Loguniform(v1::Bounds {
                        low: *low,
                        high: *high,
                    }),
                    AxisKind::RandInt { low, high } => Kind::Randint(v1::IntRange {
                        start: *low,
                        stop: *high,
                        step: 1,
                    }),
                }),
            })
            .collect();
        v1::Space {
            axes,
            repeat: self.repeat,
            sample: self.sample.map_or(0, |s| s.n),
            seed: self.sample.map_or(0, |s| s.seed),
        }
    }

    /// Point `i` as a `Point` message (coordinates only).
    pub fn wire_point(&self, i: u64) -> v1::Point {
        let names = self.names();
        v1::Point {
            index: i,
            values: names
                .iter()
                .zip(self.point(i))
                .map(|(n, v)| v1::NamedValue {
                    name: n.to_string(),
                    value: Some(v.to_wire()),
                })
                .collect(),
            outputs: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_wire() {
        let s = Space {
            axes: [
                "a=1,2.5,x",
                "b=range:0:10:3",
                "c=range:0:1:0.25",
                "d=linspace:0:1:3",
                "e=logspace:1e-3:1:4",
                "f=uniform:0:1",
                "g=loguniform:1e-4:1",
                "h=randint:1:9",
            ]
            .iter()
            .map(|a| Axis::parse(a).unwrap())
            .collect(),
            repeat: 3,
            sample: Some(Sample { n: 50, seed: 9 }),
        };
        assert_eq!(Space::from_wire(&s.to_wire()).unwrap(), s);
        let p = s.wire_point(7);
        assert_eq!(p.values.len(), 9);
        assert_eq!(p.values[8].name, "rep");
    }

    #[test]
    fn a_missing_kind_or_value_names_its_field() {
        let mut w = v1::Space {
            axes: vec![v1::Axis {
                name: "x".into(),
                kind: None,
            }],
            ..Default::default()
        };
        let e = Space::from_wire(&w).unwrap_err();
        assert_eq!(e.field, "space.axes[0].kind");
        w.axes[0].kind = Some(Kind::Values(v1::AxisValues {
            values: vec![v1::AxisValue { value: None }],
        }));
        assert_eq!(
            Space::from_wire(&w).unwrap_err().field,
            "space.axes[0].values[0]"
        );
    }
}
