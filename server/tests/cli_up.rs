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

/// Read `ttgctl up`'s banner and return the private Redis's port. The rest of
/// its output is drained by a thread, so its stdout stays open as a
/// terminal's would.
fn redis_port_from_banner(out: impl std::io::Read + Send + 'static) -> u16 {
    let mut lines = BufReader::new(out).lines();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let Some(Ok(line)) = lines.next() else { break };
        if let Some(rest) = line.trim().strip_prefix("redis   redis://127.0.0.1:") {
            let port: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
            std::thread::spawn(move || for _ in lines.by_ref() {});
            return port.parse().expect("redis port");
        }
    }
    panic!("ttgctl up printed no redis line");
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
    let redis_port = redis_port_from_banner(up.stdout.take().expect("stdout"));
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
    let redis_port = redis_port_from_banner(shell.stdout.take().expect("stdout"));
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
