"""TTG on a Redis Cluster (#22): C1 throughput of 8 concurrent runs on a
3-primary cluster (one slot group, and three) against one node, C2 a P1-style run whose primary is
SIGKILLed at 30 %, and C3 the cost of --redis-wait-replicas 1. The cluster is scripts/redis-cluster.sh's: 3 primaries,
a replica each, 1 s node timeout, AOF on."""

import os
import statistics
import subprocess
import time
import urllib.request

from benchlib import Cluster, cpu_s, free_port, new_dir

HERE = os.path.dirname(os.path.abspath(__file__))


class RedisCluster:
    """scripts/redis-cluster.sh start 3, in its own folder and ports."""

    def __init__(self, tmp):
        self.env = dict(os.environ, TTG_CLUSTER_DIR=os.path.join(tmp, "rc"))
        for _ in range(20):
            base = 20000 + free_port() % 20000
            self.env["TTG_CLUSTER_PORT"] = str(base)
            out = subprocess.run([os.path.join(HERE, "redis-cluster.sh"), "start", "3"], env=self.env,
                                 capture_output=True, text=True)
            if out.returncode == 0:
                self.seeds = out.stdout.strip()
                self.ports = [int(u.rsplit(":", 1)[1]) for u in self.seeds.split(",")]
                return
        raise SystemExit(f"cannot start a Redis Cluster: {out.stderr.strip()}")

    def cli(self, port, *args):
        return subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True).stdout

    def pid(self, port):
        with open(os.path.join(self.env["TTG_CLUSTER_DIR"], str(port), "pid")) as f:
            return int(f.read())

    def primary_of(self, key, ask=None):
        """Port of the node serving `key`'s slot as primary, by a live node's view."""
        ask = ask or self.ports[0]
        slot = int(self.cli(ask, "CLUSTER", "KEYSLOT", key))
        for line in self.cli(ask, "CLUSTER", "NODES").splitlines():
            f = line.split()
            if len(f) < 9 or "master" not in f[2] or "fail" in f[2]:
                continue
            for r in f[8:]:
                a, _, b = r.partition("-")
                if a.isdigit() and int(a) <= slot <= int(b or a):
                    return int(f[1].split(":")[1].split("@")[0])
        return None

    def stop(self):
        subprocess.run([os.path.join(HERE, "redis-cluster.sh"), "stop"], env=self.env, capture_output=True)


