//! Security and hostile input, with real processes: tokens and roles over
//! gRPC and ttgctl (a table of every method × role), hot-reloaded tokens,
//! TLS and mutual TLS, the limits, Redis with a password, no secrets in
//! logs, and corrupt Redis entries moved aside without stopping the work.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};
use ttg_proto::keys::Keys;
use ttg_proto::v1::{
    CancelRequest, GetResultsRequest, ListAgentsRequest, ListKernelsRequest, ListRunsRequest,
    RetryRequest, StatusRequest, WatchRequest,
};

const CLIENT: &str = "client-token-0123456789abcdef";
const READER: &str = "reader-token-0123456789abcdef";
const AGENT: &str = "agent-token-0123456789abcdef";

fn tokens_file(dir: &Path, text: &str) -> PathBuf {
    let p = dir.join("tokens");
    std::fs::write(&p, text).expect("tokens");
    p
}

fn with_token<T>(msg: T, token: Option<&str>) -> Request<T> {
    let mut r = Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert(
            "authorization",
            MetadataValue::try_from(format!("Bearer {t}")).expect("ascii"),
        );
    }
    r
}

fn ttgctl(server: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let home = tempfile::tempdir().expect("home");
    let out = ttgctl_cmd()
        .env("HOME", home.path())
        .env_remove("TTG_TOKEN")
        .envs(env.iter().copied())
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("ttgctl");
    outcome(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_checks_the_token_and_its_role() {
    let dir = tempfile::tempdir().expect("tmp");
    let tokens = tokens_file(
        dir.path(),
        &format!("client {CLIENT} alice\nreader {READER} dashboards\nagent {AGENT} fleet\n"),
    );
    let redis = Redis::start();
    let p = prefix();
    let log = dir.path().join("server.log");
    let mut server = ServerProc::start_env(
        &redis.url,
        &p,
        &[
            "--tokens-file",
            tokens.to_str().expect("utf8"),
            "--log-format",
            "json",
        ],
        &[("RUST_LOG", "info")],
    );
    // Capture its log: restart it with stderr to a file.
    server.kill();
    let child = Command::new(bin("ttg-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{}", server.port),
            "--redis-url",
            &redis.url,
            "--prefix",
            &p,
            "--tokens-file",
            tokens.to_str().expect("utf8"),
            "--log-format",
            "json",
        ])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::from(std::fs::File::create(&log).expect("log")))
        .spawn()
        .expect("server");
    server.child = Some(child);
    wait_until("server up", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", server.port))
            .await
            .ok()
    })
    .await;
    let _agent = Agent::spawn_env(
        &server.url,
        &redis.url,
        &p,
        "trusted",
        2,
        &[],
        &[("TTG_TOKEN", AGENT)],
        Stdio::inherit(),
    );
    let mut c = control(&server.url).await;

    // A run to act on, submitted by the client.
    let run = c
        .submit(with_token(submit_req(1_000, 100, 0), Some(CLIENT)))
        .await
        .expect("client submits")
        .into_inner();
    let id = run.run_id.clone();
    // The agent with the agent token computes it.
    wait_until("run done", Duration::from_secs(20), || {
        let mut c = c.clone();
        let id = id.clone();
        async move {
            let st = c
                .status(with_token(StatusRequest { run_id: id }, Some(READER)))
                .await
                .ok()?
                .into_inner();
            (st.state == ttg_proto::v1::RunState::Succeeded as i32).then_some(())
        }
    })
    .await;

    // method, token → expected code (Ok = the call is allowed past auth).
    use Code::{Ok as Allowed, PermissionDenied as Denied, Unauthenticated as NoAuth};
    let wrong = "wrong-token-0123456789abcdef";
    let cases: Vec<(&str, Option<&str>, Code)> = vec![
        ("Submit", None, NoAuth),
        ("Submit", Some(wrong), NoAuth),
        ("Submit", Some(READER), Denied),
        ("Submit", Some(AGENT), Denied),
        ("Submit", Some(CLIENT), Allowed),
        ("Cancel", Some(READER), Denied),
        ("Cancel", Some(AGENT), Denied),
        ("Retry", Some(READER), Denied),
        ("Retry", None, NoAuth),
        ("Status", None, NoAuth),
        ("Status", Some(AGENT), Denied),
        ("Status", Some(READER), Allowed),
        ("Status", Some(CLIENT), Allowed),
        ("Watch", Some(AGENT), Denied),
        ("Watch", Some(READER), Allowed),
        ("ListRuns", Some(wrong), NoAuth),
        ("ListRuns", Some(READER), Allowed),
        ("ListAgents", Some(AGENT), Denied),
        ("ListAgents", Some(READER), Allowed),
        ("ListKernels", None, NoAuth),
        ("ListKernels", Some(READER), Allowed),
        ("GetResults", Some(AGENT), Denied),
        ("GetResults", Some(READER), Allowed),
    ];
    for (method, token, want) in cases {
        let got = match method {
            "Submit" => c
                .submit(with_token(submit_req(10, 10, 0), token))
                .await
                .map(|_| ()),
            "Cancel" => c
                .cancel(with_token(
                    CancelRequest {
                        run_id: id.clone(),
                        reason: String::new(),
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            "Retry" => c
                .retry(with_token(RetryRequest { run_id: id.clone() }, token))
                .await
                .map(|_| ()),
            "Status" => c
                .status(with_token(StatusRequest { run_id: id.clone() }, token))
                .await
                .map(|_| ()),
            "Watch" => c
                .watch(with_token(
                    WatchRequest {
                        run_id: id.clone(),
                        after_event_id: String::new(),
                        no_follow: false,
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            "ListRuns" => c
                .list_runs(with_token(
                    ListRunsRequest {
                        limit: 5,
                        ..Default::default()
                    },
                    token,
                ))
                .await
                .map(|_| ()),
            "ListAgents" => c
                .list_agents(with_token(ListAgentsRequest {}, token))
                .await
                .map(|_| ()),
            "ListKernels" => c
                .list_kernels(with_token(ListKernelsRequest {}, token))
                .await
                .map(|_| ()),
            "GetResults" => c
                .get_results(with_token(GetResultsRequest { run_id: id.clone() }, token))
                .await
                .map(|_| ()),
            _ => unreachable!(),
        };
        let code = got.as_ref().err().map(|s| s.code()).unwrap_or(Code::Ok);
        assert_eq!(code, want, "{method} with {token:?}: {got:?}");
        if let Err(s) = got {
            for t in [CLIENT, READER, AGENT, wrong] {
                assert!(
                    !s.message().contains(t),
                    "a token leaked into an error: {}",
                    s.message()
                );
            }
        }
    }
    // Health stays open for probes; reflection needs a token.
    let ch = tonic::transport::Endpoint::from_shared(server.url.clone())
        .expect("url")
        .connect()
        .await
        .expect("ch");
    let mut h = tonic_health::pb::health_client::HealthClient::new(ch.clone());
    assert!(h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new()
        })
        .await
        .is_ok());
    use tonic_reflection::pb::v1alpha::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, ServerReflectionRequest,
    };
    let list = || {
        tokio_stream::once(ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        })
    };
    let mut r = ServerReflectionClient::new(ch);
    assert_eq!(
        r.server_reflection_info(list())
            .await
            .expect_err("no token")
            .code(),
        Code::Unauthenticated
    );
    assert!(r
        .server_reflection_info(with_token(list(), Some(READER)))
        .await
        .is_ok());

    // An agent holding a client token gets no session (and takes no work).
    let _impostor = Agent::spawn_env(
        &server.url,
        &redis.url,
        &p,
        "impostor",
        1,
        &[],
        &[("TTG_TOKEN", CLIENT)],
        Stdio::null(),
    );
    tokio::time::sleep(Duration::from_millis(800)).await;
    let agents = c
        .list_agents(with_token(ListAgentsRequest {}, Some(READER)))
        .await
        .expect("agents")
        .into_inner()
        .agents;
    assert!(
        agents.iter().all(|a| a.agent_id != "impostor"),
        "an agent without the agent role was admitted"
    );

    // ttgctl: the same rules, one line, exit 2; the token from TTG_TOKEN or --token.
    let (code, _, err) = ttgctl(&server.url, &[], &["runs"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("not authenticated") && err.trim().lines().count() == 1,
        "{err}"
    );
    let (code, _, err) = ttgctl(
        &server.url,
        &[("TTG_TOKEN", READER)],
        &["submit", "--params", "10"],
    );
    assert_eq!(code, 2);
    assert!(
        err.contains("not allowed") && err.contains("needs client"),
        "{err}"
    );
    let (code, out, err) = ttgctl(&server.url, &[("TTG_TOKEN", READER)], &["status", &id]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("SUCCEEDED"));
    let (code, _, err) = ttgctl(
        &server.url,
        &[],
        &["--token", CLIENT, "submit", "--params", "100"],
    );
    assert_eq!(code, 0, "{err}");

    // Hot reload: replace the reader's token; the old one stops working.
    let new_reader = "rotated-reader-0123456789abcdef";
    std::fs::write(
        &tokens,
        format!("client {CLIENT} alice\nreader {new_reader} dashboards\nagent {AGENT} fleet\n"),
    )
    .expect("rotate");
    wait_until("rotated token accepted", Duration::from_secs(15), || {
        let mut c = c.clone();
        async move {
            c.list_runs(with_token(
                ListRunsRequest {
                    limit: 1,
                    ..Default::default()
                },
                Some(new_reader),
            ))
            .await
            .ok()
            .map(|_| ())
        }
    })
    .await;
    let e = c
        .list_runs(with_token(
            ListRunsRequest {
                limit: 1,
                ..Default::default()
            },
            Some(READER),
        ))
        .await
        .expect_err("old token");
    assert_eq!(e.code(), Code::Unauthenticated);
    // A broken file keeps the tokens in force.
    std::fs::write(&tokens, "admin nonsense\n").expect("break");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(c
        .list_runs(with_token(
            ListRunsRequest {
                limit: 1,
                ..Default::default()
            },
            Some(new_reader)
        ))
        .await
        .is_ok());

    // No token ever reaches the log.
    server.kill();
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("request refused"), "the refusals were logged");
    for t in [CLIENT, READER, AGENT, new_reader] {
        assert!(!text.contains(t), "token in the server log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_refuses_to_start_without_auth_unless_told() {
    let out = Command::new(bin("ttg-server"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .expect("server");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to start without authentication") && err.contains("--tokens-file"),
        "{err}"
    );
}

fn certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let srv_key = KeyPair::generate().expect("key");
    let srv = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&srv_key, &ca, &ca_key)
        .expect("server cert");
    let cli_key = KeyPair::generate().expect("key");
    let cli = CertificateParams::new(vec!["ttg-client".to_string()])
        .expect("params")
        .signed_by(&cli_key, &ca, &ca_key)
        .expect("client cert");
    let w = |name: &str, text: String| {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write pem");
        p
    };
    (
        w("ca.pem", ca.pem()),
        w("server.pem", srv.pem()),
        w("server.key", srv_key.serialize_pem()),
        w("client.pem", cli.pem()),
        w("client.key", cli_key.serialize_pem()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_for_agents_and_ttgctl() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key, ccert, ckey) = certs(dir.path());
    let s = |p: &PathBuf| p.to_str().expect("utf8").to_string();
    let redis = Redis::start();
    let p = prefix();
    // TLS, then mutual TLS.
    let tls = ServerProc::start(
        &redis.url,
        &p,
        &["--tls-cert", &s(&cert), "--tls-key", &s(&key)],
    );
    let url = format!("https://127.0.0.1:{}", tls.port);
    let _agent = Agent::spawn(&url, &redis.url, &p, "tls-agent", 2, &["--ca", &s(&ca)]);
    let (code, out, err) = ttgctl(
        &url,
        &[],
        &["--ca", &s(&ca), "submit", "--params", "1000", "--watch"],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("sum 500,035.50"), "{out}");
    // Without the CA the server's certificate is not trusted: unreachable,
    // exit 3, and the message says the handshake failed.
    let (code, _, err) = ttgctl(&url, &[], &["runs"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("TLS handshake"), "{err}");
    // Plaintext to a TLS port fails too, and says to use https://.
    let (code, _, err) = ttgctl(&format!("127.0.0.1:{}", tls.port), &[], &["runs"]);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("serving TLS") && err.contains("https://"),
        "{err}"
    );

    let p2 = prefix();
    let mtls = ServerProc::start(
        &redis.url,
        &p2,
        &[
            "--tls-cert",
            &s(&cert),
            "--tls-key",
            &s(&key),
            "--client-ca",
            &s(&ca),
        ],
    );
    let url2 = format!("https://127.0.0.1:{}", mtls.port);
    let (code, _, err) = ttgctl(&url2, &[], &["--ca", &s(&ca), "runs"]);
    assert_ne!(code, 0, "mTLS: no client certificate, no service: {err}");
    let (code, _, err) = ttgctl(
        &url2,
        &[],
        &[
            "--ca",
            &s(&ca),
            "--cert",
            &s(&ccert),
            "--key",
            &s(&ckey),
            "runs",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let _agent2 = Agent::spawn(
        &url2,
        &redis.url,
        &p2,
        "mtls-agent",
        2,
        &["--ca", &s(&ca), "--cert", &s(&ccert), "--key", &s(&ckey)],
    );
    let (code, out, err) = ttgctl(
        &url2,
        &[],
        &[
            "--ca",
            &s(&ca),
            "--cert",
            &s(&ccert),
            "--key",
            &s(&ckey),
            "submit",
            "--params",
            "1000",
            "--watch",
        ],
    );
    assert_eq!(code, 0, "{out}\n{err}");
    // --ca with a plaintext URL is a usage error.
    let (code, _, err) = ttgctl(&tls.url, &[], &["--ca", &s(&ca), "runs"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("https://"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_answer_with_the_limit_named() {
    let redis = Redis::start();
    let p = prefix();
    let server = ServerProc::start(
        &redis.url,
        &p,
        &[
            "--max-runs-in-flight",
            "2",
            "--submit-rate",
            "4",
            "--max-args",
            "2",
            "--max-arg-bytes",
            "100",
            "--max-params",
            "1000000",
            "--max-chunks",
            "1000",
            "--max-message-bytes",
            "65536",
        ],
    );
    let mut c = control(&server.url).await;
    // Runs in flight: two queued runs (no agent), then a third is refused.
    c.submit(submit_req(10, 10, 0)).await.expect("1");
    c.submit(submit_req(10, 10, 0)).await.expect("2");
    let e = c.submit(submit_req(10, 10, 0)).await.expect_err("3");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(
        e.message().contains("--max-runs-in-flight") && e.message().contains("limit is 2"),
        "{}",
        e.message()
    );
    // Cancelling one frees a slot (the scripts keep the count).
    let runs = c
        .list_runs(ListRunsRequest {
            limit: 5,
            ..Default::default()
        })
        .await
        .expect("runs")
        .into_inner()
        .runs;
    let id = runs[0].spec.clone().expect("spec").run_id;
    c.cancel(CancelRequest {
        run_id: id,
        reason: String::new(),
    })
    .await
    .expect("cancel");
    c.submit(submit_req(10, 10, 0)).await.expect("a slot again");
    // Submit rate, 4 per minute per token: all four Submits above counted,
    // the one refused for runs in flight included (the rate is checked first).
    let e = c.submit(submit_req(10, 10, 0)).await.expect_err("rate");
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("--submit-rate"), "{}", e.message());
    // ttgctl: a rejected request, exit 2 (docs/cli.md), naming the limit.
    let (code, _, err) = ttgctl(&server.url, &[], &["submit", "--params", "10"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("limit reached") && err.contains("--submit-rate"),
        "{err}"
    );
    // Request-shape limits are InvalidArgument naming the limit (checked before the rate).
    let server2 = ServerProc::start(
        &redis.url,
        &prefix(),
        &[
            "--max-args",
            "2",
            "--max-arg-bytes",
            "100",
            "--max-params",
            "1000000",
            "--max-chunks",
            "1000",
            "--max-message-bytes",
            "65536",
        ],
    );
    let mut c2 = control(&server2.url).await;
    let mut r = submit_req(10, 10, 0);
    r.args.insert("a".into(), "1".into());
    r.args.insert("b".into(), "1".into());
    let e = c2.submit(r).await.expect_err("args");
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().contains("at most 2 arguments (--max-args)"),
        "{}",
        e.message()
    );
    let mut r = submit_req(10, 10, 0);
    r.args.insert("work_ms".into(), "1".repeat(101));
    let e = c2.submit(r).await.expect_err("arg size");
    assert!(e.message().contains("--max-arg-bytes"), "{}", e.message());
    let e = c2
        .submit(submit_req(1_000_001, 1_000_000, 0))
        .await
        .expect_err("params");
    assert!(
        e.message().contains("params: must be in 1..=1000000"),
        "{}",
        e.message()
    );
    let e = c2
        .submit(submit_req(2_000, 1, 0))
        .await
        .expect_err("chunks");
    assert!(
        e.message().contains("at most 1000 chunks per run"),
        "{}",
        e.message()
    );
    let mut r = submit_req(10, 10, 0);
    r.name = "x".repeat(100_000);
    let e = c2.submit(r).await.expect_err("message size");
    assert!(
        matches!(
            e.code(),
            Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
        ),
        "{e:?}"
    );
    assert!(e.message().contains("65536"), "{}", e.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_with_a_password_and_no_password_in_logs() {
    let redis = Redis::start_with(&["requirepass", "s3cret-redis-pass"]);
    let url = format!("redis://:s3cret-redis-pass@127.0.0.1:{}", redis.port);
    let p = prefix();
    let dir = tempfile::tempdir().expect("tmp");
    let slog = dir.path().join("server.log");
    let alog = dir.path().join("agent.log");
    let port = free_port();
    let server_url = format!("http://127.0.0.1:{port}");
    let mut server = Command::new(bin("ttg-server"))
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--redis-url",
            &url,
            "--prefix",
            &p,
            "--insecure-no-auth",
        ])
        .env("RUST_LOG", "debug")
        .stderr(Stdio::from(std::fs::File::create(&slog).expect("log")))
        .spawn()
        .expect("server");
    let _agent = Agent::spawn_env(
        &server_url,
        &url,
        &p,
        "pw",
        2,
        &[],
        &[("RUST_LOG", "debug")],
        Stdio::from(std::fs::File::create(&alog).expect("log")),
    );
    wait_until("server up", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    let mut c = control(&server_url).await;
    let run = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(20)).await;
    assert_eq!(cents(st.aggregate.expect("agg").sum), cents(500_035.50));
    // A wrong password is an error at the first call, not a hang.
    let bad = ServerProc::start(
        &format!("redis://:wrong@127.0.0.1:{}", redis.port),
        &prefix(),
        &[],
    );
    let mut cb = control(&bad.url).await;
    let e = cb
        .list_runs(ListRunsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect_err("wrong password");
    assert!(
        matches!(e.code(), Code::Internal | Code::Unavailable),
        "{e:?}"
    );
    let _ = server.kill();
    let _ = server.wait();
    for f in [&slog, &alog] {
        let text = std::fs::read_to_string(f).expect("log");
        assert!(
            text.contains("***@127.0.0.1"),
            "the URL is logged redacted: {}",
            f.display()
        );
        assert!(
            !text.contains("s3cret-redis-pass"),
            "password in {}",
            f.display()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_task_entries_are_moved_aside_and_the_work_goes_on() {
    let redis = Redis::start();
    let p = prefix();
    let keys = Keys::new(&p);
    let server = Server::start(&redis.url, &p).await;
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit")
        .into_inner();
    // Hostile or broken writes in the tasks stream, between real tasks.
    let mut r = redis.conn();
    let tasks = keys.tasks("placeholder");
    let junk: Vec<Vec<(&str, Vec<u8>)>> = vec![
        vec![("t", vec![0xff, 0xfe, 0x00, 0x13])],
        vec![("x", b"no task".to_vec())],
        vec![(
            "t",
            ttg_proto::records::encode(&ttg_proto::v1::Task {
                run_id: "r".into(),
                start: 5,
                end: 5,
                ..Default::default()
            }),
        )],
        vec![
            (
                "t",
                ttg_proto::records::encode(&ttg_proto::v1::Task {
                    run_id: "r".into(),
                    start: 0,
                    end: 5,
                    ..Default::default()
                }),
            ),
            ("a", b"many".to_vec()),
        ],
    ];
    for fields in &junk {
        let mut cmd = redis::cmd("XADD");
        cmd.arg(&tasks).arg("*");
        for (k, v) in fields {
            cmd.arg(*k).arg(v.as_slice());
        }
        let _: String = cmd.query(&mut r).expect("xadd junk");
    }
    let _agent = Agent::spawn(&server.url, &redis.url, &p, "sturdy", 2, &[]);
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(20)).await;
    assert_eq!(cents(st.aggregate.expect("agg").sum), cents(500_035.50));
    let n_junk = junk.len();
    let dead: redis::streams::StreamRangeReply =
        wait_until("junk moved aside", Duration::from_secs(10), || {
            let d: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
                .arg(keys.corrupt_entries())
                .arg("-")
                .arg("+")
                .query(&mut redis.conn())
                .expect("xrange");
            async move { (d.ids.len() == n_junk).then_some(d) }
        })
        .await;
    let errs: Vec<String> = dead
        .ids
        .iter()
        .map(|e| match e.map.get("err") {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        })
        .collect();
    assert!(
        errs.iter().any(|e| e.contains("malformed task")),
        "{errs:?}"
    );
    assert!(
        errs.iter().any(|e| e.contains("without a `t` field")),
        "{errs:?}"
    );
    assert!(errs.iter().any(|e| e.contains("empty range")), "{errs:?}");
    assert!(errs.iter().any(|e| e.contains("attempt field")), "{errs:?}");
    assert_eq!(queue_state(&redis, &p), (0, 0), "nothing stuck");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tmp");
    let (ca, cert, key, _, _) = certs(dir.path());
    let port = free_port();
    // Redis serving TLS only (plaintext port off).
    let mut redis = Command::new("redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args(["--tls-auth-clients", "no"])
        .arg("--tls-cert-file")
        .arg(&cert)
        .arg("--tls-key-file")
        .arg(&key)
        .arg("--tls-ca-cert-file")
        .arg(&ca)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server with TLS");
    wait_until("redis TLS port", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
    })
    .await;
    let url = format!("rediss://127.0.0.1:{port}");
    let ca_s = ca.to_str().expect("utf8");
    let p = prefix();
    let server = ServerProc::start(&url, &p, &["--redis-ca", ca_s]);
    let _agent = Agent::spawn(&server.url, &url, &p, "tls-redis", 2, &["--redis-ca", ca_s]);
    let mut c = control(&server.url).await;
    let run = c
        .submit(submit_req(1_000, 100, 0))
        .await
        .expect("submit over rediss")
        .into_inner();
    let st = wait_finished(&mut c, &run.run_id, Duration::from_secs(20)).await;
    assert_eq!(cents(st.aggregate.expect("agg").sum), cents(500_035.50));
    // Without the CA, Redis's certificate is not trusted: Unavailable, promptly.
    let untrusting = ServerProc::start(&url, &prefix(), &[]);
    let mut cu = control(&untrusting.url).await;
    let t = std::time::Instant::now();
    let e = cu
        .list_runs(ListRunsRequest {
            limit: 1,
            ..Default::default()
        })
        .await
        .expect_err("untrusted");
    assert!(
        matches!(e.code(), Code::Unavailable | Code::Internal),
        "{e:?}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    let _ = redis.kill();
    let _ = redis.wait();
}
