//! Declarations of the built-in kernels: name, arguments, their types, defaults
//! and allowed ranges. The server validates `Submit` against these (so a bad
//! argument is rejected before anything is queued); agents parse the same
//! arguments with the same code.

use std::collections::{BTreeMap, HashMap};

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
}

/// One declared argument.
#[derive(Clone, Copy, Debug)]
pub struct ArgSpec {
    /// Argument name, as in `--arg name=value`.
    pub name: &'static str,
    /// Type and range.
    pub kind: ArgKind,
    /// Value used when the argument is not given.
    pub default: &'static str,
    /// One line for `ttgctl kernels` and the docs.
    pub help: &'static str,
}

/// A kernel's declaration.
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
        help: "simulated work per parameter, milliseconds",
    }],
};

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

/// Every built-in kernel.
pub const BUILTIN: &[KernelSpec] = &[PLACEHOLDER];

/// The declaration of kernel `name`, if it is known.
pub fn find(name: &str) -> Option<&'static KernelSpec> {
    BUILTIN.iter().find(|k| k.name == name)
}

/// Comma-separated list of known kernel names, for error messages.
pub fn known_names() -> String {
    BUILTIN
        .iter()
        .map(|k| k.name)
        .collect::<Vec<_>>()
        .join(", ")
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

/// Check `args` against `spec` and return them with defaults filled in.
pub fn validate_args(
    spec: &KernelSpec,
    args: &HashMap<String, String>,
) -> Result<BTreeMap<String, String>, ArgError> {
    let mut out = BTreeMap::new();
    for name in args.keys() {
        if !spec.args.iter().any(|a| a.name == name) {
            let known: Vec<_> = spec.args.iter().map(|a| a.name).collect();
            return Err(ArgError {
                field: format!("args.{name}"),
                message: format!(
                    "unknown argument for kernel {} (known: {})",
                    spec.name,
                    if known.is_empty() {
                        "none".to_string()
                    } else {
                        known.join(", ")
                    }
                ),
            });
        }
    }
    for a in spec.args {
        let raw = args.get(a.name).map(String::as_str).unwrap_or(a.default);
        match a.kind {
            ArgKind::Int { min, max } => {
                let ok = raw
                    .trim()
                    .parse::<i64>()
                    .ok()
                    .filter(|v| (min..=max).contains(v));
                let Some(v) = ok else {
                    return Err(ArgError {
                        field: format!("args.{}", a.name),
                        message: format!("must be a whole number in {min}..={max}, got {raw:?}"),
                    });
                };
                out.insert(a.name.to_string(), v.to_string());
            }
        }
    }
    Ok(out)
}

/// Read an integer argument that [`validate_args`] already checked, falling
/// back to the declared default.
pub fn int_arg<S: std::hash::BuildHasher>(
    spec: &KernelSpec,
    args: &HashMap<String, String, S>,
    name: &str,
) -> Result<i64, ArgError> {
    let a = spec
        .args
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ArgError {
            field: format!("args.{name}"),
            message: format!("not declared by kernel {}", spec.name),
        })?;
    let raw = args.get(name).map(String::as_str).unwrap_or(a.default);
    let ArgKind::Int { min, max } = a.kind;
    raw.trim()
        .parse::<i64>()
        .ok()
        .filter(|v| (min..=max).contains(v))
        .ok_or_else(|| ArgError {
            field: format!("args.{name}"),
            message: format!("must be a whole number in {min}..={max}, got {raw:?}"),
        })
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
    fn defaults_are_filled() {
        let out = validate_args(&PLACEHOLDER, &args(&[])).unwrap();
        assert_eq!(out.get("work_ms").map(String::as_str), Some("0"));
    }

    #[test]
    fn bad_arguments_name_the_field_and_range() {
        let e = validate_args(&PLACEHOLDER, &args(&[("work_ms", "-1")])).unwrap_err();
        assert_eq!(e.field, "args.work_ms");
        assert!(e.message.contains("0..=60000"), "{e}");
        let e = validate_args(&PLACEHOLDER, &args(&[("work_ms", "soon")])).unwrap_err();
        assert!(e.message.contains("\"soon\""), "{e}");
        let e = validate_args(&PLACEHOLDER, &args(&[("speed", "1")])).unwrap_err();
        assert_eq!(e.field, "args.speed");
        assert!(e.message.contains("known: work_ms"), "{e}");
    }
}
