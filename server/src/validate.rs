//! What a Submit may ask for: the limits, the defaults and the checks, each
//! error naming the field and the allowed range.

use std::collections::BTreeMap;

use ttg_proto::chunking::chunk_count;
use ttg_proto::kernels;
use ttg_proto::keys::valid_run_id;
use ttg_proto::sched;
use ttg_proto::space::{check_output_names, validate_outputs, Space};
use ttg_proto::v1::{KernelDecl, Priority, SubmitRequest};

use crate::config::Limits;
use crate::error::{Error, Result};

/// Largest `params` a run may have.
pub const MAX_PARAMS: u64 = 10_000_000_000;

/// Largest `chunk_size`.
pub const MAX_CHUNK_SIZE: u64 = 1_000_000;

/// Most chunks one run may have.
pub const MAX_CHUNKS: u64 = 1_000_000;

/// Most attempts per chunk.
pub const MAX_ATTEMPTS: u32 = 100;

/// Longest run name.
pub const MAX_NAME: usize = 128;

/// Default parameters per chunk.
pub const DEFAULT_CHUNK_SIZE: u64 = 100;

/// Default attempts per chunk.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;

/// Default fail-fast streak (failed attempts in a row with one error).
pub const DEFAULT_FAIL_FAST: u32 = 10;

/// Largest fail-fast streak.
pub const MAX_FAIL_FAST: u32 = 100_000;

/// A Submit request that passed validation, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidSubmit {
    /// Parameters.
    pub params: u64,
    /// Parameters per chunk.
    pub chunk_size: u64,
    /// Number of chunks.
    pub chunks: u64,
    /// Kernel name.
    pub kernel: String,
    /// Arguments with defaults filled in.
    pub args: BTreeMap<String, String>,
    /// Attempts per chunk.
    pub max_attempts: u32,
    /// Run name.
    pub name: String,
    /// Milliseconds the run's data is kept after it ends.
    pub retention_ms: u64,
    /// Same-error failures in a row that stop the run (0: never).
    pub fail_fast: u32,
    /// The named space, normalised (None: `params`).
    pub space: Option<Space>,
    /// Named outputs as given (empty: one output named "value").
    pub outputs: Vec<String>,
    /// Scheduling class.
    pub priority: Priority,
    /// Most chunks in flight at once (0: no cap).
    pub max_in_flight: u32,
    /// Fair-share weight, 1 ..= 100.
    pub weight: u32,
}

/// Largest encoded space (agents read it once per run).
pub const MAX_SPACE_BYTES: usize = 1 << 20;

