//! Parameter spaces and outputs on the command line: `--axis`, `--repeat`,
//! `--sample`/`--seed`, `--outputs` and `--space FILE` (YAML or JSON) into
//! the Submit request; points and output summaries printed for people.

use serde_yaml_ng::Value as Yaml;
pub use ttg_proto::json::{json_value, point_json};
use ttg_proto::space::{Axis, AxisKind, Sample, Space, Value};
use ttg_proto::v1::{NamedValue, OutputSummary, Point};

use crate::client::{CliError, CliResult};

/// What the sweep flags say; `space` None means `--params`.
#[derive(Debug, Default, PartialEq)]
pub struct SweepSpec {
    /// The named space, if any.
    pub space: Option<Space>,
    /// Output names (empty: one named `value`).
    pub outputs: Vec<String>,
}

fn usage(e: ttg_proto::space::SpaceError) -> CliError {
    CliError::usage(format!("{e}"))
}

/// The space of `--axis` flags (with `--repeat`, `--sample`, `--seed`).
pub fn from_flags(
    axes: &[String],
    repeat: Option<u64>,
    sample: Option<u64>,
    seed: Option<u64>,
) -> CliResult<Option<Space>> {
    if axes.is_empty() {
        if repeat.is_some() || sample.is_some() || seed.is_some() {
            return Err(CliError::usage(
                "--repeat, --sample and --seed need a space: give --axis NAME=VALUES (or --space FILE)",
            ));
        }
        return Ok(None);
    }
    let axes = axes
        .iter()
        .map(|a| Axis::parse(a).map_err(|e| CliError::usage(format!("--axis {a:?}: {e}"))))
        .collect::<CliResult<Vec<_>>>()?;
    if seed.is_some() && sample.is_none() {
        return Err(CliError::usage(
            "--seed goes with --sample N (random search)",
        ));
    }
    Ok(Some(Space {
        axes,
        repeat: repeat.unwrap_or(1),
        sample: sample.map(|n| Sample {
            n,
            seed: seed.unwrap_or(0),
        }),
    }))
}

/// A space file: YAML (JSON is YAML too).
///
/// ```yaml
/// axes:                      # slowest first
///   lr: logspace:1e-4:1e-1:4 # any --axis spec
///   depth: [2, 4, 8]         # or a list of values
/// repeat: 3
/// sample: 100                # random search (with seed)
/// seed: 7
/// outputs: [loss, accuracy]
/// ```
pub fn from_file(path: &std::path::Path) -> CliResult<SweepSpec> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::usage(format!("cannot read --space {}: {e}", path.display())))?;
    parse_file(&text).map_err(|e| CliError::usage(format!("--space {}: {e}", path.display())))
}

fn parse_file(text: &str) -> Result<SweepSpec, String> {
    let doc: Yaml = serde_yaml_ng::from_str(text).map_err(|e| e.to_string())?;
    let Yaml::Mapping(top) = doc else {
        return Err(
            "expected a mapping with `axes:` (and optionally repeat, sample, seed, outputs)".into(),
        );
    };
    let mut axes = Vec::new();
    let mut space = Space {
        axes: Vec::new(),
        repeat: 1,
        sample: None,
    };
    let (mut sample, mut seed) = (None, None);
    let mut outputs = Vec::new();
    let whole = |k: &str, v: &Yaml| {
        v.as_u64()
            .ok_or_else(|| format!("{k}: expected a whole number ≥ 0, got {}", shown(v)))
    };
    for (k, v) in &top {
        let key = k.as_str().unwrap_or_default();
        match key {
            "axes" => {
                let Yaml::Mapping(m) = v else {
                    return Err("axes: expected a mapping NAME: SPEC or NAME: [values]".into());
                };
                for (name, spec) in m {
                    let name = name
                        .as_str()
                        .ok_or_else(|| format!("axes: axis names are text, got {}", shown(name)))?;
                    axes.push(axis(name, spec)?);
                }
            }
            "repeat" => space.repeat = whole(key, v)?,
            "sample" => sample = Some(whole(key, v)?),
            "seed" => seed = Some(whole(key, v)?),
            "outputs" => {
                outputs = match v {
                    Yaml::String(s) => s.split(',').map(|x| x.trim().to_string()).collect(),
                    Yaml::Sequence(s) => s
                        .iter()
                        .map(|x| {
                            x.as_str()
                                .map(String::from)
                                .ok_or_else(|| format!("outputs: names are text, got {}", shown(x)))
                        })
                        .collect::<Result<_, _>>()?,
                    _ => return Err("outputs: expected a list of names".into()),
                }
            }
            other => {
                return Err(format!(
                    "unknown key {other:?} (allowed: axes, repeat, sample, seed, outputs)"
                ))
            }
        }
    }
    if axes.is_empty() {
        return Err("axes: give at least one axis".into());
    }
    if seed.is_some() && sample.is_none() {
        return Err("seed goes with sample: N (random search)".into());
    }
    space.axes = axes;
    space.sample = sample.map(|n| Sample {
        n,
        seed: seed.unwrap_or(0),
    });
    Ok(SweepSpec {
        space: Some(space),
        outputs,
    })
}

