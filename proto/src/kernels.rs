//! Kernel declarations: name, arguments, their types, defaults and allowed
//! ranges. Submit validates `kernel` and `args` against a declaration, so a
//! bad argument is rejected before anything is queued.
//!
//! The built-in kernels are declared here, so a server knows them even
//! before any agent connects. Agents also send the declarations of every
//! kernel they offer in `Hello`, so a kernel added to an agent (one file in
//! `agent/src/kernels/`) is validated by any server without rebuilding it.
//! Validation works on [`KernelDecl`], the protobuf form, for both.

use std::collections::{BTreeMap, HashMap};

use crate::v1::{ArgDecl, KernelDecl};

/// Type and allowed range of one kernel argument.
#[derive(Clone, Copy, Debug)]
pub enum ArgKind {
    /// Whole number in `min ..= max`.
    Int {
        /// Smallest allowed value.
        min: i64,
        /// Largest allowed value.
        max: i64,
    },
    /// Finite number in `min ..= max`.
    Float {
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },
    /// Text of at most `max_len` bytes, no NUL.
    Text {
        /// Longest allowed length in bytes.
        max_len: usize,
    },
    /// One of a fixed set of words.
    Choice {
        /// The allowed values.
        values: &'static [&'static str],
    },
}

/// One declared argument.
#[derive(Clone, Copy, Debug)]
pub struct ArgSpec {
    /// Argument name, as in `--arg name=value`.
    pub name: &'static str,
    /// Type and range.
    pub kind: ArgKind,
    /// Value used when the argument is not given ("" and not required: absent).
    pub default: &'static str,
    /// Whether Submit must give it.
    pub required: bool,
    /// One line for `ttgctl kernels` and the docs.
    pub help: &'static str,
}

/// A built-in kernel's declaration.
#[derive(Clone, Copy, Debug)]
pub struct KernelSpec {
    /// Kernel name, as in `--kernel name`.
    pub name: &'static str,
    /// One line saying what it computes.
    pub help: &'static str,
    /// Declared arguments; any other argument is rejected.
    pub args: &'static [ArgSpec],
}

/// The reference computation: `value(p) = (7p + 13) mod 1000 + frac(p)`.
pub const PLACEHOLDER: KernelSpec = KernelSpec {
    name: "placeholder",
    help: "value(p) = (7p + 13) mod 1000 + 0.<p mod 100>; optional simulated work per parameter",
    args: &[ArgSpec {
        name: "work_ms",
        kind: ArgKind::Int {
            min: 0,
            max: 60_000,
        },
        default: "0",
        required: false,
        help: "simulated work per parameter, milliseconds",
    }],
};

/// CPU-bound: the Collatz stopping time of p.
pub const COLLATZ: KernelSpec = KernelSpec {
    name: "collatz",
    help: "value(p) = number of Collatz steps from p to 1 (0 for p = 0 and p = 1); CPU-bound",
    args: &[],
};

/// The user's own program: started per chunk (`mode=chunk`) or kept running
/// per agent slot and run, serving chunks over the worker protocol
/// (`mode=worker`, docs/kernels.md).
pub const EXEC: KernelSpec = KernelSpec {
    name: "exec",
    help: "runs PROGRAM: per chunk (mode=chunk: parameters on stdin, one number each on stdout) or as a persistent worker speaking the NDJSON worker protocol (mode=worker); agents need --allow-exec",
    args: &[
        ArgSpec {
            name: "program",
            kind: ArgKind::Text { max_len: 4_096 },
            default: "",
            required: true,
            help: "path of the program to run (no shell; write `sh -c` yourself if you need one)",
        },
        ArgSpec {
            name: "args",
            kind: ArgKind::Text { max_len: 16_384 },
            default: "",
            required: false,
            help: "its arguments, split like a shell would (quotes, backslashes) but never run by one",
        },
        ArgSpec {
            name: "mode",
            kind: ArgKind::Choice {
                values: &["chunk", "worker"],
            },
            default: "chunk",
            required: false,
            help: "chunk: a process per chunk; worker: one process per agent slot and run, serving many chunks (docs/kernels.md)",
        },
        ArgSpec {
            name: "timeout_s",
            kind: ArgKind::Float { min: 0.001, max: 86_400.0 },
            default: "600",
            required: false,
            help: "per-chunk time limit in seconds; past it the process group is killed and the attempt fails",
        },
        ArgSpec {
            name: "start_timeout_s",
            kind: ArgKind::Float { min: 0.001, max: 3_600.0 },
            default: "60",
            required: false,
            help: "mode=worker: time a new worker has to start and answer the handshake; past it the attempt fails",
        },
    ],
};

