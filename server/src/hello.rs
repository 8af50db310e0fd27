//! Bounds on what an agent sends over its session. An agent token must not
//! be able to make records that slow every reader (ListAgents, Status read
//! every live agent's record) or grow Redis: every field of Hello is bounded
//! here, and a heartbeat's lists are trimmed to what an honest agent sends.

use prost::Message;
use ttg_proto::keys::valid_agent_id;
use ttg_proto::v1::{Heartbeat, Hello};

/// Largest Hello, encoded (kernel declarations included).
pub const MAX_HELLO_BYTES: usize = 16 * 1024;
/// Longest host name (DNS allows 253).
pub const MAX_HOST: usize = 255;
/// Longest version string.
pub const MAX_VERSION: usize = 64;
/// Most kernels one agent offers.
pub const MAX_KERNELS: usize = 64;
/// Longest kernel name.
pub const MAX_KERNEL_NAME: usize = 64;
/// Largest concurrency.
pub const MAX_CONCURRENCY: u32 = 4_096;
/// Instance secret length range.
pub const INSTANCE_LEN: std::ops::RangeInclusive<usize> = 16..=64;
/// Most held chunks one heartbeat reports (an agent holds at most
/// 2 × concurrency + 64).
pub const MAX_HELD: usize = 2 * MAX_CONCURRENCY as usize + 64;
/// Most latencies one heartbeat carries.
pub const MAX_LATENCIES: usize = 4_096;
/// Longest string in a held chunk (run id, entry id, traceparent).
const MAX_HELD_STRING: usize = 128;

/// A Hello field out of bounds: the field and the allowed range.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {message}")]
pub struct HelloError {
    /// The field, e.g. `hello.host`.
    pub field: &'static str,
    /// What is allowed.
    pub message: String,
}

fn bad(field: &'static str, message: impl Into<String>) -> HelloError {
    HelloError {
        field,
        message: message.into(),
    }
}

/// Check a Hello; the error names the field and the allowed range.
pub fn check_hello(h: &Hello) -> Result<(), HelloError> {
    if !valid_agent_id(&h.agent_id) {
        return Err(bad(
            "hello.agent_id",
            "must be 1..=64 characters of letters, digits and '-'",
        ));
    }
    let len = h.encoded_len();
    if len > MAX_HELLO_BYTES {
        return Err(bad(
            "hello",
            format!("at most {MAX_HELLO_BYTES} bytes encoded, got {len}"),
        ));
    }
    if h.host.len() > MAX_HOST || h.host.chars().any(char::is_control) {
        return Err(bad(
            "hello.host",
            format!("at most {MAX_HOST} bytes, no control characters"),
        ));
    }
    if h.version.len() > MAX_VERSION || h.version.chars().any(char::is_control) {
        return Err(bad(
            "hello.version",
            format!("at most {MAX_VERSION} bytes, no control characters"),
        ));
    }
    if !(1..=MAX_CONCURRENCY).contains(&h.concurrency) {
        return Err(bad(
            "hello.concurrency",
            format!("must be in 1..={MAX_CONCURRENCY}, got {}", h.concurrency),
        ));
    }
    if h.kernels.len() > MAX_KERNELS || h.kernel_decls.len() > MAX_KERNELS {
        return Err(bad(
            "hello.kernels",
            format!("at most {MAX_KERNELS} kernels and declarations"),
        ));
    }
    let name_ok = |k: &str| {
        !k.is_empty()
            && k.len() <= MAX_KERNEL_NAME
            && k.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
    };
    if let Some(name) = h
        .kernels
        .iter()
        .map(String::as_str)
        .chain(h.kernel_decls.iter().map(|d| d.name.as_str()))
        .find(|k| !name_ok(k))
    {
        let shown: String = name.chars().take(MAX_KERNEL_NAME).collect();
        return Err(bad(
            "hello.kernels",
            format!("names are 1..={MAX_KERNEL_NAME} characters of letters, digits, '-', '_' and '.', got {shown:?}"),
        ));
    }
    if !INSTANCE_LEN.contains(&h.instance.len())
        || !h
            .instance
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(bad(
            "hello.instance",
            format!("must be {}..={} characters of letters, digits and '-' (a random secret of the agent process; upgrade the agent)",
            INSTANCE_LEN.start(),
            INSTANCE_LEN.end()),
        ));
    }
    Ok(())
}

/// Trim a heartbeat to what an honest agent sends; returns whether anything
/// was cut (worth a warning: the agent is buggy or hostile).
pub fn trim_heartbeat(hb: &mut Heartbeat) -> bool {
    let before = (hb.held.len(), hb.ack_latency_ms.len());
    hb.held.truncate(MAX_HELD);
    hb.held.retain(|c| {
        c.run_id.len() <= MAX_HELD_STRING
            && c.entry_id.len() <= MAX_HELD_STRING
            && c.traceparent.len() <= MAX_HELD_STRING
    });
    hb.ack_latency_ms.truncate(MAX_LATENCIES);
    before != (hb.held.len(), hb.ack_latency_ms.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello() -> Hello {
        Hello {
            agent_id: "a-1".into(),
            host: "h".into(),
            version: "0.1.0".into(),
            concurrency: 4,
            kernels: vec!["placeholder".into(), "exec".into()],
            instance: "0123456789abcdef0123456789abcdef".into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_hello_field_is_bounded() {
        assert!(check_hello(&hello()).is_ok());
        type Mutation = Box<dyn Fn(&mut Hello)>;
        let cases: Vec<(&str, Mutation)> = vec![
            ("hello.host", Box::new(|h| h.host = "x".repeat(4 << 20))),
            (
                "hello.host",
                Box::new(|h| h.host = "x".repeat(MAX_HOST + 1)),
            ),
            ("hello.version", Box::new(|h| h.version = "v".repeat(65))),
            ("hello.concurrency", Box::new(|h| h.concurrency = 0)),
            ("hello.concurrency", Box::new(|h| h.concurrency = 1 << 20)),
            (
                "hello.kernels",
                Box::new(|h| h.kernels = vec!["k".into(); 65]),
            ),
            (
                "hello.kernels",
                Box::new(|h| h.kernels = vec!["k k".into()]),
            ),
            (
                "hello.kernels",
                Box::new(|h| h.kernels = vec!["k".repeat(65)]),
            ),
            ("hello.instance", Box::new(|h| h.instance.clear())),
            ("hello.instance", Box::new(|h| h.instance = "short".into())),
            ("hello.agent_id", Box::new(|h| h.agent_id = "a b".into())),
        ];
        for (field, mutate) in cases {
            let mut h = hello();
            mutate(&mut h);
            let err = check_hello(&h).unwrap_err().to_string();
            assert!(
                err.starts_with(field) || err.starts_with("hello:"),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn heartbeats_are_trimmed() {
        let mut hb = Heartbeat {
            held: vec![Default::default(); MAX_HELD + 10],
            ack_latency_ms: vec![1; MAX_LATENCIES + 1],
            ..Default::default()
        };
        assert!(trim_heartbeat(&mut hb));
        assert_eq!(hb.held.len(), MAX_HELD);
        assert_eq!(hb.ack_latency_ms.len(), MAX_LATENCIES);
        assert!(!trim_heartbeat(&mut hb));
    }
}