def eight_runs(c, params=1_000_000, chunk=100):
    """Submit 8 runs at once; chunks/s from the first submit to the last result."""
    ids = [c.submit(params, chunk, 0) for _ in range(8)]
    for rid in ids:
        c.wait_done(rid)
    sts = [c.status(rid) for rid in ids]
    wall = (max(s["finished_ms"] for s in sts) - min(s["created_ms"] for s in sts)) / 1000.0
    return wall, 8 * (params // chunk) / wall


def commands(rc, port):
    """Script calls (EVALSHA) node `port` has served."""
    for line in rc.cli(port, "INFO", "commandstats").splitlines():
        if line.startswith("cmdstat_evalsha:calls="):
            return int(line.split("=", 1)[1].split(",")[0])
    return 0


def c1(args, tmp):
    """C1: 8 concurrent 10^6-param runs, one node vs a 3-primary cluster,
    one slot group (the whole installation on one primary) and three (one
    per primary)."""
    node_rates, node_cpu = [], []
    c = Cluster(args.bin, agents=3, concurrency=4, tmp=new_dir(tmp))
    try:
        for _ in range(max(2, args.reps // 2)):
            before = cpu_s(c.redis.pid)
            wall, rate = eight_runs(c)
            node_rates.append(rate)
            node_cpu.append((cpu_s(c.redis.pid) - before) / wall)
    finally:
        c.stop()
    rows = {}
    rc = RedisCluster(tmp)
    try:
        for groups in (1, 3):
            rates, busy, calls = [], [], []
            c = Cluster(args.bin, agents=3, concurrency=4, tmp=new_dir(tmp), redis_cluster=rc.seeds,
                        server_args=["--slot-groups", str(groups)])
            try:
                for _ in range(max(2, args.reps // 2)):
                    before = {p: cpu_s(rc.pid(p)) for p in rc.ports}
                    sent = {p: commands(rc, p) for p in rc.ports}
                    wall, rate = eight_runs(c)
                    rates.append(rate)
                    busy.append(sorted(((cpu_s(rc.pid(p)) - before[p]) / wall for p in rc.ports), reverse=True))
                    calls.append(sorted((commands(rc, p) - sent[p] for p in rc.ports), reverse=True))
            finally:
                c.stop()
            rows[groups] = (statistics.median(rates), busy, calls)
    finally:
        rc.stop()
    n = statistics.median(node_rates)

    def per_node(v):
        return ", ".join(f"{statistics.median(b[i] for b in v):.0%}" for i in range(len(rc.ports)))

    def per_node_calls(v):
        return ", ".join(f"{statistics.median(b[i] for b in v):,.0f}" for i in range(len(rc.ports)))

    (k1, b1, _), (k3, b3, s3) = rows[1], rows[3]
    # The argument for a core per primary: a node's CPU per chunk, and the
    # share of the script calls the busiest primary serves. One node's cost
    # (no replica) against a primary's where it carries the whole load (one
    # slot group, with its replica to feed); the cluster is then capped where
    # its busiest primary fills a core.
    one = statistics.median(node_cpu) / n
    primary = statistics.median(b[0] for b in b1) / k1
    share = statistics.median(c[0] / max(1, sum(c)) for c in s3)
    spread = statistics.median(b[0] for b in b3) / (k3 * share)
    return [("C1", "8 concurrent runs of 1,000,000 params (chunk 100: 80,000 chunks), 3 agents × concurrency 4, "
             "on a 3-primary + 3-replica Redis Cluster with `--slot-groups 3` vs one node, same session",
             f"{k3:,.0f} chunks/s",
             f"goal ≥ 2 × one node: {k3 / n:.2f} × on these 2 cores ({n:,.0f} chunks/s on one node, Redis busy "
             f"{statistics.median(node_cpu):.0%} of a core). Script calls per node, busiest first: {per_node_calls(s3)} "
             f"(the three primaries share the work); the nodes' CPU {per_node(b3)} of a core, on the same 2 cores "
             f"as the agents and the server. One slot group: {k1:,.0f} chunks/s ({k1 / n:.2f} ×), nodes' CPU "
             f"{per_node(b1)}. Argued for a core per primary: Redis CPU per chunk {one * 1e6:.0f} µs on one node, "
             f"{primary * 1e6:.0f} µs on a primary carrying the whole load (one group; {primary / one:.2f} ×: "
             f"replication, cluster); the busiest primary serves {share:.0%} of the calls, so the cluster caps at "
             f"**{one / (share * primary):.2f} ×** one node's full core; at the primaries' cost when spread thin "
             f"({spread * 1e6:.0f} µs at their low load here) {one / (share * spread):.2f} ×")]


def c2(args, tmp):
    """C2: P1 on a cluster, the installation's primary SIGKILLed at 30 %."""
    clean, faulted, promote, stall = [], [], [], []
    for _ in range(max(2, args.reps // 2)):
        rc = RedisCluster(tmp)
        try:
            c = Cluster(args.bin, agents=3, concurrency=1, tmp=new_dir(tmp), redis_cluster=rc.seeds,
                        server_args=["--lease", "3s"])
            try:
                clean.append(c.run(10_000, 100, 1)[0])
                run_id = c.submit(10_000, 100, 1)
                while c.status(run_id)["chunks"]["done"] < 30:
                    time.sleep(0.005)
                victim = rc.primary_of("{ttg}:runs")
                t_kill = time.time()
                os.kill(rc.pid(victim), 9)
                alive = [p for p in rc.ports if p != victim]
                while rc.primary_of("{ttg}:runs", ask=alive[0]) in (None, victim):
                    time.sleep(0.01)
                promote.append(time.time() - t_kill)
                c.ctl("watch", run_id, "-o", "json")
                st = c.status(run_id)
                assert st["state"] == "SUCCEEDED" and round(st["aggregate"]["sum"], 2) == 5000355.0, st
                faulted.append((st["finished_ms"] - st["created_ms"]) / 1000.0)
                # The longest silence between two completions around the kill.
                done = sorted(e["time_ms"] for e in c.events(run_id) if e["kind"] == "ChunkCompleted")
                k = t_kill * 1000
                stall.append(max(b - a for a, b in zip(done, done[1:]) if b >= k) / 1000.0)
            finally:
                c.stop()
        finally:
            rc.stop()
    f, cl = statistics.median(faulted), statistics.median(clean)
    return [("C2", "P1 (10,000 params, work_ms=1, chunk 100, 3 agents × 1) on a 3+3 Redis Cluster, the "
             "installation's primary SIGKILLed at 30 %", f"{f:.3f} s",
             f"{f / cl:.2f} × the same run without the kill ({cl:.3f} s); sum exact every time; replica promoted "
             f"{statistics.median(promote):.2f} s after the kill (node timeout 1 s), longest pause between "
             f"completions {statistics.median(stall):.2f} s")]


def c3(args, tmp):
    """C3: P2 (10,000 no-work chunks) on a 3+3 cluster, agents with and
    without --redis-wait-replicas 1, alternating on one cluster."""
    rc = RedisCluster(tmp)
    plain, waiting = [], []
    try:
        for _ in range(max(2, args.reps // 2)):
            for flags, out in (([], plain), (["--redis-wait-replicas", "1"], waiting)):
                c = Cluster(args.bin, agents=3, concurrency=4, tmp=new_dir(tmp), redis_cluster=rc.seeds,
                            agent_args=flags)
                try:
                    out.append(c.run(1_000_000, 100, 0)[0])
                finally:
                    c.stop()
    finally:
        rc.stop()
    p, w = statistics.median(plain), statistics.median(waiting)
    return [c3_row(p, w), c3s(args, tmp)]


def submit_seconds(metrics):
    """Mean of the server's ttg_submit_seconds histogram (Submit inside the
    server: validation, the MULTI and, with --redis-wait-replicas, the WAIT)."""
    text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=5).read().decode()
    v = {}
    for line in text.splitlines():
        for k in ("ttg_submit_seconds_sum", "ttg_submit_seconds_count"):
            if line.startswith(k + " "):
                v[k] = float(line.split()[1])
    return v["ttg_submit_seconds_sum"] / v["ttg_submit_seconds_count"]


def c3s(args, tmp, submits=200):
    """C3s: Submit inside the server on a 3+3 cluster, with and without
    the server's --redis-wait-replicas 1 (no agents: runs stay queued)."""
    rc = RedisCluster(tmp)
    plain, waiting = [], []
    try:
        for _ in range(max(2, args.reps // 2)):
            for flags, out in (([], plain), (["--redis-wait-replicas", "1"], waiting)):
                metrics = f"127.0.0.1:{free_port()}"
                c = Cluster(args.bin, agents=0, concurrency=1, tmp=new_dir(tmp), redis_cluster=rc.seeds,
                            server_args=["--metrics-addr", metrics, "--submit-rate", "100000", *flags])
                try:
                    for _ in range(submits):
                        c.submit(1_000, 10, 0)
                    out.append(submit_seconds(metrics))
                finally:
                    c.stop()
    finally:
        rc.stop()
    p, w = statistics.median(plain) * 1e3, statistics.median(waiting) * 1e3
    return ("C3s", f"Submit on a 3+3 Redis Cluster, the server with `--redis-wait-replicas 1` vs without "
            f"({submits} Submits each, mean of the server's `ttg_submit_seconds`), alternating", f"{w:.2f} ms",
            f"{w / p:.2f} × without ({p:.2f} ms): one WAIT round trip per Submit, Cancel, Retry and Delete, "
            "on the writes' own connection")


def c3_row(p, w):
    return ("C3", "P2 (1,000,000 params, 10,000 no-work chunks, 3 agents × concurrency 4) on a 3+3 Redis "
            "Cluster, agents with `--redis-wait-replicas 1` vs without, alternating", f"{w:.3f} s",
            f"{w / p:.2f} × without ({p:.3f} s; {10_000 / w:,.0f} vs {10_000 / p:,.0f} chunks/s): one WAIT "
            "round trip per completion call, on the completions' own connection, until the replica "
            "acknowledges")