/// Every built-in kernel.
pub const BUILTIN: &[KernelSpec] = &[PLACEHOLDER, COLLATZ, EXEC];

/// The built-in declaration of `name`, if any.
pub fn find(name: &str) -> Option<&'static KernelSpec> {
    BUILTIN.iter().find(|k| k.name == name)
}

/// Comma-separated list of built-in kernel names, for error messages.
pub fn known_names() -> String {
    BUILTIN
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
}

impl KernelSpec {
    /// The protobuf declaration.
    pub fn decl(&self) -> KernelDecl {
        KernelDecl {
            name: self.name.to_string(),
            help: self.help.to_string(),
            args: self
                .args
                .iter()
                .map(|a| {
                    let (ty, min, max, choices) = match a.kind {
                        ArgKind::Int { min, max } => ("int", min as f64, max as f64, &[][..]),
                        ArgKind::Float { min, max } => ("float", min, max, &[][..]),
                        ArgKind::Text { max_len } => ("string", 0.0, max_len as f64, &[][..]),
                        ArgKind::Choice { values } => ("choice", 0.0, 0.0, values),
                    };
                    ArgDecl {
                        name: a.name.to_string(),
                        r#type: ty.to_string(),
                        default: a.default.to_string(),
                        min,
                        max,
                        required: a.required,
                        help: a.help.to_string(),
                        choices: choices.iter().map(|c| c.to_string()).collect(),
                    }
                })
                .collect(),
        }
    }
}

/// A rejected argument: which one and why, in words a user can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ArgError {
    /// `args.<name>`.
    pub field: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

fn arg_err(name: &str, message: String) -> ArgError {
    ArgError {
        field: format!("args.{name}"),
        message,
    }
}

/// Check one value against its declaration; returns it normalised.
fn check(a: &ArgDecl, raw: &str) -> Result<String, ArgError> {
    match a.r#type.as_str() {
        "int" => {
            let (min, max) = (a.min as i64, a.max as i64);
            raw.trim()
                .parse::<i64>()
                .ok()
                .filter(|v| (min..=max).contains(v))
                .map(|v| v.to_string())
                .ok_or_else(|| {
                    arg_err(
                        &a.name,
                        format!("must be a whole number in {min}..={max}, got {raw:?}"),
                    )
                })
        }
        "float" => raw
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= a.min && *v <= a.max)
            .map(|v| v.to_string())
            .ok_or_else(|| {
                arg_err(
                    &a.name,
                    format!("must be a number in {}..={}, got {raw:?}", a.min, a.max),
                )
            }),
        "string" => {
            let max = a.max as usize;
            if raw.len() > max || raw.contains('\0') {
                Err(arg_err(
                    &a.name,
                    format!("must be text of at most {max} bytes without NUL"),
                ))
            } else {
                Ok(raw.to_string())
            }
        }
        "choice" => {
            let v = raw.trim();
            if a.choices.iter().any(|c| c == v) {
                Ok(v.to_string())
            } else {
                Err(arg_err(
                    &a.name,
                    format!("must be one of {}, got {raw:?}", a.choices.join(", ")),
                ))
            }
        }
        other => Err(arg_err(
            &a.name,
            format!("declared with unknown type {other:?}"),
        )),
    }
}