fn shown(v: &Yaml) -> String {
    serde_yaml_ng::to_string(v)
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// One axis of a space file: a `--axis` spec string, or a list of values.
fn axis(name: &str, spec: &Yaml) -> Result<Axis, String> {
    match spec {
        Yaml::Sequence(vals) => {
            let values = vals
                .iter()
                .map(|v| match v {
                    Yaml::Number(n) => n
                        .as_i64()
                        .map(Value::Int)
                        .or_else(|| n.as_f64().map(Value::Float))
                        .ok_or_else(|| format!("axes[{name}]: {n} is not a number TTG keeps")),
                    Yaml::String(s) => Ok(Value::Text(s.as_str().into())),
                    Yaml::Bool(b) => Ok(Value::Text(b.to_string().into())),
                    other => Err(format!(
                        "axes[{name}]: values are numbers or text, got {}",
                        shown(other)
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Axis {
                name: name.to_string(),
                kind: AxisKind::List(values),
            })
        }
        Yaml::String(s) => Axis::parse(&format!("{name}={s}")).map_err(|e| e.to_string()),
        Yaml::Number(n) => Axis::parse(&format!("{name}={n}")).map_err(|e| e.to_string()),
        other => Err(format!(
            "axes[{name}]: expected a spec like linspace:0:1:5 or a list of values, got {}",
            shown(other)
        )),
    }
}

/// Validate locally (limit `max`), so `--dry-run` and typos fail before
/// the server is asked; the server checks again against its own limit.
pub fn check(space: &Space, max: u64) -> CliResult<u64> {
    space.validate(max).map_err(usage)
}

/// A point's coordinates as `lr=0.001 depth=3`.
pub fn coords(values: &[NamedValue]) -> String {
    values
        .iter()
        .map(|v| format!("{}={}", v.name, wire_value(v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A coordinate's value as text.
pub fn wire_value(v: &NamedValue) -> String {
    v.value
        .as_ref()
        .and_then(Value::from_wire)
        .map(|x| x.to_string())
        .unwrap_or_default()
}

/// One line per output: `loss: min 0.012 at #17 (lr=0.001 depth=3), max …`.
pub fn summary_lines(outputs: &[OutputSummary]) -> Vec<String> {
    outputs
        .iter()
        .filter(|o| o.aggregate.is_some_and(|a| a.count > 0))
        .map(|o| {
            let a = o.aggregate.unwrap_or_default();
            let at = |p: &Option<Point>| match p {
                Some(p) if p.values.is_empty() => format!(" at #{}", p.index),
                Some(p) => format!(" at #{} ({})", p.index, coords(&p.values)),
                None => String::new(),
            };
            format!(
                "{}: mean {}, min {}{}, max {}{}",
                o.name,
                a.mean,
                a.min,
                at(&o.argmin),
                a.max,
                at(&o.argmax)
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_space_file_reads_like_the_flags() {
        let f = parse_file(
            "axes:\n  lr: logspace:1e-4:1e-1:4\n  depth: [2, 4, 8]\n  act: [relu, tanh]\nrepeat: 2\noutputs: [loss, acc]\n",
        )
        .unwrap();
        let flags = from_flags(
            &[
                "lr=logspace:1e-4:1e-1:4".into(),
                "depth=2,4,8".into(),
                "act=relu,tanh".into(),
            ],
            Some(2),
            None,
            None,
        )
        .unwrap();
        assert_eq!(f.space, flags);
        assert_eq!(f.outputs, vec!["loss", "acc"]);
        let json = parse_file(r#"{"axes": {"x": "range:0:3"}, "sample": 5, "seed": 1}"#).unwrap();
        assert_eq!(json.space.unwrap().sample, Some(Sample { n: 5, seed: 1 }));
        for (bad, says) in [
            ("axes: 3", "axes: expected a mapping"),
            ("axes:\n  x: {a: 1}", "axes[x]"),
            ("axes:\n  x: [1]\nbogus: 1", "unknown key \"bogus\""),
            (
                "axes:\n  x: [1]\nrepeat: -1",
                "repeat: expected a whole number",
            ),
            ("[1, 2]", "expected a mapping"),
            ("axes: {}", "at least one axis"),
        ] {
            let e = parse_file(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
