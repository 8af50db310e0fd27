//! Fuzzing the decoders and parsers that read what other processes (or an
//! attacker with Redis access) wrote: arbitrary and mutated bytes must give
//! an error, never a panic. proptest stands in for cargo-fuzz, which needs a
//! nightly toolchain; these run in every `make test`.

use std::collections::HashMap;

use proptest::prelude::*;
use ttg_proto::kernels::{validate_args, BUILTIN};
use ttg_proto::records::{
    decode_event, decode_spec, decode_task, encode, parse_state, run_status_from_hash,
    unpack_values,
};
use ttg_proto::v1::{event, ChunkCompleted, Event, Progress, RunSpec, Task};

fn valid_task() -> Vec<u8> {
    encode(&Task {
        run_id: "00mwsobpsr-x5lgix".into(),
        chunk_index: 7,
        start: 700,
        end: 800,
        kernel: "placeholder".into(),
        args: [("work_ms".to_string(), "1".to_string())]
            .into_iter()
            .collect(),
        max_attempts: 3,
        sweep: false,
        queued_ms: 1_796_000_000_000,
        traceparent: String::new(),
    })
}

fn valid_event() -> Vec<u8> {
    encode(&Event {
        run_id: "r".into(),
        time_ms: 5,
        progress: Some(Progress {
            chunks_total: 3,
            chunks_done: 1,
            ..Default::default()
        }),
        kind: Some(event::Kind::ChunkCompleted(ChunkCompleted {
            chunk_index: 1,
            sum: 2.5,
            ..Default::default()
        })),
        ..Default::default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_task(&bytes);
        let _ = decode_event("1-0", &bytes);
        let _ = decode_spec(&bytes);
        let _ = unpack_values(&bytes);
        let _ = parse_state(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn mutated_records_never_panic(flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
                                   cut in any::<prop::sample::Index>()) {
        for mut rec in [valid_task(), valid_event(), encode(&RunSpec { run_id: "r".into(), params: 10, chunk_size: 3, total_chunks: 4, ..Default::default() })] {
            for (i, b) in &flips {
                let at = i.index(rec.len());
                rec[at] ^= b;
            }
            let end = cut.index(rec.len() + 1);
            let _ = decode_task(&rec[..end]);
            let _ = decode_event("1-0", &rec[..end]);
            let _ = decode_spec(&rec[..end]);
        }
    }

    #[test]
    fn run_hashes_with_garbage_fields_never_panic(fields in proptest::collection::hash_map(
            prop::sample::select(vec!["spec", "state", "total", "done", "dead", "count", "sum", "min", "max", "started_ms", "finished_ms"]),
            proptest::collection::vec(any::<u8>(), 0..64), 0..11)) {
        let h: HashMap<String, Vec<u8>> = fields.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let _ = run_status_from_hash(&h, 1_700_000_000_000);
    }

    #[test]
    fn argument_validation_accepts_only_what_is_declared(args in proptest::collection::hash_map("[a-z_]{0,12}", ".{0,40}", 0..6)) {
        for k in BUILTIN {
            let decl = k.decl();
            if let Ok(out) = validate_args(&decl, &args) {
                for (name, value) in &out {
                    let a = decl.args.iter().find(|a| &a.name == name).expect("only declared names come back");
                    match a.r#type.as_str() {
                        "int" => { let v: i64 = value.parse().expect("int"); prop_assert!(v as f64 >= a.min && v as f64 <= a.max); }
                        "float" => { let v: f64 = value.parse().expect("float"); prop_assert!(v >= a.min && v <= a.max); }
                        _ => prop_assert!(value.len() as f64 <= a.max),
                    }
                }
            }
        }
    }
}

#[test]
fn valid_records_still_decode() {
    assert_eq!(decode_task(&valid_task()).expect("task").chunk_index, 7);
    assert!(decode_event("1-0", &valid_event()).is_ok());
}
