//! The scheduler's contract, shared by the server (Submit puts a run in its
//! class's zset, Status reads its queue) and agents (claim.lua chooses the
//! chunks): priority names, limits, and the reply of a claim. The choice
//! itself is made in `proto/lua/claim.lua`, in one atomic step per claim;
//! docs/scheduling.md explains it.

use redis::streams::{StreamKey, StreamReadReply};
use redis::{FromRedisValue, Value};

use crate::keys::{Keys, GROUP};
use crate::scripts::Scripts;
use crate::v1::Priority;

/// Highest `max_in_flight` a run may ask for.
pub const MAX_IN_FLIGHT: u32 = 1_000_000;
/// Highest fair-share weight.
pub const MAX_WEIGHT: u32 = 100;
/// Every this-many-th chunk handed out goes to the lowest class with work.
pub const AGING: u64 = 20;

/// A class's place in the scheduler's scores: high 0, normal 1, low 2.
pub fn class_index(p: Priority) -> u64 {
    match p {
        Priority::High => 0,
        Priority::Normal => 1,
        Priority::Low => 2,
    }
}

/// Score of a run with nothing in flight (prelude.lua's `sched_score`):
/// its class's base, 2^46 per class.
pub fn initial_score(p: Priority) -> f64 {
    (class_index(p) as f64) * 2f64.powi(46)
}

/// The name of a priority class as the CLI and docs spell it.
pub fn priority_name(p: Priority) -> &'static str {
    match p {
        Priority::High => "high",
        Priority::Normal => "normal",
        Priority::Low => "low",
    }
}

/// A priority class from its name (`high`, `normal`, `low`).
pub fn parse_priority(s: &str) -> Option<Priority> {
    match s.trim().to_ascii_lowercase().as_str() {
        "high" => Some(Priority::High),
        "normal" => Some(Priority::Normal),
        "low" => Some(Priority::Low),
        _ => None,
    }
}

/// What a claim got: the entries delivered, or (when none was) the last id
/// of each wake stream to block on.
#[derive(Debug, Default)]
pub struct ClaimReply {
    /// Per tasks stream, the entries now pending for the caller.
    pub keys: Vec<StreamKey>,
    /// One id per kernel, in the order the claim named them; empty when
    /// the scheduler handed something out.
    pub wake_ids: Vec<String>,
}

/// Claim up to `n` chunks of `kernels` for `consumer`: claim.lua chooses
/// them and appends their entries, and an `XREADGROUP … >` in the same
/// MULTI delivers them (and any entry appended before the scheduler, e.g.
/// by an older server) to `consumer`, so no other agent can take them in
/// between and none is left undelivered. Loads the script after NOSCRIPT.
pub async fn claim<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    scripts: &Scripts,
    keys: &Keys,
    kernels: &[String],
    consumer: &str,
    n: usize,
) -> redis::RedisResult<ClaimReply> {
    let mut read = redis::cmd("XREADGROUP");
    read.arg("GROUP")
        .arg(GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(n.clamp(1, 1000))
        .arg("STREAMS");
    for k in kernels {
        read.arg(keys.tasks(k));
    }
    for _ in kernels {
        read.arg(">");
    }
    let mut p = redis::pipe();
    p.atomic()
        .ignore_errors()
        .add_command(scripts.claim_cmd(keys, kernels, n))
        .add_command(read);
    // Errors per command: the read runs even if the script failed (say
    // NOSCRIPT after a Redis restart), and what it delivered is ours to
    // compute, so it is returned, never dropped.
    let mut replies: Vec<redis::RedisResult<Value>> = p.query_async(conn).await?;
    if matches!(replies.first(), Some(Err(e)) if e.code() == Some("NOSCRIPT"))
        && matches!(replies.get(1), Some(Ok(Value::Nil)))
    {
        // Redis restarted or was flushed since the script was loaded, and
        // the read got nothing: load it and claim again.
        scripts.load_claim(conn).await?;
        replies = p.query_async(conn).await?;
    }
    let read = replies.pop().unwrap_or(Ok(Value::Nil))?;
    let keys = match read {
        Value::Nil => Vec::new(),
        other => StreamReadReply::from_redis_value(other)?.keys,
    };
    let wake_ids = match replies.pop().unwrap_or(Ok(Value::Nil)) {
        Ok(Value::Array(mut parts)) if parts.len() == 2 => {
            Vec::<String>::from_redis_value(parts.pop().unwrap_or(Value::Nil))?
        }
        Ok(_) => {
            return Err(redis::ParsingError::from("claim.lua reply: not a pair".to_string()).into())
        }
        Err(e) if e.code() == Some("NOSCRIPT") => {
            scripts.load_claim(conn).await?;
            Vec::new()
        }
        Err(e) if !keys.is_empty() => {
            tracing::warn!(error = %e, "claim script failed; computing what the read delivered");
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    Ok(ClaimReply { keys, wake_ids })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_names_round_trip() {
        for p in [Priority::High, Priority::Normal, Priority::Low] {
            assert_eq!(parse_priority(priority_name(p)), Some(p));
        }
        assert_eq!(parse_priority(" HIGH "), Some(Priority::High));
        assert_eq!(parse_priority("urgent"), None);
    }
}
