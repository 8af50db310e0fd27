//! `ttgctl up`: a local cluster that serves a sweep, and leaves nothing behind
//! on Ctrl-C or when the process that started it dies.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

fn wait_closed(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if !port_open(port) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// What `ttgctl up`'s banner says.
struct Banner {
    /// The private Redis's port (with --redis-cluster: its first node's).
    redis_port: u16,
    /// With --redis-cluster: every node's port.
    cluster_ports: Vec<u16>,
    /// The cluster's folder (from the logs line).
    dir: std::path::PathBuf,
    /// Every line of the banner.
    text: String,
}

/// Read `ttgctl up`'s banner up to its last line. The rest of its output is
/// drained by a thread, so its stdout stays open as a terminal's would.
fn banner(out: impl std::io::Read + Send + 'static) -> Banner {
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut port, mut dir, mut text) = (None, None, String::new());
    let mut cluster_ports = Vec::new();
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        text.push_str(&line);
        text.push('\n');
        let l = line.trim();
        // The password is never printed: `redis://:***@127.0.0.1:PORT`.
        if let Some(rest) = l.strip_prefix("redis   redis://:***@127.0.0.1:") {
            let p: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            port = p.parse().ok();
        }
        if let Some((_, list)) = l
            .strip_prefix("redis   cluster of ")
            .and_then(|r| r.split_once(" on 127.0.0.1:"))
        {
            cluster_ports = list.split(',').filter_map(|p| p.parse().ok()).collect();
            port = cluster_ports.first().copied();
        }
        if let Some(rest) = l.strip_prefix("logs    ") {
            dir = rest.strip_suffix("/*.log").map(std::path::PathBuf::from);
        }
        if l.starts_with("Ctrl-C stops everything") {
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Banner {
                redis_port: port.unwrap_or_else(|| panic!("no redis line in:\n{text}")),
                cluster_ports,
                dir: dir.unwrap_or_else(|| panic!("no logs line in:\n{text}")),
                text,
            };
        }
    }
    panic!("ttgctl up printed no full banner:\n{text}");
}

/// Redis's first reply to a PING without AUTH.
fn ping_without_auth(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect redis");
    s.write_all(b"PING\r\n").expect("write");
    let mut buf = [0u8; 128];
    let n = s.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Command lines of every process whose command line mentions `needle`.
fn cmdlines_with(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&raw).replace('\0', " ");
            if line.contains(needle) {
                out.push(line);
            }
        }
    }
    out
}

/// ttgctl with its own HOME (and config file in it): `up` adds its
/// cluster's context there, and tests running side by side must not share
/// one.
fn ttgctl(home: &std::path::Path) -> Command {
    let mut c = ttgctl_cmd();
    c.env("HOME", home)
        .env("TTG_CONFIG", home.join(".ttg").join("config"));
    c
}

#[test]
fn up_serves_a_sweep_and_tears_down_on_ctrl_c() {
    let home = tempfile::tempdir().expect("home");
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let mut up = ttgctl(home.path())
        .args([
            "up",
            "--agents",
            "2",
            "--concurrency",
            "2",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ttgctl up");
    let b = banner(up.stdout.take().expect("stdout"));
    let redis_port = b.redis_port;
    // No one else on the machine gets in: a fresh random folder only we can
    // enter, a Redis that wants a password, and no secret on any command line.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&b.dir)
        .expect("cluster dir")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "{}", b.dir.display());
    let name = b
        .dir
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("ttg-local-") && name.len() == "ttg-local-".len() + 32,
        "{name}: not a random name"
    );
    assert!(ping_without_auth(redis_port).starts_with("-NOAUTH"));
    for secret_file in ["tokens", "redis.conf"] {
        let mode = std::fs::metadata(b.dir.join(secret_file))
            .expect(secret_file)
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{secret_file}");
    }
    let conf = std::fs::read_to_string(b.dir.join("redis.conf")).expect("redis.conf");
    let password = conf
        .lines()
        .find_map(|l| l.strip_prefix("requirepass "))
        .expect("requirepass")
        .to_string();
    let tokens = std::fs::read_to_string(b.dir.join("tokens")).expect("tokens");
    let mut secrets = vec![password];
    secrets.extend(
        tokens
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .map(str::to_string),
    );
    assert_eq!(secrets.len(), 3, "{tokens}");
    for secret in &secrets {
        assert!(
            !b.text.contains(secret.as_str()),
            "a secret in the banner:\n{}",
            b.text
        );
        let seen = cmdlines_with(secret);
        assert!(seen.is_empty(), "a secret on a command line: {seen:?}");
    }
    assert!(
        !cmdlines_with(&name).is_empty(),
        "the children were looked for"
    );
    let out = ttgctl(home.path())
        .args([
            "--server", &server, "submit", "--params", "10000", "--watch",
        ])
        .output()
        .expect("submit");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("sum 5,000,355.00"), "{text}");
    let agents = ttgctl(home.path())
        .args(["--server", &server, "agents", "-o", "json"])
        .output()
        .expect("agents");
    let list: serde_json_like::Agents = serde_json_like::parse(&agents.stdout);
    assert_eq!(list.count, 2);

    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .expect("kill -INT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(s) = up.try_wait().expect("wait") {
            break s.code();
        }
        assert!(
            Instant::now() < deadline,
            "ttgctl up did not exit on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(code, Some(0));
    assert!(
        wait_closed(port, Duration::from_secs(5)),
        "server still listening"
    );
    assert!(
        wait_closed(redis_port, Duration::from_secs(5)),
        "redis still listening"
    );
}

