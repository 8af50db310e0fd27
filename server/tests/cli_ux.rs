//! ttgctl as kubectl, gh and docker users expect it, against a real server
//! and real agent processes: every exit code of the table, errors as JSON
//! with `-o json`, server addresses as typed, run-id prefixes and `latest`,
//! `wait`, `logs` with a failing program's stderr, `-q`, `-o yaml|wide`,
//! contexts edited by hand, completions for every shell and man pages.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;

/// A server with one placeholder agent (and, with `exec`, one that allows
/// exec), and a config file of its own for ttgctl.
struct Cli {
    _redis: Redis,
    server: Server,
    _agents: Vec<Agent>,
    home: tempfile::TempDir,
}

impl Cli {
    async fn start(exec: bool) -> Cli {
        let redis = Redis::start();
        let p = prefix();
        let server = Server::start(&redis.url, &p).await;
        let mut agents = vec![Agent::spawn(&server.url, &redis.url, &p, "plain", 2, &[])];
        if exec {
            agents.push(Agent::spawn(
                &server.url,
                &redis.url,
                &p,
                "exec",
                1,
                &["--allow-exec"],
            ));
        }
        let c = control(&server.url).await;
        let n = agents.len();
        wait_agents(&c, "agents connected", Duration::from_secs(20), |a| {
            (a.len() == n).then_some(())
        })
        .await;
        Cli {
            _redis: redis,
            server,
            _agents: agents,
            home: tempfile::tempdir().expect("home"),
        }
    }

    /// ttgctl with this test's config file and no --server.
    fn cmd(&self) -> std::process::Command {
        let mut c = ttgctl_cmd();
        c.env("TTG_CONFIG", self.home.path().join("config"));
        c
    }

    /// ttgctl against the server: (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = self
            .cmd()
            .arg("--server")
            .arg(&self.server.url)
            .args(args)
            .output()
            .expect("run ttgctl");
        outcome(out)
    }

    /// Submit quietly: the run id.
    fn submit(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(&[&["submit", "-q"], args].concat());
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    }
}

