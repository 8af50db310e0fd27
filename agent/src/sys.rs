//! Process-group handling for the exec kernel: each program runs in its own
//! group, dies with the agent, and the whole group is killed at once.
#![allow(unsafe_code)]

/// Put the child in a new process group of its own and have the kernel
/// SIGKILL it if the agent dies.
pub fn own_group_dies_with_agent(cmd: &mut tokio::process::Command) {
    cmd.process_group(0);
    // SAFETY: runs between fork and exec and calls only prctl(2), which is
    // async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
            Ok(())
        });
    }
}

/// SIGKILL every process in group `pgid` (ignores a group that is gone).
pub fn kill_group(pgid: u32) {
    // SAFETY: kill(2) on a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-(pgid as libc::pid_t), libc::SIGKILL);
    }
}

/// A process group, SIGKILLed when this guard drops: whatever a program
/// left running in its group goes with it.
#[derive(Debug)]
pub struct ProcessGroup(Option<u32>);

impl ProcessGroup {
    /// Guard the group led by `pid` (the child started with
    /// [`own_group_dies_with_agent`]); None guards nothing.
    pub fn of(pid: Option<u32>) -> Self {
        Self(pid)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        if let Some(pgid) = self.0 {
            kill_group(pgid);
        }
    }
}