/// Check `args` against `decl` and return them with defaults filled in.
pub fn validate_args(
    decl: &KernelDecl,
    args: &HashMap<String, String>,
) -> Result<BTreeMap<String, String>, ArgError> {
    for name in args.keys() {
        if !decl.args.iter().any(|a| a.name == *name) {
            let known: Vec<_> = decl.args.iter().map(|a| a.name.as_str()).collect();
            return Err(arg_err(
                name,
                format!(
                    "unknown argument for kernel {} (known: {})",
                    decl.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            ));
        }
    }
    let mut out = BTreeMap::new();
    for a in &decl.args {
        match args.get(&a.name) {
            Some(raw) => {
                out.insert(a.name.clone(), check(a, raw)?);
            }
            None if a.required => {
                return Err(arg_err(
                    &a.name,
                    format!("required by kernel {}: {}", decl.name, a.help),
                ));
            }
            None if a.default.is_empty() && a.r#type == "string" => {}
            None => {
                out.insert(a.name.clone(), check(a, &a.default)?);
            }
        }
    }
    Ok(out)
}

fn raw_arg<'a, S: std::hash::BuildHasher>(
    spec: &'a KernelSpec,
    args: &'a HashMap<String, String, S>,
    name: &str,
) -> Result<(&'a ArgSpec, &'a str), ArgError> {
    let a = spec
        .args
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| arg_err(name, format!("not declared by kernel {}", spec.name)))?;
    Ok((a, args.get(name).map(String::as_str).unwrap_or(a.default)))
}

/// An integer argument (validated at Submit; checked again here).
pub fn int_arg<S: std::hash::BuildHasher>(
    spec: &KernelSpec,
    args: &HashMap<String, String, S>,
    name: &str,
) -> Result<i64, ArgError> {
    let (a, raw) = raw_arg(spec, args, name)?;
    let ArgKind::Int { min, max } = a.kind else {
        return Err(arg_err(name, "is not an integer argument".into()));
    };
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| {
            arg_err(
                name,
                format!("must be a whole number in {min}..={max}, got {raw:?}"),
            )
        })
}

/// A float argument.
pub fn float_arg<S: std::hash::BuildHasher>(
    spec: &KernelSpec,
    args: &HashMap<String, String, S>,
    name: &str,
) -> Result<f64, ArgError> {
    let (a, raw) = raw_arg(spec, args, name)?;
    let ArgKind::Float { min, max } = a.kind else {
        return Err(arg_err(name, "is not a number argument".into()));
    };
    raw.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= min && *v <= max)
        .ok_or_else(|| {
            arg_err(
                name,
                format!("must be a number in {min}..={max}, got {raw:?}"),
            )
        })
}

/// A text argument ("" when absent and optional).
pub fn text_arg<'a, S: std::hash::BuildHasher>(
    spec: &'a KernelSpec,
    args: &'a HashMap<String, String, S>,
    name: &str,
) -> Result<&'a str, ArgError> {
    let (a, raw) = raw_arg(spec, args, name)?;
    if a.required && raw.is_empty() {
        return Err(arg_err(name, format!("required by kernel {}", spec.name)));
    }
    Ok(raw)
}

/// A choice argument: one of its declared values.
pub fn choice_arg<'a, S: std::hash::BuildHasher>(
    spec: &'a KernelSpec,
    args: &'a HashMap<String, String, S>,
    name: &str,
) -> Result<&'a str, ArgError> {
    let (a, raw) = raw_arg(spec, args, name)?;
    let ArgKind::Choice { values } = a.kind else {
        return Err(arg_err(name, "is not a choice argument".into()));
    };
    values
        .iter()
        .copied()
        .find(|v| *v == raw.trim())
        .ok_or_else(|| {
            arg_err(
                name,
                format!("must be one of {}, got {raw:?}", values.join(", ")),
            )
        })
}

/// The placeholder's value of parameter `p`: `(7p + 13) mod 1000 + frac(p)`,
/// `frac(p)` being the decimal number `0.<p mod 100>` (5 → 0.5, 10 → 0.1).
pub fn placeholder_value(p: u64) -> f64 {
    let m = p % 100;
    // "0.<m>": one decimal digit for m < 10 (0.5), two otherwise (0.25, 0.1 for 10).
    let frac = if m < 10 {
        m as f64 / 10.0
    } else {
        m as f64 / 100.0
    };
    ((7 * (p % 1000) + 13) % 1000) as f64 + frac
}

