//! The few OS calls the local cluster needs: signals, and tying children's
//! lives to ours so nothing outlives `ttgctl up`.
#![allow(unsafe_code)]

/// Send `sig` to process `pid`.
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a pid we spawned; no memory is touched.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Ask the kernel to send us `sig` when our parent exits (Linux).
pub fn die_with_parent(sig: i32) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes a plain integer; no memory is touched.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong);
    }
}

/// Make a child get `sig` when this process dies, even by SIGKILL.
pub fn child_dies_with_us(cmd: &mut tokio::process::Command, sig: i32) {
    // SAFETY: the closure runs between fork and exec and calls only prctl(2),
    // which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong);
            Ok(())
        });
    }
}

/// Exit status of a process that wrote to a closed pipe (128 + SIGPIPE).
pub const EXIT_CLOSED_PIPE: i32 = 141;

/// End quietly on a closed stdout (`ttgctl runs | head -1`), as Unix tools
/// do. SIGPIPE stays ignored (Rust's default): resetting it would also kill
/// the process when a server closes a socket under a write, with no word
/// of why. Instead a panic on a closed pipe (`println!`'s) exits 141
/// without a message; every other panic is reported as usual.
pub fn quiet_on_closed_stdout() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or_default();
        if msg.contains("Broken pipe") || msg.contains("BrokenPipe") {
            std::process::exit(EXIT_CLOSED_PIPE);
        }
        report(info);
    }));
}

/// Whether process `pid` exists (signal 0: nothing is sent).
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks; no memory is touched.
    let r = unsafe { libc::kill(pid as libc::pid_t, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Take an exclusive `flock` on `f` (blocking); released when `f` closes.
pub fn lock_exclusive(f: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock(2) on a descriptor the caller owns; no memory is touched.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Try to take an exclusive `flock` on `f` without waiting: false if another
/// process holds it.
pub fn try_lock_exclusive(f: &std::fs::File) -> bool {
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock(2) on a descriptor the caller owns; no memory is touched.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}
