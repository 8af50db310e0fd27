//! `ttgctl up --redis-cluster N`: a private Redis Cluster of N primaries
//! with a replica each, `redis-server --cluster-enabled yes` processes on
//! free loopback ports, joined by `redis-cli --cluster create`.
//!
//! The same care as the single private Redis (see `cluster.rs`): one random
//! password for every node (`requirepass`, and `masterauth` so replicas can
//! sync), in config files only this user can read; it reaches `redis-cli`
//! by its `REDISCLI_AUTH` variable and the server and agents by
//! `TTG_REDIS_CLUSTER`, never on a command line. Nodes time out after 1 s,
//! so a killed primary's replica takes over within seconds, and replicas
//! sync at once: a replica promoted before its first sync would have no
//! data (docs/architecture.md, "Redis Cluster").

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use crate::client::{CliError, CliResult};
use crate::cluster::{find_binary, free_port, random_token, write_private};
use crate::sys;

/// Primaries `--redis-cluster` accepts (Redis Cluster needs 3).
pub const PRIMARIES: std::ops::RangeInclusive<u32> = 3..=16;

/// A started local Redis Cluster.
pub struct LocalRedisCluster {
    /// Node processes, primaries' candidates first (as `--cluster create`
    /// was given them).
    pub nodes: Vec<(u16, Child)>,
    /// Seed URLs with the password, comma-separated: for
    /// `TTG_REDIS_CLUSTER` only (never printed or put on a command line).
    pub seeds: String,
}

impl LocalRedisCluster {
    /// `cluster of N primaries + N replicas on 127.0.0.1:p1,…` for
    /// banners: no password.
    pub fn describe(&self) -> String {
        let ports: Vec<String> = self.nodes.iter().map(|(p, _)| p.to_string()).collect();
        format!(
            "cluster of {} primaries + {} replicas on 127.0.0.1:{}",
            self.nodes.len() / 2,
            self.nodes.len() / 2,
            ports.join(",")
        )
    }
}

/// Start `primaries` primaries and as many replicas, logs and data under
/// `dir` (one folder per node), and return once every slot is served and
/// every replica has synced. On failure the nodes started so far are
/// returned too, in the error's place, for the caller to stop.
pub async fn start(
    dir: &Path,
    primaries: u32,
) -> Result<LocalRedisCluster, (CliError, Vec<(u16, Child)>)> {
    let mut nodes = Vec::new();
    match start_into(dir, primaries, &mut nodes).await {
        Ok(seeds) => Ok(LocalRedisCluster { nodes, seeds }),
        Err(e) => Err((e, nodes)),
    }
}

async fn start_into(
    dir: &Path,
    primaries: u32,
    nodes: &mut Vec<(u16, Child)>,
) -> CliResult<String> {
    let missing = |what: &str| {
        CliError::usage(format!(
            "{what} not found: --redis-cluster needs redis-server and redis-cli (Debian/Ubuntu: `sudo apt-get install -y redis-server`, macOS: `brew install redis`)"
        ))
    };
    let server = find_binary("redis-server").map_err(|_| missing("redis-server"))?;
    let cli = find_binary("redis-cli").map_err(|_| missing("redis-cli"))?;
    let password = random_token()?;
    // Client and bus ports, all distinct.
    let mut taken = HashSet::new();
    let mut port = || -> CliResult<u16> {
        for _ in 0..100 {
            let p = free_port()?;
            if taken.insert(p) {
                return Ok(p);
            }
        }
        Err(CliError::unavailable(
            "no free loopback ports for the Redis Cluster",
        ))
    };
    let mut ports = Vec::new();
    for _ in 0..2 * primaries {
        let (p, bus) = (port()?, port()?);
        let node_dir = dir.join(format!("redis-{p}"));
        std::fs::create_dir(&node_dir)?;
        let conf = node_dir.join("redis.conf");
        write_private(
            &conf,
            &format!(
                "port {p}\nbind 127.0.0.1\ncluster-enabled yes\ncluster-port {bus}\n\
                 cluster-config-file nodes.conf\ncluster-node-timeout 1000\n\
                 repl-diskless-sync-delay 0\ndir \"{}\"\nsave \"\"\nappendonly yes\n\
                 requirepass {password}\nmasterauth {password}\n",
                node_dir.display()
            ),
        )?;
        let log = std::fs::File::create(dir.join(format!("redis-{p}.log")))?;
        let mut cmd = Command::new(&server);
        cmd.arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        sys::child_dies_with_us(&mut cmd, libc::SIGTERM);
        nodes.push((p, cmd.spawn()?));
        ports.push(p);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for &p in &ports {
        while !crate::cluster::redis_ping(p, &password).await {
            if Instant::now() > deadline {
                return Err(CliError::unavailable(format!(
                    "redis-server on port {p} did not start: see {}",
                    dir.join(format!("redis-{p}.log")).display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let addrs: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let log_path = dir.join("redis-cluster-create.log");
    let log = std::fs::File::create(&log_path)?;
    let status = Command::new(&cli)
        .arg("--cluster")
        .arg("create")
        .args(&addrs)
        .args(["--cluster-replicas", "1", "--cluster-yes"])
        .env("REDISCLI_AUTH", &password)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .status()
        .await?;
    if !status.success() {
        return Err(CliError::unavailable(format!(
            "redis-cli --cluster create failed ({status}): see {}",
            log_path.display()
        )));
    }
    wait_ready(&cli, &password, &ports, Duration::from_secs(30)).await?;
    Ok(ports
        .iter()
        .map(|p| format!("redis://:{password}@127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(","))
}

/// One command on one node through redis-cli (the password by variable);
/// its output, empty if it failed.
async fn ask(cli: &PathBuf, password: &str, port: u16, args: &[&str]) -> String {
    let out = Command::new(cli)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .env("REDISCLI_AUTH", password)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Every node sees the cluster ok and every replica has finished its
/// first sync.
async fn wait_ready(
    cli: &PathBuf,
    password: &str,
    ports: &[u16],
    within: Duration,
) -> CliResult<()> {
    let deadline = Instant::now() + within;
    loop {
        let mut ready = true;
        for &p in ports {
            let info = ask(cli, password, p, &["CLUSTER", "INFO"]).await;
            let repl = ask(cli, password, p, &["INFO", "replication"]).await;
            let ok = info.contains("cluster_state:ok");
            let synced = !repl.contains("role:slave")
                || (repl.contains("master_link_status:up")
                    && repl.contains("master_sync_in_progress:0"));
            if !(ok && synced) {
                ready = false;
                break;
            }
        }
        if ready {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(CliError::unavailable(format!(
                "the Redis Cluster was not ready (every slot served, replicas synced) within {within:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