/// Check a Submit request; errors name the field and the allowed range.
/// `offered` are the declarations live agents published (for kernels that
/// are not built in).
pub fn validate_submit(
    req: &SubmitRequest,
    offered: &[KernelDecl],
    limits: &Limits,
) -> Result<ValidSubmit> {
    let (params, space) = check_space(req, limits)?;
    let (chunk_size, chunks) = check_shape(params, req.chunk_size, limits)?;
    if !req.outputs.is_empty() {
        validate_outputs(&req.outputs).map_err(|e| Error::invalid(e.field, e.message))?;
        let s = space.clone().unwrap_or_else(|| Space::params(params));
        check_output_names(&s, &req.outputs).map_err(|e| Error::invalid(e.field, e.message))?;
    }
    check_arg_sizes(req, limits)?;
    let kernel = if req.kernel.is_empty() {
        "placeholder"
    } else {
        req.kernel.as_str()
    };
    let decl = find_kernel(kernel, offered)?;
    let args =
        kernels::validate_args(&decl, &req.args).map_err(|e| Error::invalid(e.field, e.message))?;
    let max_attempts = req.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
    in_range("max_attempts", max_attempts, 1, MAX_ATTEMPTS, "")?;
    check_name(&req.name)?;
    let fail_fast = req.fail_fast.unwrap_or(DEFAULT_FAIL_FAST);
    in_range("fail_fast", fail_fast, 0, MAX_FAIL_FAST, " (0 = never)")?;
    let priority = Priority::try_from(req.priority).map_err(|_| {
        Error::invalid(
            "priority",
            format!(
                "must be one of PRIORITY_NORMAL (0), PRIORITY_HIGH (1), PRIORITY_LOW (2), got {}",
                req.priority
            ),
        )
    })?;
    in_range(
        "max_in_flight",
        req.max_in_flight,
        0,
        sched::MAX_IN_FLIGHT,
        " chunks (0 = no cap)",
    )?;
    in_range("weight", req.weight, 0, sched::MAX_WEIGHT, " (0 means 1)")?;
    let max_keep = limits.max_run_retention.as_secs().max(1);
    let retention_s = req
        .retention_s
        .unwrap_or_else(|| limits.run_retention.as_secs().max(1));
    in_range(
        "retention_s",
        retention_s,
        1,
        max_keep,
        " seconds (--max-run-retention)",
    )?;
    Ok(ValidSubmit {
        retention_ms: retention_s * 1_000,
        params,
        space,
        outputs: req.outputs.clone(),
        chunk_size,
        chunks,
        kernel: kernel.to_string(),
        args,
        max_attempts,
        name: req.name.clone(),
        fail_fast,
        priority,
        max_in_flight: req.max_in_flight,
        weight: req.weight.max(1),
    })
}

/// `field` must be in `lo..=hi`: "must be in lo..=hi<unit>, got v".
fn in_range<T: PartialOrd + std::fmt::Display>(
    field: &str,
    v: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<()> {
    if v < lo || v > hi {
        return Err(Error::invalid(
            field,
            format!("must be in {lo}..={hi}{unit}, got {v}"),
        ));
    }
    Ok(())
}

/// The run's number of points: `params`, or the size of `space` (then
/// `params` must be 0), with the space decoded and checked.
fn check_space(req: &SubmitRequest, limits: &Limits) -> Result<(u64, Option<Space>)> {
    let max = limits.max_params.min(MAX_PARAMS);
    let Some(w) = &req.space else {
        in_range("params", req.params, 1, max, "")?;
        return Ok((req.params, None));
    };
    if req.params != 0 {
        return Err(Error::invalid(
            "params",
            format!(
                "give params or space, not both (params = {}; a space's size is its number of points)",
                req.params
            ),
        ));
    }
    let bytes = prost::Message::encoded_len(w);
    if bytes > MAX_SPACE_BYTES {
        return Err(Error::invalid(
            "space",
            format!("at most {MAX_SPACE_BYTES} bytes encoded, got {bytes}"),
        ));
    }
    let named = |e: ttg_proto::space::SpaceError| {
        let field = if e.field.starts_with("space") {
            e.field
        } else {
            format!("space.{}", e.field)
        };
        Error::invalid(field, e.message)
    };
    let space = Space::from_wire(w).map_err(named)?;
    let n = space.validate(max).map_err(|e| {
        if e.field == "space" {
            Error::invalid("space", format!("{} (--max-params)", e.message))
        } else {
            named(e)
        }
    })?;
    Ok((n, Some(space)))
}

/// chunk_size and the chunks `params` points make: `(chunk_size, chunks)`.
fn check_shape(params: u64, chunk_size: Option<u64>, limits: &Limits) -> Result<(u64, u64)> {
    let chunk_size = chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE);
    in_range("chunk_size", chunk_size, 1, MAX_CHUNK_SIZE, "")?;
    let chunks = chunk_count(params, chunk_size);
    let max_chunks = limits.max_chunks.min(MAX_CHUNKS);
    if chunks > max_chunks {
        return Err(Error::invalid(
            "chunk_size",
            format!(
                "{params} params in chunks of {chunk_size} make {chunks} chunks; at most {max_chunks} chunks per run are allowed (use chunk_size >= {})",
                params.div_ceil(max_chunks)
            ),
        ));
    }
    Ok((chunk_size, chunks))
}

