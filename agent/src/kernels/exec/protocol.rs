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
//! A run with a named space or outputs adds fields: hello carries `axes`
//! and `outputs` (names), each chunk carries `points` (one object per
//! point, axis name → value), and a result gives `outputs` (output name →
//! one number per point) instead of `values`.
//!
//! Unknown fields are ignored both ways, so later versions can add fields
//! without a new version number; a change that breaks a version-1 program
//! gets a new number, and the handshake refuses a mismatch by name.

use serde::{Deserialize, Serialize};
use ttg_proto::space::Value;

use crate::kernels::ChunkInput;

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
        /// Named space: the axes' names, in order.
        #[serde(skip_serializing_if = "Option::is_none")]
        axes: Option<Vec<String>>,
        /// Named outputs: their names, in order.
        #[serde(skip_serializing_if = "Option::is_none")]
        outputs: Option<Vec<String>>,
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
        /// Named space: each point's values by axis name, in index order.
        #[serde(skip_serializing_if = "Option::is_none")]
        points: Option<Vec<serde_json::Value>>,
    },
}

/// A point as a JSON object: axis name → value.
pub fn point_json(names: &[String], values: Vec<Value>) -> serde_json::Value {
    let mut m = serde_json::Map::with_capacity(names.len());
    for (n, v) in names.iter().zip(values) {
        let j = match v {
            Value::Int(i) => serde_json::Value::from(i),
            Value::Float(f) => serde_json::Value::from(f),
            Value::Text(t) => serde_json::Value::from(&*t),
        };
        m.insert(n.clone(), j);
    }
    serde_json::Value::Object(m)
}

/// A result's numbers as the kernel returns them (output after output), or
/// why they do not fit the chunk: a missing, unknown or short output is
/// named. `values` alone serves a one-output run.
pub fn assemble(
    chunk: &ChunkInput,
    values: Option<Vec<f64>>,
    outputs: Option<std::collections::HashMap<String, Vec<f64>>>,
) -> Result<Vec<f64>, String> {
    let n = chunk.len();
    let names = chunk.output_names();
    let mut outputs = match (values, outputs) {
        (_, Some(o)) => o,
        (Some(v), None) if names.len() == 1 => {
            if v.len() != n {
                return Err(format!(
                    "worker returned {} values for {n} parameters (chunk {})",
                    v.len(),
                    chunk.chunk_index
                ));
            }
            [(names[0].clone(), v)].into_iter().collect()
        }
        (_, None) => {
            return Err(format!(
                "result has no \"outputs\"; the run declares {} (give {{\"outputs\":{{name: [one number per point]}}}})",
                names.join(", ")
            ))
        }
    };
    let mut out = Vec::with_capacity(n * names.len());
    for name in &names {
        let v = outputs.remove(name).ok_or_else(|| {
            format!(
                "result is missing output {name:?} (the run declares {})",
                names.join(", ")
            )
        })?;
        if v.len() != n {
            return Err(format!(
                "output {name:?} has {} values for {n} points (chunk {})",
                v.len(),
                chunk.chunk_index
            ));
        }
        out.extend(v);
    }
    if let Some(extra) = outputs.keys().next() {
        return Err(format!(
            "result has output {extra:?}, which the run does not declare (it declares {})",
            names.join(", ")
        ));
    }
    Ok(out)
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
        /// One per parameter (a one-output run).
        #[serde(default)]
        values: Option<Vec<f64>>,
        /// Output name → one number per point.
        #[serde(default)]
        outputs: Option<std::collections::HashMap<String, Vec<f64>>>,
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
            axes: None,
            outputs: None,
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
            points: None,
        };
        assert_eq!(
            c.line(),
            b"{\"type\":\"chunk\",\"chunk\":7,\"attempt\":2,\"start\":700,\"end\":800}\n"
        );
        let names = vec!["lr".to_string(), "act".to_string()];
        let p = point_json(&names, vec![Value::Float(0.5), Value::Text("relu".into())]);
        assert_eq!(p.to_string(), r#"{"act":"relu","lr":0.5}"#);
    }

    #[test]
    fn outputs_are_checked_by_name() {
        let space = ttg_proto::space::Space {
            axes: vec![ttg_proto::space::Axis::parse("x=1,2").expect("axis")],
            repeat: 1,
            sample: None,
        };
        let chunk = ChunkInput {
            run_id: "r".into(),
            chunk_index: 0,
            start: 0,
            end: 2,
            args: Default::default(),
            attempt: 1,
            sweep: Some(std::sync::Arc::new(ttg_proto::space::Sweep {
                space,
                named: true,
                outputs: vec!["loss".into(), "acc".into()],
            })),
        };
        let outs = |kv: &[(&str, Vec<f64>)]| {
            Some(kv.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
        };
        assert_eq!(
            assemble(
                &chunk,
                None,
                outs(&[("acc", vec![3.0, 4.0]), ("loss", vec![1.0, 2.0])])
            ),
            Ok(vec![1.0, 2.0, 3.0, 4.0])
        );
        let e = assemble(&chunk, None, outs(&[("loss", vec![1.0, 2.0])])).unwrap_err();
        assert!(e.contains("missing output \"acc\""), "{e}");
        let e = assemble(
            &chunk,
            None,
            outs(&[
                ("loss", vec![1.0, 2.0]),
                ("acc", vec![1.0, 2.0]),
                ("f1", vec![0.0, 0.0]),
            ]),
        )
        .unwrap_err();
        assert!(e.contains("\"f1\", which the run does not declare"), "{e}");
        let e = assemble(
            &chunk,
            None,
            outs(&[("loss", vec![1.0]), ("acc", vec![1.0, 2.0])]),
        )
        .unwrap_err();
        assert!(e.contains("\"loss\" has 1 values for 2 points"), "{e}");
        let e = assemble(&chunk, Some(vec![1.0, 2.0]), None).unwrap_err();
        assert!(e.contains("no \"outputs\""), "{e}");
        // A one-output run answers with `values`, one per parameter.
        let one = ChunkInput {
            sweep: None,
            ..chunk
        };
        assert_eq!(
            assemble(&one, Some(vec![1.0, 2.0]), None),
            Ok(vec![1.0, 2.0])
        );
        let e = assemble(&one, Some(vec![1.0]), None).unwrap_err();
        assert_eq!(e, "worker returned 1 values for 2 parameters (chunk 0)");
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
                values: Some(vec![1.0, 2.5]),
                outputs: None,
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
