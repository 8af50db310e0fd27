//! The worker protocol, version 1 (docs/kernels.md): newline-delimited JSON
//! on the program's stdin (agent → program) and stdout (program → agent),
//! one object per line, each with a `type`.
//!
//! ```text
//! agent → {"type":"hello","protocol":1,"run_id":"r-…"}
//!       ← {"type":"ready","protocol":1}
//! agent → {"type":"chunk","chunk":7,"attempt":1,"start":700,"end":800}
//!       ← {"type":"result","chunk":7,"values":[…]}      one finite number per parameter
//!       ← {"type":"error","chunk":7,"error":"Traceback …"}   fails this chunk only
//! agent closes stdin                                     the program exits
//! ```
//!
//! Unknown fields are ignored both ways, so later versions can add fields
//! without a new version number; a change that breaks a version-1 program
//! gets a new number, and the handshake refuses a mismatch by name.

use serde::{Deserialize, Serialize};

/// The protocol version this agent speaks.
pub const VERSION: u32 = 1;

/// A message to the program.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ToProgram<'a> {
    /// First line: the protocol version and the run this process serves.
    Hello {
        /// [`VERSION`].
        protocol: u32,
        /// The one run this process serves.
        run_id: &'a str,
    },
    /// Compute parameters `start .. end`.
    Chunk {
        /// Chunk index (echoed in the reply).
        chunk: u64,
        /// Attempt number, 1 for the first.
        attempt: u32,
        /// First parameter.
        start: u64,
        /// One past the last parameter.
        end: u64,
    },
}

impl ToProgram<'_> {
    /// The message as one line, newline included.
    pub fn line(&self) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        v.push(b'\n');
        v
    }
}

/// A message from the program.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FromProgram {
    /// Answer to hello: the version the program speaks.
    Ready {
        /// Version; must equal [`VERSION`].
        protocol: u32,
    },
    /// A chunk's values.
    Result {
        /// The chunk answered.
        chunk: u64,
        /// One per parameter.
        values: Vec<f64>,
    },
    /// The user's code failed on a chunk (or, without `chunk`, on start).
    Error {
        /// The chunk that failed, if any.
        #[serde(default)]
        chunk: Option<u64>,
        /// What went wrong (a traceback, say).
        error: String,
    },
}

/// Why a line is not a protocol message: names what was printed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("{what}: {shown:?}")]
pub struct BadLine {
    what: String,
    shown: String,
}

/// Parse one line of the program's stdout.
pub fn parse(line: &[u8]) -> Result<FromProgram, BadLine> {
    serde_json::from_slice(line).map_err(|e| BadLine {
        what: if line.first() == Some(&b'{') {
            format!("not a TTG protocol message ({e})")
        } else {
            "not a TTG protocol message (a line of JSON with a \"type\")".to_string()
        },
        shown: super::shown(&String::from_utf8_lossy(line)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_one_line_of_json_each() {
        let h = ToProgram::Hello {
            protocol: VERSION,
            run_id: "r-1",
        };
        assert_eq!(
            h.line(),
            b"{\"type\":\"hello\",\"protocol\":1,\"run_id\":\"r-1\"}\n"
        );
        let c = ToProgram::Chunk {
            chunk: 7,
            attempt: 2,
            start: 700,
            end: 800,
        };
        assert_eq!(
            c.line(),
            b"{\"type\":\"chunk\",\"chunk\":7,\"attempt\":2,\"start\":700,\"end\":800}\n"
        );
    }

    #[test]
    fn replies_parse_and_garbage_is_named() {
        assert_eq!(
            parse(br#"{"type":"ready","protocol":1,"library":"ttg-python 0.1"}"#),
            Ok(FromProgram::Ready { protocol: 1 })
        );
        assert_eq!(
            parse(br#"{"type":"result","chunk":3,"values":[1,2.5e0]}"#),
            Ok(FromProgram::Result {
                chunk: 3,
                values: vec![1.0, 2.5]
            })
        );
        assert_eq!(
            parse(br#"{"type":"error","error":"no model"}"#),
            Ok(FromProgram::Error {
                chunk: None,
                error: "no model".into()
            })
        );
        let e = parse(b"hello world").unwrap_err().to_string();
        assert!(e.contains("\"hello world\""), "{e}");
        // JSON has no NaN or infinity: such a value is named, not stored.
        let e = parse(br#"{"type":"result","chunk":1,"values":[NaN]}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("NaN"), "{e}");
        assert!(parse(br#"{"type":"result","chunk":1,"values":[1e999]}"#).is_err());
        assert!(parse(br#"{"type":"shout"}"#).is_err());
    }
}
