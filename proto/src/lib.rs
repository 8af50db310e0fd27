//! `ttg-proto`: the contract between TTG's processes.
//!
//! Everything two processes must agree on lives here, so the server and the
//! agents can never drift apart:
//! - [`v1`]: the gRPC services and records generated from `ttg/v1/*.proto`.
//! - [`keys`]: Redis key names under one prefix, and run ids.
//! - [`chunking`]: how `params` is cut into chunks (no gap, no overlap).
//! - [`client`]: gRPC client TLS and bearer-token set-up (agents, ttgctl).
//! - [`kernels`]: the declarations of the built-in kernels and their arguments,
//!   used by the server to validate `Submit` and by agents to parse arguments.
//! - [`records`]: what processes exchange through Redis (task entries, run
//!   hashes, events, packed values) and the one decoder of each.
//! - [`scripts`]: the atomic Lua scripts (`proto/lua/*.lua`) and one typed
//!   builder per script, the only place their KEYS and ARGV are ordered.
//! - [`reclaim`]: re-queueing a dead agent's deliveries, at most once.
//! - [`redis_conn`]: connecting to Redis with bounded timeouts; consumer groups.
//! - [`runtime`]: the shutdown signal and back-off every binary uses.
//! - [`space`]: parameter spaces (named axes, grid or sampled) and index → point.
//! - [`telemetry`]: logging set-up shared by every binary.

pub mod chunking;
pub mod client;
pub mod export;
pub mod json;
pub mod kernels;
pub mod keys;
pub mod reclaim;
pub mod records;
pub mod redis_conn;
pub mod redis_target;
pub mod runtime;
pub mod sched;
pub mod scripts;
pub mod space;
pub mod telemetry;

/// Generated gRPC services and messages of package `ttg.v1`.
pub mod v1 {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("ttg.v1");

    /// Encoded descriptor set of `ttg.v1`, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("ttg_descriptor");
}

/// Milliseconds since the Unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