/// Exact sum of [`placeholder_value`] over `0..n`, in hundredths (every value
/// has at most two decimals), in closed form: the integer part cycles every
/// 1000 parameters, the fraction every 100. 10,000 → 500,035,500.
pub fn placeholder_expected_sum_hundredths(n: u64) -> u128 {
    let int_part = |k: u64| -> u128 { (0..k).map(|p| ((7 * p + 13) % 1000) as u128).sum() };
    let frac_part = |k: u64| -> u128 {
        (0..k)
            .map(|m| if m < 10 { (m * 10) as u128 } else { m as u128 })
            .sum()
    };
    (n / 1000) as u128 * int_part(1000) * 100
        + int_part(n % 1000) * 100
        + (n / 100) as u128 * frac_part(100)
        + frac_part(n % 100)
}

/// Collatz stopping time: steps from `p` to 1 (0 for 0 and 1). Uses u128 so
/// no start value below 2^64 can overflow on the way up.
pub fn collatz_steps(p: u64) -> u64 {
    let mut n = p as u128;
    let mut steps = 0;
    while n > 1 {
        n = if n.is_multiple_of(2) {
            n / 2
        } else {
            3 * n + 1
        };
        steps += 1;
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn placeholder_reference_values() {
        assert_eq!(placeholder_value(0), 13.0);
        assert_eq!(placeholder_value(5), 48.5);
        assert_eq!(placeholder_value(10), 83.1);
        assert_eq!(placeholder_value(99), 706.0 + 0.99);
        assert_eq!(placeholder_expected_sum_hundredths(10_000), 500_035_500);
        assert_eq!(placeholder_expected_sum_hundredths(1_000), 50_003_550);
        let direct: f64 = (0..12_345).map(placeholder_value).sum();
        let closed = placeholder_expected_sum_hundredths(12_345) as f64 / 100.0;
        assert!((direct - closed).abs() < 1e-6, "{direct} vs {closed}");
    }

    #[test]
    fn collatz_known_values() {
        assert_eq!(collatz_steps(0), 0);
        assert_eq!(collatz_steps(1), 0);
        assert_eq!(collatz_steps(6), 8);
        assert_eq!(collatz_steps(27), 111);
        assert_eq!(collatz_steps(837_799), 524);
    }

    #[test]
    fn defaults_are_filled() {
        let out = validate_args(&PLACEHOLDER.decl(), &args(&[])).unwrap();
        assert_eq!(out.get("work_ms").map(String::as_str), Some("0"));
        let out = validate_args(&EXEC.decl(), &args(&[("program", "/bin/cat")])).unwrap();
        assert_eq!(out.get("timeout_s").map(String::as_str), Some("600"));
        assert!(!out.contains_key("args"));
    }

    #[test]
    fn bad_arguments_name_the_field_and_range() {
        let p = PLACEHOLDER.decl();
        let e = validate_args(&p, &args(&[("work_ms", "-1")])).unwrap_err();
        assert_eq!(e.field, "args.work_ms");
        assert!(e.message.contains("0..=60000"), "{e}");
        let e = validate_args(&p, &args(&[("work_ms", "soon")])).unwrap_err();
        assert!(e.message.contains("\"soon\""), "{e}");
        let e = validate_args(&p, &args(&[("speed", "1")])).unwrap_err();
        assert_eq!(e.field, "args.speed");
        assert!(e.message.contains("known: work_ms"), "{e}");
        let x = EXEC.decl();
        let e = validate_args(&x, &args(&[])).unwrap_err();
        assert_eq!(e.field, "args.program");
        assert!(e.message.contains("required"), "{e}");
        let e = validate_args(&x, &args(&[("program", "p"), ("timeout_s", "0")])).unwrap_err();
        assert!(e.message.contains("0.001..=86400"), "{e}");
        let e = validate_args(&x, &args(&[("program", "p"), ("mode", "daemon")])).unwrap_err();
        assert_eq!(e.field, "args.mode");
        assert!(e.message.contains("one of chunk, worker"), "{e}");
        let ok = validate_args(&x, &args(&[("program", "p"), ("mode", "worker")])).unwrap();
        assert_eq!(ok.get("mode").map(String::as_str), Some("worker"));
        assert_eq!(choice_arg(&EXEC, &HashMap::new(), "mode").unwrap(), "chunk");
        let e = validate_args(&COLLATZ.decl(), &args(&[("x", "1")])).unwrap_err();
        assert!(e.message.contains("known: none"), "{e}");
    }
}
