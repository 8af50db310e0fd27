//! The scheduler's contract, shared by the server (Submit puts a run in its
//! class's zset, Status reads its queue) and agents (claim.lua chooses the
//! chunks): priority names, limits, and the reply of a claim. The choice
//! itself is made in `proto/lua/claim.lua`, in one atomic step per claim;
//! docs/scheduling.md explains it.

use redis::streams::{StreamKey, StreamReadReply};
use redis::{FromRedisValue, Value};

use crate::v1::Priority;

/// Highest `max_in_flight` a run may ask for.
pub const MAX_IN_FLIGHT: u32 = 1_000_000;
/// Highest fair-share weight.
pub const MAX_WEIGHT: u32 = 100;
/// Every this-many-th chunk handed out goes to the lowest class with work.
pub const AGING: u64 = 20;

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

/// What `claim.lua` answered: the entries delivered, or (when none was)
/// the last id of each wake stream to block on.
#[derive(Debug, Default)]
pub struct ClaimReply {
    /// Per tasks stream, the entries now pending for the caller.
    pub keys: Vec<StreamKey>,
    /// One id per kernel, in the order the claim named them; empty when
    /// entries were delivered.
    pub wake_ids: Vec<String>,
}

impl FromRedisValue for ClaimReply {
    fn from_redis_value(v: Value) -> Result<Self, redis::ParsingError> {
        let bad = |what: &str| redis::ParsingError::from(format!("claim.lua reply: {what}"));
        let Value::Array(parts) = v else {
            return Err(bad("not an array"));
        };
        let Ok::<[Value; 2], _>([entries, wakes]) = parts.try_into() else {
            return Err(bad("not a pair"));
        };
        let keys = match entries {
            Value::Array(a) if a.is_empty() => Vec::new(),
            Value::Nil => Vec::new(),
            other => StreamReadReply::from_redis_value(other)?.keys,
        };
        let wake_ids = match wakes {
            Value::Nil => Vec::new(),
            other => Vec::<String>::from_redis_value(other)?,
        };
        Ok(Self { keys, wake_ids })
    }
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
