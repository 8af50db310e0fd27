//! The dashboard in a real headless Chromium (Debian's `chromium`, installed
//! by scripts/setup.sh) against a real server with tokens, real agent
//! processes and a real Redis: sign in, the runs list, a running sweep's
//! progress advancing, the heatmap of a 2-axis grid, retry of a
//! dead-lettered chunk, and a reader token that cannot act. Screenshots go
//! to target/dashboard/ (docs/dashboard.md shows them). Also the HTTP API's
//! answers to bad input: unknown run, wrong token, K out of range, an
//! action without its header.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};

const CLIENT: &str = "dash-client-token-0123456789";
const READER: &str = "dash-reader-token-0123456789";
const AGENT: &str = "dash-agent-token-0123456789";

/// A server with tokens and the dashboard on, a placeholder agent and an
/// exec agent.
struct Site {
    _redis: Redis,
    _server: ServerProc,
    _agents: Vec<Agent>,
    grpc: String,
    http: String,
    dir: tempfile::TempDir,
}

impl Site {
    fn start() -> Site {
        let redis = Redis::start();
        let dir = tempfile::tempdir().expect("dir");
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("client {CLIENT} alice\nreader {READER} viewer\nagent {AGENT} fleet\n"),
        )
        .expect("tokens");
        let p = prefix();
        let http_port = free_port();
        // Tracing on (to a collector nobody runs: spans are dropped), so
        // runs have a trace id for the page to link to.
        let otlp = format!("http://127.0.0.1:{}", free_port());
        let server = ServerProc::start_env(
            &redis.url,
            &p,
            &[
                "--tokens-file",
                &tokens.display().to_string(),
                "--http-addr",
                &format!("127.0.0.1:{http_port}"),
                "--trace-url-template",
                "http://jaeger.example:16686/trace/{trace_id}",
            ],
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str())],
        );
        let env = [("TTG_TOKEN", AGENT)];
        let agents = vec![
            Agent::spawn_env(
                &server.url,
                &redis.url,
                &p,
                "d1",
                2,
                &[],
                &env,
                std::process::Stdio::null(),
            ),
            Agent::spawn_env(
                &server.url,
                &redis.url,
                &p,
                "d2",
                1,
                &["--allow-exec"],
                &env,
                std::process::Stdio::null(),
            ),
        ];
        let site = Site {
            grpc: server.url.clone(),
            http: format!("http://127.0.0.1:{http_port}"),
            _redis: redis,
            _server: server,
            _agents: agents,
            dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while site.ctl(&["agents", "-q"]).1.lines().count() < 2 {
            assert!(Instant::now() < deadline, "agents did not connect");
            std::thread::sleep(Duration::from_millis(100));
        }
        site
    }

    /// ttgctl with the client token.
    fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        outcome(
            ttgctl_cmd()
                .args(["--server", &self.grpc])
                .env("TTG_TOKEN", CLIENT)
                .args(args)
                .output()
                .expect("ttgctl"),
        )
    }

    /// Submit with the flags of `line` (split at spaces): the run id.
    fn submit(&self, line: &str) -> String {
        let args: Vec<&str> = line.split_whitespace().collect();
        let (code, out, err) = self.ctl(&[&["submit", "-q"], &args[..]].concat());
        assert_eq!(code, 0, "{err}");
        out.trim().to_string()
    }

    /// An exec run of one chunk whose program fails on its first run, with
    /// one attempt: it ends FAILED with a dead-lettered chunk.
    fn failed_run(&self, program: &str) -> String {
        let id = self.submit(&format!(
            "--params 10 --chunk-size 10 --kernel exec --max-attempts 1 --name {program} --arg program={}",
            self.fails_once(program).display()
        ));
        assert_eq!(self.ctl(&["wait", &id, "--timeout", "60s"]).0, 1);
        id
    }

    fn state(&self, id: &str) -> String {
        self.ctl(&["status", id, "-q"]).1.trim().to_string()
    }

    /// A chunk-mode program whose first run fails and later runs succeed.
    fn fails_once(&self, name: &str) -> PathBuf {
        let mark = self.dir.path().join(format!("{name}.ran"));
        script(
            self.dir.path(),
            name,
            &format!(
                "#!/bin/sh\nif [ ! -f {m} ]; then touch {m}; echo 'ValueError: lr must be positive' >&2; exit 1; fi\nwhile read p; do echo \"$p\"; done\n",
                m = mark.display()
            ),
        )
    }
}

fn shots() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/dashboard");
    std::fs::create_dir_all(&d).expect("screenshots folder");
    d
}

fn screenshot(tab: &Tab, name: &str) {
    if let Ok(png) = tab.capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true) {
        let _ = std::fs::write(shots().join(format!("{name}.png")), png);
    }
}

