//! A real Redis Cluster for tests: `redis-server --cluster-enabled yes`
//! processes on free loopback ports (each with its own bus port), joined by
//! `redis-cli --cluster create` with a replica per primary, a 1 s node
//! timeout so a killed primary's replica takes over within seconds, and
//! AOF on. Killed on drop. Also [`Install`]: a server and agents on one,
//! and what the cluster tests ask of it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// One node of a [`RedisCluster`].
pub struct ClusterNode {
    /// Its client port.
    pub port: u16,
    bus: u16,
    child: Option<Child>,
    dir: std::path::PathBuf,
}

impl ClusterNode {
    /// Start the node; if its process exits before it answers (a port
    /// taken between `free_port` and the bind, say by another test's
    /// process), start it again on fresh ports, up to 5 times.
    fn spawn(&mut self) {
        for attempt in 1..=5 {
            if self.try_spawn() {
                return;
            }
            assert!(attempt < 5, "cluster node {} did not start", self.port);
            // A fresh node: no identity from the attempt that failed.
            let _ = std::fs::remove_dir_all(&self.dir);
            self.port = free_port();
            self.bus = free_port();
        }
    }

    /// One start: whether the node answers PING within 10 s (false at
    /// once if its process exits).
    fn try_spawn(&mut self) -> bool {
        std::fs::create_dir_all(&self.dir).expect("node dir");
        let child = Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--cluster-port",
                &self.bus.to_string(),
            ])
            .args(["--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .args([
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "1000",
            ])
            // Replicas start their first full sync at once, not after the
            // default 5 s wait for more replicas to share it.
            .args(["--repl-diskless-sync-delay", "0"])
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start redis-server ({e}): run `make setup`"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_query::<String>(&["PING"]).is_none() {
            let exited = self
                .child
                .as_mut()
                .is_none_or(|c| !matches!(c.try_wait(), Ok(None)));
            if exited || Instant::now() >= deadline {
                self.kill();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process runs.
    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    /// One command on this node (no redirects followed); None if it fails.
    pub fn try_query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Option<T> {
        let client = redis::Client::open(self.url()).ok()?;
        let mut c = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut c).ok()
    }

    fn signal(&self, sig: &str) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &c.id().to_string()])
                .status();
        }
    }

    fn kill(&mut self) {
        super::sigkill(&mut self.child);
    }
}

/// A Redis Cluster of real processes.
pub struct RedisCluster {
    /// Its nodes, primaries first as created.
    pub nodes: Vec<ClusterNode>,
    _dir: tempfile::TempDir,
}

impl RedisCluster {
    /// `primaries` primaries with `replicas` replicas each, every slot
    /// covered and the cluster's state ok on every node.
    pub fn start(primaries: usize, replicas: usize) -> RedisCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut nodes: Vec<ClusterNode> = (0..primaries * (1 + replicas))
            .map(|i| ClusterNode {
                port: free_port(),
                bus: free_port(),
                child: None,
                dir: dir.path().join(format!("node{i}")),
            })
            .collect();
        for n in &mut nodes {
            n.spawn();
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create (redis-tools)");
        assert!(
            out.status.success(),
            "cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let c = RedisCluster { nodes, _dir: dir };
        c.wait_ok(Duration::from_secs(20));
        c.wait_replicas_synced(Duration::from_secs(20));
        c
    }

    /// Wait until every replica's link to its primary is up with its first
    /// sync done: before that, promoting it would lose the primary's data
    /// (a replica is a copy only once synced).
    pub fn wait_replicas_synced(&self, within: Duration) {
        let deadline = Instant::now() + within;
        for n in self.nodes.iter().filter(|n| n.alive()) {
            loop {
                let info: String = n.try_query(&["INFO", "replication"]).unwrap_or_default();
                if info.contains("role:master")
                    || (info.contains("master_link_status:up")
                        && info.contains("master_sync_in_progress:0"))
                {
                    break;
                }
                assert!(Instant::now() < deadline, "replica {} did not sync", n.port);
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The seed list for `--redis-cluster`: every node.
    pub fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Wait until every live node reports `cluster_state:ok` and agrees on
    /// who serves every slot.
    pub fn wait_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = self.nodes.iter().filter(|n| n.alive()).all(|n| {
                n.try_query::<String>(&["CLUSTER", "INFO"])
                    .is_some_and(|i| i.contains("cluster_state:ok"))
            });
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not become ok");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The index of the live node that is primary for `key`'s slot, by the
    /// view of any live node.
    pub fn primary_of(&self, key: &str) -> Option<usize> {
        let any = self.nodes.iter().find(|n| n.alive())?;
        let slot: i64 = any.try_query(&["CLUSTER", "KEYSLOT", key])?;
        let nodes: String = any.try_query(&["CLUSTER", "NODES"])?;
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<i64>().is_ok_and(|a| a <= slot)
                        && b.parse::<i64>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<i64>() == Ok(slot),
            });
            if serves {
                let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
                return self.nodes.iter().position(|n| n.port == port && n.alive());
            }
        }
        None
    }

    /// The live replica of node `primary`, if it has one.
    pub fn replica_of(&self, primary: usize) -> Option<usize> {
        let me: String = self.nodes[primary].try_query(&["CLUSTER", "MYID"])?;
        let nodes: String = self.nodes[primary].try_query(&["CLUSTER", "NODES"])?;
        nodes.lines().find_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 4 || !f[2].contains("slave") || f[3] != me {
                return None;
            }
            let port: u16 = f[1].split(['@', ':']).nth(1)?.parse().ok()?;
            self.nodes.iter().position(|n| n.port == port && n.alive())
        })
    }

    /// SIGSTOP node `i` (it stops answering, and acknowledging
    /// replication, until [`RedisCluster::resume`]).
    pub fn pause(&self, i: usize) {
        self.nodes[i].signal("-STOP");
    }

    /// SIGCONT node `i`.
    pub fn resume(&self, i: usize) {
        self.nodes[i].signal("-CONT");
    }

    /// SIGKILL node `i`.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].kill();
    }

    /// Wait until a live node other than `killed` is primary for `key`
    /// and the cluster is ok again; how long that took.
    pub fn wait_failover(&self, killed: usize, key: &str, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if let Some(p) = self.primary_of(key) {
                if p != killed {
                    self.wait_ok(within.saturating_sub(start.elapsed()));
                    return start.elapsed();
                }
            }
            assert!(
                start.elapsed() < within,
                "no replica took over {key}'s slot"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for n in &mut self.nodes {
            n.kill();
        }
    }
}

