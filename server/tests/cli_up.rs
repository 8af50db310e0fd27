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
    /// The private Redis's port.
    redis_port: u16,
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
        if let Some(rest) = l.strip_prefix("logs    ") {
            dir = rest.strip_suffix("/*.log").map(std::path::PathBuf::from);
        }
        if l.starts_with("Ctrl-C stops everything") {
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return Banner {
                redis_port: port.unwrap_or_else(|| panic!("no redis line in:\n{text}")),
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

/// ttgctl with its own HOME: `up` saves its cluster's token in
/// ~/.ttg/token, and tests running side by side must not share one.
fn ttgctl(home: &std::path::Path) -> Command {
    let mut c = Command::new(bin("ttgctl"));
    c.env("HOME", home);
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
    let out = Command::new(bin("ttgctl"))
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
    let bad = Command::new(bin("ttgctl"))
        .args(["demo", "--python", "/nonexistent/model.py"])
        .env("HOME", home.path())
        .output()
        .expect("run ttgctl demo");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--python /nonexistent/model.py"));
}