/// How many arguments, and how long each name and value.
fn check_arg_sizes(req: &SubmitRequest, limits: &Limits) -> Result<()> {
    if req.args.len() > limits.max_args {
        return Err(Error::invalid(
            "args",
            format!(
                "at most {} arguments (--max-args), got {}",
                limits.max_args,
                req.args.len()
            ),
        ));
    }
    if let Some((k, _)) = req
        .args
        .iter()
        .find(|(k, v)| k.len() > 64 || v.len() > limits.max_arg_bytes)
    {
        let shown: String = k.chars().take(64).collect();
        return Err(Error::invalid(
            format!("args.{shown}"),
            format!(
                "names are at most 64 bytes and values at most {} bytes (--max-arg-bytes)",
                limits.max_arg_bytes
            ),
        ));
    }
    Ok(())
}

/// The declaration of `kernel`: built in, or offered by a live agent.
fn find_kernel(kernel: &str, offered: &[KernelDecl]) -> Result<KernelDecl> {
    kernels::find(kernel)
        .map(|k| k.decl())
        .or_else(|| offered.iter().find(|d| d.name == kernel).cloned())
        .ok_or_else(|| {
            let mut known: Vec<String> = kernels::BUILTIN
                .iter()
                .map(|k| k.name.to_string())
                .collect();
            known.extend(offered.iter().map(|d| d.name.clone()));
            known.sort();
            known.dedup();
            Error::invalid(
                "kernel",
                format!("unknown kernel {kernel:?} (known: {})", known.join(", ")),
            )
        })
}

/// A run name: at most MAX_NAME characters, none of Unicode Cc or Cf.
fn check_name(name: &str) -> Result<()> {
    if name.chars().count() > MAX_NAME {
        return Err(Error::invalid(
            "name",
            format!("must be at most {MAX_NAME} characters"),
        ));
    }
    if let Some(c) = name.chars().find(|&c| is_control_or_format(c)) {
        return Err(Error::invalid(
            "name",
            format!(
                "must not contain control or format characters (Unicode Cc, Cf), got U+{:04X}",
                c as u32
            ),
        ));
    }
    Ok(())
}

/// Unicode categories Cc (controls) and Cf (format characters: bidi
/// overrides such as U+202E, zero-width joiners, the BOM …), which can make
/// a name display as something else. Cf as of Unicode 15.1.
pub fn is_control_or_format(c: char) -> bool {
    const CF: &[(u32, u32)] = &[
        (0x00AD, 0x00AD),
        (0x0600, 0x0605),
        (0x061C, 0x061C),
        (0x06DD, 0x06DD),
        (0x070F, 0x070F),
        (0x0890, 0x0891),
        (0x08E2, 0x08E2),
        (0x180E, 0x180E),
        (0x200B, 0x200F),
        (0x202A, 0x202E),
        (0x2060, 0x2064),
        (0x2066, 0x206F),
        (0xFEFF, 0xFEFF),
        (0xFFF9, 0xFFFB),
        (0x110BD, 0x110BD),
        (0x110CD, 0x110CD),
        (0x13430, 0x1343F),
        (0x1BCA0, 0x1BCA3),
        (0x1D173, 0x1D17A),
        (0xE0001, 0xE0001),
        (0xE0020, 0xE007F),
    ];
    let u = c as u32;
    c.is_control() || CF.iter().any(|&(lo, hi)| (lo..=hi).contains(&u))
}

/// Check a run id from a request before it is used in a key.
pub fn check_run_id(run_id: &str) -> Result<()> {
    if valid_run_id(run_id) {
        Ok(())
    } else {
        Err(Error::invalid(
            "run_id",
            "must be 1..=64 characters of letters, digits and '-' (as printed by submit)",
        ))
    }
}