/// Evaluate `js` in the page (awaiting a promise) to JSON.
fn eval(tab: &Tab, js: &str) -> serde_json::Value {
    tab.evaluate(js, true)
        .expect("evaluate")
        .value
        .unwrap_or(serde_json::Value::Null)
}

/// Wait until `js` is true in the page; screenshot `shot` if it never is.
fn wait_js(tab: &Tab, js: &str, within: Duration, shot: &str) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if eval(tab, js) == serde_json::Value::Bool(true) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    screenshot(tab, &format!("FAILED-{shot}"));
    panic!("{js} never held (screenshot target/dashboard/FAILED-{shot}.png)");
}

/// [`wait_js`] within 20 s.
fn until(tab: &Tab, js: &str, shot: &str) {
    wait_js(tab, js, Duration::from_secs(20), shot);
}

fn sign_in(tab: &Tab, token: &str) {
    until(tab, "document.getElementById('login').open", "login");
    tab.wait_for_element("#token")
        .expect("token field")
        .click()
        .expect("click");
    tab.type_str(token).expect("type");
    tab.wait_for_element("#login-submit")
        .expect("submit")
        .click()
        .expect("click");
    until(tab, "!document.getElementById('login').open && document.getElementById('who').textContent.length > 0", "signed-in");
}

fn go(tab: &Tab, hash: &str) {
    eval(tab, &format!("location.hash = '{hash}'; true"));
}

