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

/// Die quietly on a closed stdout (`ttgctl runs | head -1`), as Unix tools do,
/// instead of Rust's default of turning the write into an error or a panic.
pub fn default_sigpipe() {
    // SAFETY: resets one signal's disposition; no memory is touched.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
