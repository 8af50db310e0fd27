//! Every rejected input, over gRPC and through ttgctl together: the status
//! code, a message naming the field and the allowed range, and ttgctl's exit
//! code. Unknown runs are NotFound; a Redis that is down is Unavailable within
//! a few seconds, never a hang.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tonic::Code;
use ttg_proto::v1::{
    CancelRequest, DeleteRequest, GetResultsRequest, ListRunsRequest, StatusRequest, SubmitRequest,
    WatchRequest,
};

struct Case {
    what: &'static str,
    req: SubmitRequest,
    cli: Vec<&'static str>,
    needle: &'static str,
}

fn req(
    params: u64,
    chunk: Option<u64>,
    kernel: &str,
    args: &[(&str, &str)],
    attempts: Option<u32>,
) -> SubmitRequest {
    SubmitRequest {
        params,
        chunk_size: chunk,
        kernel: kernel.into(),
        args: args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        max_attempts: attempts,
        name: String::new(),
        retention_s: None,
        fail_fast: None,
        ..Default::default()
    }
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            what: "zero params",
            req: req(0, None, "", &[], None),
            cli: vec!["--params", "0"],
            needle: "params: must be in 1..=10000000000, got 0",
        },
        Case {
            what: "too many params",
            req: req(10_000_000_001, Some(1_000_000), "", &[], None),
            cli: vec!["--params", "10000000001", "--chunk-size", "1000000"],
            needle: "params: must be in 1..=10000000000",
        },
        Case {
            what: "zero chunk size",
            req: req(10, Some(0), "", &[], None),
            cli: vec!["--params", "10", "--chunk-size", "0"],
            needle: "chunk_size: must be in 1..=1000000, got 0",
        },
        Case {
            what: "chunk size too big",
            req: req(10, Some(1_000_001), "", &[], None),
            cli: vec!["--params", "10", "--chunk-size", "1000001"],
            needle: "chunk_size: must be in 1..=1000000",
        },
        Case {
            what: "too many chunks",
            req: req(10_000_000_000, Some(100), "", &[], None),
            cli: vec!["--params", "10000000000", "--chunk-size", "100"],
            needle: "at most 1000000 chunks per run",
        },
        Case {
            what: "unknown kernel",
            req: req(10, None, "nope", &[], None),
            cli: vec!["--params", "10", "--kernel", "nope"],
            needle: "kernel: unknown kernel \"nope\" (known: collatz, exec, placeholder)",
        },
        Case {
            what: "unknown argument",
            req: req(10, None, "placeholder", &[("speed", "1")], None),
            cli: vec!["--params", "10", "--arg", "speed=1"],
            needle: "args.speed: unknown argument for kernel placeholder (known: work_ms)",
        },
        Case {
            what: "argument out of range",
            req: req(10, None, "placeholder", &[("work_ms", "60001")], None),
            cli: vec!["--params", "10", "--arg", "work_ms=60001"],
            needle: "args.work_ms: must be a whole number in 0..=60000, got \"60001\"",
        },
        Case {
            what: "argument not a number",
            req: req(10, None, "placeholder", &[("work_ms", "fast")], None),
            cli: vec!["--params", "10", "--arg", "work_ms=fast"],
            needle: "args.work_ms: must be a whole number in 0..=60000, got \"fast\"",
        },
        Case {
            what: "zero attempts",
            req: req(10, None, "", &[], Some(0)),
            cli: vec!["--params", "10", "--max-attempts", "0"],
            needle: "max_attempts: must be in 1..=100, got 0",
        },
        Case {
            what: "too many attempts",
            req: req(10, None, "", &[], Some(101)),
            cli: vec!["--params", "10", "--max-attempts", "101"],
            needle: "max_attempts: must be in 1..=100, got 101",
        },
        Case {
            what: "fail-fast past the maximum",
            req: SubmitRequest {
                fail_fast: Some(100_001),
                ..req(10, None, "", &[], None)
            },
            cli: vec!["--params", "10", "--fail-fast", "100001"],
            needle: "fail_fast: must be in 0..=100000 (0 = never), got 100001",
        },
        Case {
            what: "a name with a right-to-left override (Unicode Cf)",
            req: SubmitRequest {
                name: "invoice\u{202E}fdp.exe".into(),
                ..req(10, None, "", &[], None)
            },
            cli: vec!["--params", "10", "--name", "invoice\u{202E}fdp.exe"],
            needle:
                "name: must not contain control or format characters (Unicode Cc, Cf), got U+202E",
        },
        Case {
            what: "a name with a control character (Unicode Cc)",
            req: SubmitRequest {
                name: "a\u{7}b".into(),
                ..req(10, None, "", &[], None)
            },
            cli: vec!["--params", "10", "--name", "a\u{7}b"],
            needle:
                "name: must not contain control or format characters (Unicode Cc, Cf), got U+0007",
        },
        Case {
            what: "retention past the maximum",
            req: SubmitRequest {
                retention_s: Some(366 * 86_400),
                ..req(10, None, "", &[], None)
            },
            cli: vec!["--params", "10", "--retention", "366d"],
            needle:
                "retention_s: must be in 1..=31536000 seconds (--max-run-retention), got 31622400",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_submit_is_invalid_argument_naming_field_and_range_and_ttgctl_exits_2() {
    let redis = Redis::start();
    let server = Server::start(&redis.url, &prefix()).await;
    let mut c = control(&server.url).await;
    for case in cases() {
        let e = c.submit(case.req.clone()).await.expect_err(case.what);
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{}: {}",
            case.what,
            e.message()
        );
        assert!(
            e.message().contains(case.needle),
            "{}: got {:?}, want {:?}",
            case.what,
            e.message(),
            case.needle
        );

        let mut args = vec!["submit"];
        args.extend(case.cli.iter().copied());
        let (code, _, err) = ttgctl(&server.url, &args);
        assert_eq!(code, 2, "{}: ttgctl exit code, stderr {err}", case.what);
        assert!(
            err.contains(case.needle),
            "{}: ttgctl said {err:?}",
            case.what
        );
        assert_eq!(
            err.trim().lines().count(),
            1,
            "{}: one line, no debug dump: {err:?}",
            case.what
        );
    }
    // Nothing was queued by any rejected request.
    let runs = c
        .list_runs(ListRunsRequest {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("runs")
        .into_inner()
        .runs;
    assert!(runs.is_empty());
    // CLI-side usage errors exit 2 too.
    for bad in [
        vec!["submit", "--params", "10", "--arg", "work_ms"],
        vec!["submit"],
        vec!["submit", "--params", "-1"],
        vec!["status", "x", "-o", "csv"],
    ] {
        let (code, _, err) = ttgctl(&server.url, &bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    // ListRuns limit out of range.
    let e = c
        .list_runs(ListRunsRequest {
            limit: 1_001,
            ..Default::default()
        })
        .await
        .expect_err("limit");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("limit: must be in 1..=1000"),
        "{}",
        e.message()
    );
    // ListRuns filters out of range, and a page token that is not one.
    for (bad, needle) in [
        (
            ListRunsRequest {
                states: vec![42],
                ..Default::default()
            },
            "states: unknown state 42",
        ),
        (
            ListRunsRequest {
                page_token: "not a token!".into(),
                ..Default::default()
            },
            "page_token: not a token from a previous ListRuns",
        ),
        (
            ListRunsRequest {
                max_age_s: u64::MAX,
                ..Default::default()
            },
            "max_age_s: must be in 0..=",
        ),
    ] {
        let e = c.list_runs(bad).await.expect_err(needle);
        assert_eq!(e.code(), Code::InvalidArgument, "{needle}");
        assert!(e.message().contains(needle), "{}", e.message());
    }
    // ttgctl's own checks: a retention under a second, an unknown state.
    for bad in [
        vec!["submit", "--params", "10", "--retention", "500ms"],
        vec!["runs", "--state", "finished"],
        vec!["runs", "--limit", "0"],
    ] {
        let (code, _, err) = ttgctl(&server.url, &bad);
        assert_eq!(code, 2, "{bad:?}: {err}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_run_ids() {
    let redis = Redis::start();
    let server = Server::start(&redis.url, &prefix()).await;
    let mut c = control(&server.url).await;
    let id = "00zzzzzzzz-nothere".to_string();
    let e = c
        .status(StatusRequest { run_id: id.clone() })
        .await
        .expect_err("status");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&id), "{}", e.message());
    let e = c
        .watch(WatchRequest {
            run_id: id.clone(),
            after_event_id: String::new(),
            no_follow: false,
        })
        .await
        .expect_err("watch");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .cancel(CancelRequest {
            run_id: id.clone(),
            reason: String::new(),
        })
        .await
        .expect_err("cancel");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .get_results(GetResultsRequest { run_id: id.clone() })
        .await
        .expect_err("results");
    assert_eq!(e.code(), Code::NotFound);
    let e = c
        .delete(DeleteRequest { run_id: id.clone() })
        .await
        .expect_err("delete");
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("not found"), "{}", e.message());
    for bad in ["", "a b", "../../etc", &"x".repeat(65)] {
        let e = c
            .status(StatusRequest {
                run_id: bad.to_string(),
            })
            .await
            .expect_err("bad id");
        assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
        assert!(e.message().starts_with("run_id:"), "{}", e.message());
    }
    for cmd in [
        vec!["status", id.as_str()],
        vec!["watch", id.as_str()],
        vec!["cancel", id.as_str()],
        vec!["results", id.as_str()],
    ] {
        let (code, _, err) = ttgctl(&server.url, &cmd);
        assert_eq!(code, 2, "{cmd:?}: {err}");
        assert!(err.contains("not found"), "{cmd:?}: {err}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_unavailable_within_seconds_and_heals() {
    // appendfsync always: the Submit below is on disk before it is answered.
    // Under the default everysec, Redis postpones its AOF write while an
    // fsync is slow and a SIGKILL then loses the run (seen under disk load).
    let mut redis = Redis::start_with(&["appendfsync", "always"]);
    let server = Server::start(&redis.url, &prefix()).await;
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(100, 10, 0))
        .await
        .expect("submit")
        .into_inner();
    redis.kill();
    for _ in 0..2 {
        let t = Instant::now();
        let e = c
            .status(StatusRequest {
                run_id: run.run_id.clone(),
            })
            .await
            .expect_err("status with redis down");
        assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "answered in {:?}",
            t.elapsed()
        );
        let t = Instant::now();
        let e = c
            .submit(submit_req(100, 10, 0))
            .await
            .expect_err("submit with redis down");
        assert_eq!(e.code(), Code::Unavailable, "{}", e.message());
        assert!(
            t.elapsed() < Duration::from_secs(8),
            "answered in {:?}",
            t.elapsed()
        );
    }
    let (code, _, err) = ttgctl(&server.url, &["status", &run.run_id]);
    assert_eq!(
        code, 3,
        "ttgctl exits 3 when the server's Redis is down: {err}"
    );
    // Redis back (AOF on): the same server serves the same run again.
    redis.restart();
    let st = wait_for(
        "server serves the run again after redis came back",
        Duration::from_secs(15),
        || {
            let mut c = c.clone();
            let id = run.run_id.clone();
            async move {
                c.status(StatusRequest { run_id: id })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|e| format!("{:?}: {}", e.code(), e.message()))
            }
        },
    )
    .await;
    assert_eq!(st.progress.expect("p").chunks_total, 10);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_down_makes_ttgctl_exit_3_with_one_line() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let (code, _, err) = ttgctl(&url, &["runs"]);
    assert_eq!(code, 3);
    assert!(err.contains("cannot reach the TTG server"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
}