#[test]
fn the_dashboard_in_a_real_browser() {
    let site = Site::start();
    let grid = site.submit(
        "--axis lr=logspace:1e-4:1e-1:8 --axis depth=range:1:11 --axis seed=0,1,2 --outputs loss,acc --name grid",
    );
    assert_eq!(site.ctl(&["wait", &grid, "--timeout", "60s"]).0, 0);
    let failing = site.failed_run("fails-once.sh");
    let slow = site.submit("--params 40000 --chunk-size 10 --arg work_ms=2 --name slow");

    let browser = Browser::new(
        LaunchOptions::default_builder()
            .path(Some(PathBuf::from(
                std::env::var("TTG_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
            )))
            .sandbox(false)
            .headless(true)
            .window_size(Some((1360, 1500)))
            .idle_browser_timeout(Duration::from_secs(120))
            .build()
            .expect("launch options"),
    )
    .expect("chromium starts (apt-get install -y chromium; or TTG_CHROMIUM=path)");
    let tab = browser.new_tab().expect("tab");
    tab.set_default_timeout(Duration::from_secs(20));
    tab.navigate_to(&site.http)
        .expect("navigate")
        .wait_until_navigated()
        .expect("loaded");
    sign_in(&tab, CLIENT);

    // The runs list, live.
    for id in [&grid, &failing, &slow] {
        until(
            &tab,
            &format!("!!document.querySelector(\"tr[data-run='{id}']\")"),
            "runs",
        );
    }
    screenshot(&tab, "runs");

    // A running sweep's progress advances on its page.
    go(&tab, &format!("#/run/{slow}"));
    until(
        &tab,
        "!!document.getElementById('progress-text')",
        "run-page",
    );
    let done = |tab: &Tab| -> u64 {
        eval(
            tab,
            "parseInt(document.getElementById('progress-text').textContent)",
        )
        .as_u64()
        .unwrap_or(0)
    };
    let first = done(&tab);
    wait_js(
        &tab,
        &format!("parseInt(document.getElementById('progress-text').textContent) > {first}"),
        Duration::from_secs(30),
        "progress",
    );
    screenshot(&tab, "run-live");

    // The grid's heatmap over two axes, its best points, and its trace link.
    go(&tab, &format!("#/run/{grid}"));
    for (js, shot) in [
        (
            "document.getElementById('heatmap')?.dataset.drawn === '1'",
            "heatmap",
        ),
        (
            "document.querySelectorAll('#best-table tbody tr').length === 10",
            "best",
        ),
    ] {
        until(&tab, js, shot);
    }
    let canvas_painted = eval(&tab, "(() => { const c = document.getElementById('heatmap'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i] > 0) n++; return n > 1000; })()");
    assert_eq!(
        canvas_painted,
        serde_json::json!(true),
        "the heatmap painted cells"
    );
    let caption = eval(
        &tab,
        "document.getElementById('heatmap-caption').textContent",
    );
    assert!(
        caption.as_str().is_some_and(|c| c.contains("min of loss")),
        "{caption}"
    );
    let trace = eval(&tab, "document.getElementById('trace-link')?.href || ''");
    assert!(
        trace
            .as_str()
            .is_some_and(|t| t.starts_with("http://jaeger.example:16686/trace/")),
        "{trace}"
    );
    screenshot(&tab, "run-grid");

    // Retry a dead-lettered chunk from the page: the run then succeeds.
    go(&tab, &format!("#/run/{failing}"));
    until(&tab, "!!document.querySelector('#dead pre.err') && document.querySelector('#dead pre.err').textContent.includes('lr must be positive')", "failures");
    screenshot(&tab, "run-failures");
    // The page re-renders as the run's state arrives: press the button as
    // it is now, again until the run moves (a second retry finds nothing
    // dead and changes nothing).
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.state(&failing) == "FAILED" {
        assert!(
            Instant::now() < deadline,
            "retry from the page did not re-queue the chunk"
        );
        eval(
            &tab,
            "document.querySelector('#retry:not([disabled])')?.click(); true",
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while site.state(&failing) != "SUCCEEDED" {
        assert!(
            Instant::now() < deadline,
            "the retried chunk did not succeed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Agents.
    go(&tab, "#/agents");
    until(
        &tab,
        "document.querySelectorAll('#agents tbody tr').length === 2",
        "agents",
    );
    // Chunks done per agent (from heartbeats: within a few seconds).
    wait_js(
        &tab,
        "[...document.querySelectorAll('#agents tbody tr')].some(r => parseInt(r.children[4].textContent) > 0)",
        Duration::from_secs(20),
        "agents-done",
    );
    screenshot(&tab, "agents");

    // A reader sees failures but cannot act, in the page or around it.
    let failing2 = site.failed_run("fails-for-the-reader.sh");
    tab.wait_for_element("#sign-out")
        .expect("sign out")
        .click()
        .expect("click");
    sign_in(&tab, READER);
    go(&tab, &format!("#/run/{failing2}"));
    until(
        &tab,
        "!!document.querySelector('#dead pre.err') && !!document.getElementById('read-only')",
        "reader",
    );
    assert_eq!(
        eval(&tab, "document.getElementById('retry').disabled"),
        serde_json::json!(true)
    );
    let status = eval(&tab, &format!("fetch('/api/v1/runs/{failing2}/retry', {{method: 'POST', headers: {{'X-TTG-Action': '1'}}}}).then(r => r.status)"));
    assert_eq!(
        status,
        serde_json::json!(403),
        "the API refuses a reader too"
    );
    screenshot(&tab, "reader");
    assert_eq!(site.state(&failing2), "FAILED");
}

/// The JSON API without a browser: errors name what is wrong, with the
/// matching HTTP status.
#[test]
fn the_api_answers_bad_requests_clearly() {
    let site = Site::start();
    let id = site.submit("--axis a=1,2 --axis b=x,y --outputs loss");
    assert_eq!(site.ctl(&["wait", &id, "--timeout", "60s"]).0, 0);
    let get = |path: &str, token: Option<&str>| -> (u16, serde_json::Value) {
        let mut args = vec![
            "-s".to_string(),
            "-o".into(),
            "-".into(),
            "-w".into(),
            "\n%{http_code}".into(),
        ];
        if let Some(t) = token {
            args.extend(["-H".into(), format!("Authorization: Bearer {t}")]);
        }
        args.push(format!("{}{path}", site.http));
        let out = std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').expect("status line");
        (
            code.parse().expect("code"),
            serde_json::from_str(body).unwrap_or(serde_json::Value::Null),
        )
    };
    let (code, v) = get(&format!("/api/v1/runs/{id}"), None);
    assert_eq!(
        (code, v["error"]["code"].as_str()),
        (401, Some("Unauthenticated"))
    );
    let (code, _) = get(&format!("/api/v1/runs/{id}"), Some("wrong-token"));
    assert_eq!(code, 401);
    let (code, v) = get(&format!("/api/v1/runs/{id}"), Some(READER));
    assert_eq!(code, 200);
    assert_eq!(v["axes"][0]["name"], "a");
    let (code, v) = get("/api/v1/runs/00000000000-nosuch", Some(READER));
    assert_eq!((code, v["error"]["code"].as_str()), (404, Some("NotFound")));
    let (code, v) = get("/api/v1/runs/bad%20id", Some(READER));
    assert_eq!(code, 400, "{v}");
    let (code, v) = get(&format!("/api/v1/runs/{id}/best?k=1000000"), Some(READER));
    assert_eq!(code, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("k: must be in 1..=10000")),
        "{v}"
    );
    let (code, v) = get(&format!("/api/v1/runs/{id}/histogram?bins=0"), Some(READER));
    assert_eq!(code, 400, "{v}");
    let (code, v) = get(
        &format!("/api/v1/runs/{id}/heatmap?x=a&y=nope"),
        Some(READER),
    );
    assert!(
        code == 400
            && v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("no axis \"nope\"")),
        "{v}"
    );
    let (code, v) = get(
        &format!("/api/v1/runs/{id}/heatmap?x=a&y=b&output=loss"),
        Some(READER),
    );
    assert_eq!(code, 200);
    assert_eq!(v["cells"].as_array().map(Vec::len), Some(2));
    // Actions: a reader is refused; the header is required even for a client.
    let post = |path: &str, token: &str, header: bool| -> u16 {
        let mut c = std::process::Command::new("curl");
        c.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ]);
        if header {
            c.args(["-H", "X-TTG-Action: 1"]);
        }
        let out = c
            .arg(format!("{}{path}", site.http))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).parse().expect("code")
    };
    assert_eq!(post(&format!("/api/v1/runs/{id}/retry"), READER, true), 403);
    assert_eq!(
        post(&format!("/api/v1/runs/{id}/retry"), CLIENT, false),
        403
    );
    // Every answer carries the CSP.
    let head = std::process::Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            &format!("{}/", site.http),
        ])
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&head.stdout).to_lowercase();
    assert!(
        head.contains("content-security-policy: default-src 'none'"),
        "{head}"
    );
    assert!(head.contains("x-frame-options: deny"), "{head}");
    // The CSV download streams every point.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-H",
            &format!("Authorization: Bearer {READER}"),
            &format!("{}/api/v1/runs/{id}/results.csv", site.http),
        ])
        .output()
        .expect("curl");
    let csv = String::from_utf8_lossy(&out.stdout);
    assert_eq!(csv.lines().next(), Some("index,a,b,loss"));
    assert_eq!(csv.lines().count(), 1 + 4);
    // And as Parquet: a file the parquet crate reads back, 4 rows.
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-H",
            &format!("Authorization: Bearer {READER}"),
            &format!("{}/api/v1/runs/{id}/results.parquet", site.http),
        ])
        .output()
        .expect("curl");
    use parquet::file::reader::FileReader;
    let path = site.dir.path().join("results.parquet");
    std::fs::write(&path, &out.stdout).expect("write");
    let file =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&path).expect("open"))
            .expect("a Parquet file");
    assert_eq!(file.metadata().file_metadata().num_rows(), 4);
    let names: Vec<String> = file
        .metadata()
        .file_metadata()
        .schema_descr()
        .columns()
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    assert_eq!(names, ["index", "a", "b", "loss"]);
}