/// 0, 1, 2, 3, 4 and 130, each from the situation the table names, and
/// the same errors as JSON on stderr with `-o json`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_code_of_the_table() {
    let t = Cli::start(false).await;
    let ok = t.submit(&["--params", "100"]);
    assert_eq!(t.run(&["wait", &ok, "--timeout", "30s"]).0, 0);
    assert_eq!(t.run(&["status", &ok]).0, 0);
    // 4: a run nobody can take (no agent offers exec) outlives --timeout;
    // submit warns about it at once.
    let (code, _, err) = t.run(&[
        "submit",
        "--params",
        "10",
        "--kernel",
        "exec",
        "--arg",
        "program=/bin/true",
    ]);
    assert_eq!(code, 0);
    assert!(
        err.contains("no connected agent offers kernel exec"),
        "{err}"
    );
    let stuck = t.run(&["runs", "-q", "--limit", "1"]).1.trim().to_string();
    let (code, _, err) = t.run(&["wait", &stuck, "--timeout", "1s"]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("goes on"), "{err}");
    // 130: Ctrl-C on a watch; it says how to follow the run again.
    let mut watch = t
        .cmd()
        .args(["--server", &t.server.url, "watch", &stuck])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("watch");
    std::thread::sleep(Duration::from_millis(800));
    std::process::Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status()
        .expect("kill");
    let out = wait_output(&mut watch, Duration::from_secs(10));
    assert_eq!(out.0, 130, "{}", out.2);
    assert!(
        out.2.contains(&format!("ttgctl watch {stuck}")),
        "{}",
        out.2
    );
    assert!(
        out.1.contains("waiting for an agent offering exec")
            || out.2.contains("waiting for an agent offering exec"),
        "the watch said why the run waits: {} {}",
        out.1,
        out.2
    );
    // 1: the run was cancelled (wait and watch say so by their exit code),
    // and status shows the reason.
    assert_eq!(
        t.run(&["cancel", &stuck, "--reason", "nobody offers exec"])
            .0,
        0
    );
    assert_eq!(t.run(&["wait", &stuck]).0, 1);
    assert_eq!(t.run(&["watch", &stuck]).0, 1);
    let (_, status, _) = t.run(&["status", &stuck]);
    assert!(status.contains("cancelled: nobody offers exec"), "{status}");
    // 2: bad usage, and requests the server rejects.
    assert_eq!(t.run(&["submit", "--params", "0"]).0, 2);
    assert_eq!(
        t.run(&["cancel", &ok]).0,
        2,
        "already ended: FailedPrecondition"
    );
    let (code, _, err) = t.run(&["status", "00000000000-nosuch", "-o", "json"]);
    assert_eq!(code, 2);
    let e: serde_json::Value = serde_json::from_str(err.trim()).expect("a JSON error");
    assert_eq!(e["error"]["code"], "NotFound", "{err}");
    assert_eq!(e["error"]["exit"], 2);
    // 3: nobody listening.
    let nobody = format!("127.0.0.1:{}", free_port());
    let out = t
        .cmd()
        .args(["--server", &nobody, "runs"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is it running?"));
    t.server.stop().await;
}

/// Collect a child's (exit code, stdout, stderr), killing it after `within`.
fn wait_output(child: &mut std::process::Child, within: Duration) -> (i32, String, String) {
    use std::io::Read;
    let deadline = Instant::now() + within;
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("ttgctl did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    (code, out, err)
}

/// Server addresses as people type them: host:port is plaintext, unknown
/// schemes are refused before anything connects, and https:// against a
/// plaintext server says what is wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_addresses_as_typed() {
    let t = Cli::start(false).await;
    let addr = t.server.addr.to_string();
    let run = |server: &str| {
        let out = t
            .cmd()
            .args(["--server", server, "runs"])
            .output()
            .expect("runs");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(run(&addr).0, 0, "host:port means http://host:port");
    let (code, err) = run(&format!("htp://{addr}"));
    assert_eq!(code, 2);
    assert!(err.contains("unknown scheme \"htp\""), "{err}");
    let (code, err) = run(&format!("https://{addr}"));
    assert_eq!(code, 3);
    assert!(
        err.contains("TLS handshake") && err.contains("serving TLS"),
        "{err}"
    );
    t.server.stop().await;
}

/// Run ids: a unique prefix is the run, an ambiguous one lists the
/// candidates, an unknown one says so; `latest` and `-` are the newest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ids_by_prefix_and_latest() {
    let t = Cli::start(false).await;
    let ids: Vec<String> = (0..3).map(|_| t.submit(&["--params", "10"])).collect();
    for id in &ids {
        assert_eq!(t.run(&["wait", id, "--timeout", "30s"]).0, 0);
    }
    // The shortest prefix that is unique, and one that is not.
    let unique = |id: &String| {
        (1..=id.len())
            .map(|n| &id[..n])
            .find(|p| ids.iter().filter(|o| o.starts_with(p)).count() == 1)
            .expect("a unique prefix")
            .to_string()
    };
    for id in &ids {
        let (code, out, err) = t.run(&["status", &unique(id), "-o", "json"]);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(id.as_str()), "{out}");
    }
    let common: String = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if !common.is_empty() {
        let (code, _, err) = t.run(&["status", &common]);
        assert_eq!(code, 2);
        assert!(
            err.contains("ambiguous") && err.contains(&ids[0]) && err.contains(&ids[1]),
            "{err}"
        );
    }
    let (code, _, err) = t.run(&["status", "zzz"]);
    assert_eq!(code, 2);
    assert!(err.contains("no run id starts with \"zzz\""), "{err}");
    for latest in ["latest", "-"] {
        let (code, out, _) = t.run(&["status", latest, "-o", "json"]);
        assert_eq!(code, 0);
        assert!(out.contains(ids[2].as_str()), "{out}");
    }
    // -q lists ids; yaml and wide.
    let (_, q, _) = t.run(&["runs", "-q"]);
    assert_eq!(
        q.lines().collect::<Vec<_>>(),
        ids.iter().rev().map(String::as_str).collect::<Vec<_>>()
    );
    let (code, yaml, _) = t.run(&["status", "latest", "-o", "yaml"]);
    assert_eq!(code, 0);
    assert!(yaml.contains(&format!("run_id: {}", ids[2])), "{yaml}");
    let (_, wide, _) = t.run(&["runs", "-o", "wide"]);
    assert!(
        wide.lines().next().is_some_and(|h| h.contains("KERNEL")
            && h.contains("SUBMITTED")
            && h.contains("QUEUE WAIT")),
        "{wide}"
    );
    t.server.stop().await;
}

