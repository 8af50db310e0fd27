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