/// With TLS on the gRPC port the dashboard is https with the same
/// certificate, and its session cookie is Secure, HttpOnly, SameSite=Strict.
#[test]
fn the_dashboard_is_https_when_the_server_has_tls() {
    use rcgen::{CertificateParams, KeyPair};
    let redis = Redis::start();
    let dir = tempfile::tempdir().expect("dir");
    let key = KeyPair::generate().expect("key");
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    let (cert_pem, key_pem, tokens) = (
        dir.path().join("server.pem"),
        dir.path().join("server.key"),
        dir.path().join("tokens"),
    );
    std::fs::write(&cert_pem, cert.pem()).expect("cert");
    std::fs::write(&key_pem, key.serialize_pem()).expect("key");
    std::fs::write(&tokens, format!("client {CLIENT} alice\n")).expect("tokens");
    let http_port = free_port();
    let s = |p: &Path| p.display().to_string();
    let _server = ServerProc::start(
        &redis.url,
        &prefix(),
        &[
            "--tokens-file",
            &s(&tokens),
            "--tls-cert",
            &s(&cert_pem),
            "--tls-key",
            &s(&key_pem),
            "--http-addr",
            &format!("127.0.0.1:{http_port}"),
        ],
    );
    let base = format!("https://127.0.0.1:{http_port}");
    let curl = |args: &[&str]| {
        outcome(
            std::process::Command::new("curl")
                .args(["-s", "--cacert", &s(&cert_pem)])
                .args(args)
                .output()
                .expect("curl"),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let (code, out, _) = curl(&[&format!("{base}/")]);
        if code == 0 && out.contains("<title>TTG</title>") {
            break out;
        }
        assert!(Instant::now() < deadline, "no dashboard at {base}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(page.contains("/app.js"));
    let (_, head, _) = curl(&[
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-H",
        "Content-Type: application/json",
        "-d",
        &format!("{{\"token\": \"{CLIENT}\"}}"),
        &format!("{base}/api/v1/session"),
    ]);
    let cookie = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap_or_else(|| panic!("no cookie in {head}"));
    for attr in ["HttpOnly", "SameSite=Strict", "Secure"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    // Plain http to the https port gets no page.
    let (_, out, _) = curl(&[&format!("http://127.0.0.1:{http_port}/")]);
    assert!(!out.contains("<title>TTG</title>"));
}