/// `ttgctl logs` shows what a failing program wrote to stderr, per attempt,
/// and `--failed` only the attempts that dead-lettered their chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_show_a_failing_programs_stderr() {
    let t = Cli::start(true).await;
    let dir = tempfile::tempdir().expect("dir");
    let prog = script(
        dir.path(),
        "broken.sh",
        "#!/bin/sh\necho \"model.py line 3: KeyError: 'lr' in chunk $TTG_CHUNK_INDEX\" >&2\nexit 1\n",
    );
    let id = t.submit(&[
        "--params",
        "20",
        "--chunk-size",
        "10",
        "--kernel",
        "exec",
        "--max-attempts",
        "2",
        "--fail-fast",
        "0",
        "--arg",
        &format!("program={}", prog.display()),
    ]);
    assert_eq!(t.run(&["wait", &id, "--timeout", "60s"]).0, 1);
    let (code, out, err) = t.run(&["logs", &id]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out.matches("KeyError: 'lr'").count(),
        4,
        "2 chunks × 2 attempts:\n{out}"
    );
    assert!(
        out.contains("attempt 2") && out.contains("(dead-lettered)"),
        "{out}"
    );
    let (_, out, _) = t.run(&["logs", &id, "--failed", "--chunk", "1", "-o", "json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("json");
    let list = v.as_array().expect("a list");
    assert_eq!(list.len(), 1, "{out}");
    assert_eq!(
        (list[0]["chunk"].as_u64(), list[0]["dead"].as_bool()),
        (Some(1), Some(true))
    );
    t.server.stop().await;
}

/// Contexts edited by hand: set (a token file, never an inline token),
/// use, show without the token, delete; a config others can write is
/// refused; an unknown context is a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_by_hand() {
    let t = Cli::start(false).await;
    let ctl = |args: &[&str]| outcome(t.cmd().args(args).output().expect("ttgctl"));
    let token = t.home.path().join("token");
    std::fs::write(&token, "not-needed-without-auth\n").expect("token");
    let token_arg = token.display().to_string();
    let addr = t.server.addr.to_string();
    assert_eq!(
        ctl(&["context", "set", "dev", &addr, "--token-file", &token_arg]).0,
        0
    );
    let (code, _, err) = ctl(&["context", "set", "x", &addr, "--token", "s3cret"]);
    assert_eq!(code, 2);
    assert!(err.contains("--token-file"), "{err}");
    let (code, out, _) = ctl(&["context", "list"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("* dev") && out.contains(&format!("http://{addr}")),
        "{out}"
    );
    let (_, show, _) = ctl(&["context", "show", "dev"]);
    assert!(
        show.contains("token file") && !show.contains("not-needed"),
        "{show}"
    );
    assert_eq!(
        ctl(&["runs"]).0,
        0,
        "the current context reaches the server"
    );
    let (code, _, err) = ctl(&["--context", "nope", "runs"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no context named \"nope\"") && err.contains("dev"),
        "{err}"
    );
    use std::os::unix::fs::PermissionsExt;
    let cfg = t.home.path().join("config");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, _, err) = ctl(&["runs"]);
    assert_eq!(code, 2);
    assert!(err.contains("can be written by other users"), "{err}");
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert_eq!(ctl(&["context", "delete", "dev"]).0, 0);
    assert_eq!(ctl(&["context", "use", "dev"]).0, 2);
    t.server.stop().await;
}

/// Completion scripts for every shell, and man pages, from the same
/// definitions as --help; bash's script parses.
#[test]
fn completions_and_man_pages() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let out = ttgctl_cmd()
            .args(["completion", shell])
            .output()
            .expect("completion");
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("ttgctl") && text.contains("submit") && text.contains("context"),
            "{shell}"
        );
        if shell == "bash" {
            let dir = tempfile::tempdir().expect("dir");
            let f = dir.path().join("ttgctl.bash");
            std::fs::write(&f, text.as_bytes()).expect("write");
            let ok = std::process::Command::new("bash")
                .arg("-n")
                .arg(&f)
                .status()
                .expect("bash -n");
            assert!(ok.success(), "bash completion does not parse");
        }
    }
    assert_eq!(
        ttgctl_cmd()
            .args(["completion", "tcsh"])
            .output()
            .expect("x")
            .status
            .code(),
        Some(2)
    );
    let dir = tempfile::tempdir().expect("dir");
    let out = ttgctl_cmd()
        .args(["man", "--out-dir"])
        .arg(dir.path())
        .output()
        .expect("man");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for page in [
        "ttgctl.1",
        "ttgctl-submit.1",
        "ttgctl-context.1",
        "ttgctl-wait.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    // demo refuses bad values before starting anything.
    let out = ttgctl_cmd()
        .args(["demo", "--params", "0"])
        .output()
        .expect("demo");
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stdout).contains("starting"));
}
