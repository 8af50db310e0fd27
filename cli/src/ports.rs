//! Who holds a TCP port: so a busy `--listen` address is reported with the
//! process listening on it, before anything is started (Linux: the
//! listening socket's inode from /proc/net/tcp{,6}, then the process with
//! that socket among its descriptors; another user's process shows only as
//! "another user's process").

use std::net::SocketAddr;

/// Check that `addr` can be listened on now: Err names who holds it.
pub fn check_free(addr: SocketAddr) -> Result<(), String> {
    match std::net::TcpListener::bind(addr) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "{addr} is already in use by {}: is another `ttgctl up` running there? Pick a free address with --listen 127.0.0.1:PORT",
            holder(addr.port()).unwrap_or_else(|| "another process".into())
        )),
        Err(e) => Err(format!("cannot listen on {addr}: {e}")),
    }
}

/// "pid 1234 (ttg-server)" for the process listening on `port`, if found.
pub fn holder(port: u16) -> Option<String> {
    let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|text| listening_inodes(&text, port))
        .collect();
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for proc_entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = proc_entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(proc_entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path()) {
                if wanted.iter().any(|w| target.as_os_str() == w.as_str()) {
                    let comm = std::fs::read_to_string(proc_entry.path().join("comm"))
                        .map(|c| c.trim().to_string())
                        .unwrap_or_default();
                    return Some(format!("pid {pid} ({comm})"));
                }
            }
        }
    }
    Some("another user's process".into())
}

/// Inodes of the sockets listening (state 0A) on `port` in a
/// /proc/net/tcp table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == "0A";
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listening_socket_is_found_in_the_table() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 0100007F:C383 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n   1: 0100007F:C383 0100007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n";
        assert_eq!(listening_inodes(table, 0xC383), vec![4242]);
        assert!(listening_inodes(table, 80).is_empty());
    }

    #[test]
    fn a_held_port_names_this_process() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        let e = check_free(addr).expect_err("busy");
        assert!(e.contains(&format!("pid {}", std::process::id())), "{e}");
    }
}
