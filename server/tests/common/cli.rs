//! ttgctl as a test runs it, and the programs and processes a test starts
//! and checks were left behind.

use super::*;

/// The ttgctl binary, kept from this machine's contexts and connection
/// variables: no config file (TTG_CONFIG names one that does not exist),
/// no TTG_SERVER / TTG_CONTEXT / TTG_TOKEN / TTG_TOKEN_FILE.
pub fn ttgctl_cmd() -> Command {
    let mut c = Command::new(bin("ttgctl"));
    c.env(
        "TTG_CONFIG",
        std::env::temp_dir()
            .join("ttg-tests-no-config")
            .join("config"),
    );
    for v in [
        "TTG_SERVER",
        "TTG_CONTEXT",
        "TTG_TOKEN",
        "TTG_TOKEN_FILE",
        "TTG_CA",
        "TTG_CERT",
        "TTG_KEY",
    ] {
        c.env_remove(v);
    }
    c
}

/// Run ttgctl against `server`: (exit code, stdout, stderr).
pub fn ttgctl(server: &str, args: &[&str]) -> (i32, String, String) {
    let out = ttgctl_cmd()
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .expect("run ttgctl");
    outcome(out)
}

/// A finished process's (exit code, stdout, stderr); -1 if a signal ended it.
pub fn outcome(out: std::process::Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Write an executable script `name` with `body` into `dir`.
pub fn script(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write script");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    p
}

/// Whether process `pid` runs (a zombie does not).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

/// Live processes whose command line mentions `needle` (the test's own
/// temporary folder): what a test leaves behind.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            (pid != me && cmd.contains(needle) && alive(pid)).then_some((pid, cmd))
        })
        .collect()
}

/// A Python model program using the repository's library (`python/`, put
/// on `sys.path`): `body` defines `model`; `os`, `sys`, `time` and `ttg`
/// are imported and `placeholder(p)` gives the placeholder kernel's value.
pub fn py_model(dir: &std::path::Path, name: &str, body: &str) -> PathBuf {
    let lib = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    script(
        dir,
        name,
        &format!(
            "#!/usr/bin/env python3\nimport os, sys, time\nsys.path.insert(0, {lib:?})\nimport ttg\n\
             def placeholder(p):\n    m = p % 100\n    return float((7 * (p % 1000) + 13) % 1000) + (m / 10 if m < 10 else m / 100)\n\
             {body}\nif __name__ == '__main__':\n    ttg.serve(model)\n",
            lib = lib.display().to_string(),
        ),
    )
}

/// Wait (10 s at most) until no live process mentions `dir` on its command
/// line: nothing a test's programs started is left behind.
pub async fn assert_nothing_left(dir: &std::path::Path) {
    let needle = dir.display().to_string();
    wait_until(
        "no process of the test's programs is left",
        Duration::from_secs(10),
        || {
            let left = processes_mentioning(&needle);
            async move { left.is_empty().then_some(()) }
        },
    )
    .await;
}