// An installation (server, agents) on a cluster, and what the cluster tests ask of it.

/// Unused: with --redis-cluster the processes never read --redis-url.
pub const NO_NODE: &str = "redis://127.0.0.1:1";

/// A server's flags on the cluster at `seeds`: short leases, so a lost
/// agent is noticed within a test's patience.
pub fn server_flags(seeds: &str) -> [&str; 6] {
    [
        "--redis-cluster",
        seeds,
        "--lease",
        "1s",
        "--heartbeat-interval",
        "250ms",
    ]
}

/// Fields drop in order: the agents and the server go before the cluster.
pub struct Install {
    pub agents: Vec<Agent>,
    pub server: ServerProc,
    pub cluster: RedisCluster,
    pub prefix: String,
    next: usize,
    agent_flags: Vec<String>,
}

impl Install {
    pub fn start(agents: usize) -> Install {
        Self::start_with(agents, &[])
    }

    /// With extra flags for every agent.
    pub fn start_with(agents: usize, agent_flags: &[&str]) -> Install {
        Self::start_full(agents, agent_flags, &[])
    }

    /// With extra flags for every agent and for the server.
    pub fn start_full(agents: usize, agent_flags: &[&str], server_flags_extra: &[&str]) -> Install {
        let cluster = RedisCluster::start(3, 1);
        let prefix = prefix();
        let seeds = cluster.seeds();
        let mut flags = server_flags(&seeds).to_vec();
        flags.extend_from_slice(server_flags_extra);
        let server = ServerProc::start(NO_NODE, &prefix, &flags);
        let mut i = Install {
            cluster,
            prefix,
            server,
            agents: Vec::new(),
            next: 0,
            agent_flags: agent_flags.iter().map(|f| f.to_string()).collect(),
        };
        for _ in 0..agents {
            let a = i.agent();
            i.agents.push(a);
        }
        i
    }

    pub fn agent(&mut self) -> Agent {
        self.next += 1;
        let seeds = self.cluster.seeds();
        let mut flags = vec!["--redis-cluster", &seeds, "--allow-exec"];
        flags.extend(self.agent_flags.iter().map(String::as_str));
        Agent::spawn(
            &self.server.url,
            NO_NODE,
            &self.prefix,
            &format!("k{}", self.next),
            2,
            &flags,
        )
    }

    /// A key of this installation (all share its hash tag).
    pub fn tagged_key(&self) -> String {
        format!("{{{}}}:runs", self.prefix.trim_end_matches(':'))
    }
}

/// Status, or None while the server cannot answer (Redis failing over).
pub async fn try_status(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    id: &str,
) -> Option<RunStatus> {
    c.status(StatusRequest { run_id: id.into() })
        .await
        .ok()
        .map(|r| r.into_inner())
}

/// A no-work sweep of `params` in chunks of `chunk`, to its end: every
/// chunk counted once, the exact sum.
pub async fn sweep_exactly_once(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    params: u64,
    chunk: u64,
) {
    let run = c
        .submit(submit_req(params, chunk, 0))
        .await
        .expect("submit")
        .into_inner();
    let (_, events) = run_end(c, &run.run_id).await;
    assert_exactly_once(&events, params, params.div_ceil(chunk));
}

/// Submit `req` and wait until `done` of its chunks are done.
pub async fn submit_until_done(
    c: &mut ttg_proto::v1::control_plane_client::ControlPlaneClient<tonic::transport::Channel>,
    req: ttg_proto::v1::SubmitRequest,
    done: u64,
) -> ttg_proto::v1::SubmitResponse {
    let run = c.submit(req).await.expect("submit").into_inner();
    wait_until(&format!("{done} chunks done"), Duration::from_secs(60), || {
        let mut c = c.clone();
        let id = run.run_id.clone();
        async move { (try_status(&mut c, &id).await?.progress?.chunks_done >= done).then_some(()) }
    })
    .await;
    run
}

/// Script calls (EVALSHA) node `i` has served.
pub fn evalsha_calls(cluster: &RedisCluster, i: usize) -> u64 {
    let stats: String = cluster.nodes[i]
        .try_query(&["INFO", "commandstats"])
        .unwrap_or_default();
    stats
        .lines()
        .find_map(|l| l.strip_prefix("cmdstat_evalsha:calls="))
        .and_then(|v| v.split(',').next()?.parse().ok())
        .unwrap_or(0)
}