#[test]
fn up_stops_when_its_parent_dies() {
    let port = free_port();
    // A shell starts `ttgctl up` and is then SIGKILLed: up must notice and tear down.
    let home = tempfile::tempdir().expect("home");
    let mut shell = Command::new("bash")
        .env("HOME", home.path())
        .arg("-c")
        .arg(format!(
            "{} up --agents 1 --listen 127.0.0.1:{port}; sleep 600",
            bin("ttgctl").display()
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn shell");
    let redis_port = banner(shell.stdout.take().expect("stdout")).redis_port;
    assert!(port_open(port));
    shell.kill().expect("kill shell");
    let _ = shell.wait();
    assert!(
        wait_closed(port, Duration::from_secs(30)),
        "server outlived ttgctl up's parent"
    );
    assert!(
        wait_closed(redis_port, Duration::from_secs(10)),
        "redis outlived ttgctl up's parent"
    );
}

/// Just enough JSON reading for one assertion, without a serde dependency.
mod serde_json_like {
    pub struct Agents {
        pub count: usize,
    }
    pub fn parse(bytes: &[u8]) -> Agents {
        let s = String::from_utf8_lossy(bytes);
        Agents {
            count: s.matches("\"agent_id\"").count(),
        }
    }
}

/// `ttgctl demo --python` (what `make demo-python` runs): a local cluster
/// whose agents allow exec sweeps through examples/python/model.py in
/// mode=worker and checks the sum; nothing of the cluster is left.
#[test]
fn demo_python_sweeps_through_the_library_and_checks_the_sum() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let home = tempfile::tempdir().expect("home");
    let out = ttgctl_cmd()
        .args([
            "demo",
            "--params",
            "2000",
            "--agents",
            "2",
            "--work-ms",
            "0",
            "--python",
        ])
        .arg(root.join("examples/python/model.py"))
        .env("PYTHONPATH", root.join("python"))
        .env("HOME", home.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run ttgctl demo");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("exec mode=worker"), "{text}");
    assert!(text.contains("matches the expected 1,000,071.00"), "{text}");
    let model = root
        .join("examples/python/model.py")
        .canonicalize()
        .expect("model");
    let left = processes_mentioning(&model.display().to_string());
    assert!(left.is_empty(), "left behind: {left:?}");
    // A path that does not exist is a usage error naming it.
    let bad = ttgctl_cmd()
        .args(["demo", "--python", "/nonexistent/model.py"])
        .env("HOME", home.path())
        .output()
        .expect("run ttgctl demo");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--python /nonexistent/model.py"));
}

/// `ttgctl up --agents 1` on `port`, with `extra` flags, its banner read.
fn spawn_up(home: &std::path::Path, port: u16, extra: &[&str]) -> (std::process::Child, Banner) {
    let mut up = ttgctl(home)
        .args(["up", "--agents", "1", "--concurrency", "1", "--listen"])
        .arg(format!("127.0.0.1:{port}"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn ttgctl up");
    let b = banner(up.stdout.take().expect("stdout"));
    (up, b)
}

/// Ctrl-C an `up` and wait for it to exit 0.
fn interrupt(mut up: std::process::Child) {
    Command::new("kill")
        .args(["-INT", &up.id().to_string()])
        .status()
        .expect("kill -INT");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = up.try_wait().expect("wait") {
            assert_eq!(s.code(), Some(0), "ttgctl up's exit");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "ttgctl up did not exit on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// ttgctl in `home` with `args`: (exit code, stdout, stderr).
fn ctl(home: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    outcome(ttgctl(home).args(args).output().expect("run ttgctl"))
}

fn config(home: &std::path::Path) -> String {
    std::fs::read_to_string(home.join(".ttg").join("config")).unwrap_or_default()
}

/// `up --redis-cluster 3`: a private 3+3 Redis Cluster of password-guarded
/// nodes serves a sweep; a primary SIGKILLed is replaced by its replica and
/// the next sweep is exact too; Ctrl-C stops every node.
#[test]
fn up_with_a_redis_cluster_serves_sweeps_across_a_failover() {
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let port = free_port();
    let server = format!("http://127.0.0.1:{port}");
    let (code, _, err) = ctl(h, &["up", "--redis-cluster", "2"]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("--redis-cluster must be in 3..=16 primaries (Redis Cluster needs 3), got 2"),
        "{err}"
    );
    let (code, _, err) = ctl(h, &["up", "--redis-cluster", "3", "--data-dir", "/tmp/x"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot be used with"), "{err}");
    let (up, b) = spawn_up(h, port, &["--redis-cluster", "3"]);
    assert_eq!(b.cluster_ports.len(), 6, "{}", b.text);
    // Every node wants the password; it is in config files only we can
    // read, and on no command line.
    let conf_of = |p: u16| b.dir.join(format!("redis-{p}")).join("redis.conf");
    let conf = std::fs::read_to_string(conf_of(b.redis_port)).expect("node config");
    let password = conf
        .lines()
        .find_map(|l| l.strip_prefix("requirepass "))
        .expect("requirepass")
        .to_string();
    for &p in &b.cluster_ports {
        assert!(ping_without_auth(p).starts_with("-NOAUTH"), "node {p}");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(conf_of(p))
            .expect("conf")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    assert!(
        cmdlines_with(&password).is_empty(),
        "the password on a command line"
    );
    assert!(!b.text.contains(&password), "the password in the banner");

    let sweep = || {
        let (code, out, err) = ctl(
            h,
            &[
                "--server", &server, "submit", "--params", "10000", "--watch",
            ],
        );
        (code == 0 && out.contains("sum 5,000,355.00"))
            .then_some(())
            .ok_or(format!("{code}: {out}{err}"))
    };
    sweep().expect("a sweep on the cluster");
    // One slot group per primary: runs are placed by load, so three
    // submitted at once go one to each group (ids of groups 1 and 2 end in
    // -1 and -2).
    let (mut groups, mut ids) = (std::collections::BTreeSet::new(), Vec::new());
    for _ in 0..3 {
        let (code, out, err) = ctl(
            h,
            &[
                "--server",
                &server,
                "submit",
                "--params",
                "100000",
                "--arg",
                "work_ms=1",
                "-q",
            ],
        );
        assert_eq!(code, 0, "{err}");
        ids.push(out.trim().to_string());
    }
    for id in &ids {
        groups.insert(ttg_proto::keys::run_group(id));
        let (code, _, err) = ctl(h, &["--server", &server, "cancel", id]);
        assert_eq!(code, 0, "{err}");
    }
    assert_eq!(groups.into_iter().collect::<Vec<_>>(), [0, 1, 2]);

    // SIGKILL the primary of the installation's slot.
    let node = |p: u16| {
        redis::Client::open(format!("redis://:{password}@127.0.0.1:{p}"))
            .and_then(|c| c.get_connection_with_timeout(Duration::from_secs(1)))
    };
    let mut c = node(b.redis_port).expect("connect");
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg("{ttg}:runs")
        .query(&mut c)
        .expect("keyslot");
    let shards: redis::Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query(&mut c)
        .expect("slots");
    let primary = match shards {
        redis::Value::Array(ranges) => ranges.into_iter().find_map(|r| match r {
            redis::Value::Array(f) => {
                let n = |v: &redis::Value| match v {
                    redis::Value::Int(i) => Some(*i),
                    _ => None,
                };
                let (lo, hi) = (n(&f[0])?, n(&f[1])?);
                let owner = match &f[2] {
                    redis::Value::Array(a) => n(&a[1])?,
                    _ => return None,
                };
                (lo <= slot as i64 && slot as i64 <= hi).then_some(owner as u16)
            }
            _ => None,
        }),
        _ => None,
    }
    .expect("the slot's primary");
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut node(primary).expect("primary"))
        .expect("INFO");
    let pid = info
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .expect("process_id")
        .trim()
        .to_string();
    Command::new("kill")
        .args(["-KILL", &pid])
        .status()
        .expect("kill");
    // The replica takes over (node timeout 1 s); the next sweep is exact,
    // once the server answers again.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match sweep() {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "no sweep after the failover: {e}"
            ),
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    interrupt(up);
    for &p in &b.cluster_ports {
        assert!(
            wait_closed(p, Duration::from_secs(5)),
            "node {p} still listening"
        );
    }
    assert!(!b.dir.exists(), "the cluster's folder is removed");
}

/// Two `up`s side by side each add their own context and keep working; a
/// third on a busy port fails at once, naming the holder, and touches
/// nothing of the cluster there; each `up` takes only its own context away.
#[test]
fn two_ups_keep_their_own_contexts_and_a_busy_port_fails_fast() {
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let (pa, pb) = (free_port(), free_port());
    let (a, _) = spawn_up(h, pa, &[]);
    let (b, banner_b) = spawn_up(h, pb, &[]);
    let (na, nb) = (format!("127.0.0.1:{pa}"), format!("127.0.0.1:{pb}"));
    // The banner's next command reaches this cluster, with the real concurrency.
    assert!(
        banner_b
            .text
            .contains(&format!("ttgctl --context {nb} submit")),
        "{}",
        banner_b.text
    );
    assert!(
        banner_b.text.contains("1 × concurrency 1"),
        "{}",
        banner_b.text
    );
    let cfg = config(h);
    assert!(cfg.contains(&format!("current-context: {nb}")), "{cfg}");
    assert!(cfg.contains(&format!("server: http://{na}")), "{cfg}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(h.join(".ttg/config"))
        .expect("config")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // --server host:port alone takes that cluster's credentials; --context too.
    for name in [&na, &nb] {
        let (code, out, err) = ctl(h, &["--server", name, "runs"]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let (code, out, err) = ctl(
        h,
        &["--context", &na, "submit", "--params", "1000", "--watch"],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("sum 500,035.50"), "{out}");
    let (code, runs_b, _) = ctl(h, &["--context", &nb, "runs", "-q"]);
    assert_eq!(
        (code, runs_b.trim()),
        (0, ""),
        "B has no run: separate clusters"
    );
    // A third `up` on A's port: refused before anything starts.
    let t0 = Instant::now();
    let (code, out, err) = ctl(h, &["up", "--agents", "1", "--listen", &na]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("already in use by pid") && err.contains("ttg-server"),
        "{err}"
    );
    assert!(!out.contains("is up"), "{out}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "not fast: {:?}",
        t0.elapsed()
    );
    let (code, out, err) = ctl(h, &["--context", &na, "runs", "-q"]);
    assert_eq!(
        (code, out.lines().count()),
        (0, 1),
        "A untouched: {out}{err}"
    );
    // B stops: its context goes, A is current again, plain commands reach A.
    interrupt(b);
    let cfg = config(h);
    assert!(!cfg.contains(&nb), "{cfg}");
    assert!(cfg.contains(&format!("current-context: {na}")), "{cfg}");
    let (code, out, err) = ctl(h, &["runs", "-q"]);
    assert_eq!((code, out.lines().count()), (0, 1), "{out}{err}");
    interrupt(a);
    let cfg = config(h);
    assert!(
        !cfg.contains(&na) && !cfg.contains("current-context"),
        "{cfg}"
    );
}

/// `up --data-dir DIR` keeps its runs across a restart, and one data folder
/// serves one cluster at a time; an `up` whose server fails keeps its logs
/// and says why.
#[test]
fn up_keeps_runs_in_its_data_dir_and_its_logs_when_it_fails() {
    let home = tempfile::tempdir().expect("home");
    let h = home.path();
    let data = h.join("runs");
    let data_arg = data.display().to_string();
    let (up, b) = spawn_up(h, free_port(), &["--data-dir", &data_arg]);
    assert!(b.text.contains("runs kept in"), "{}", b.text);
    let (code, id, err) = ctl(h, &["submit", "--params", "1000", "-q"]);
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_string();
    assert_eq!(ctl(h, &["wait", &id, "--timeout", "30s"]).0, 0);
    let (code, _, err) = ctl(
        h,
        &[
            "up",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
            &data_arg,
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("in use by another `ttgctl up`"), "{err}");
    interrupt(up);
    let (up, _) = spawn_up(h, free_port(), &["--data-dir", &data_arg]);
    let (code, out, err) = ctl(h, &["status", &id, "-q"]);
    assert_eq!((code, out.trim()), (0, "SUCCEEDED"), "{err}");
    interrupt(up);
    // A server that refuses its flags: exit 2, its log line shown, the log kept.
    let (code, _, err) = ctl(
        h,
        &[
            "up",
            "--prefix",
            "",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--prefix must be 1..=64 characters"), "{err}");
    let kept = err
        .split("kept in ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .map(std::path::PathBuf::from)
        .expect("the logs' folder named");
    assert!(kept.join("server.log").exists(), "{}", kept.display());
    assert!(!kept.join("tokens").exists(), "secrets go, logs stay");
    std::fs::remove_dir_all(kept).expect("clean up");
}
