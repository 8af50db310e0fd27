#!/usr/bin/env python3
"""TTG benchmark suite: real redis-server, ttg-server and ttg-agent processes
on this machine, driven through ttgctl. Prints a table and rewrites
docs/benchmarks.md with the machine, the commit and the exact commands.

Wall time of a run is taken from the run record itself: created_ms (server
clock when Submit was accepted) to finished_ms (Redis clock when the last
chunk's completion script ran) — submit to last result, with no client
start-up in it. Every figure is the median of --reps runs in one session;
this machine is shared and noisy, so compare ratios taken together.
"""

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, within=15.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise SystemExit(f"nothing listening on {port} after {within}s")


class Cluster:
    """redis-server + ttg-server + N agents, each a real process."""

    def __init__(self, bindir, agents, concurrency, tmp):
        self.bindir, self.tmp = bindir, tmp
        self.procs, self.agents = [], []
        self.redis_port, self.server_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}"
        self.server = f"http://127.0.0.1:{self.server_port}"
        log = open(os.path.join(tmp, "redis.log"), "w")
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", tmp,
             "--save", "", "--appendonly", "yes"], stdout=log, stderr=log)
        self.procs.append(self.redis)
        wait_port(self.redis_port)
        env = dict(os.environ, RUST_LOG="warn")
        slog = open(os.path.join(tmp, "server.log"), "w")
        self.procs.append(subprocess.Popen(
            [os.path.join(bindir, "ttg-server"), "--listen", f"127.0.0.1:{self.server_port}",
             "--redis-url", self.redis_url], stdout=slog, stderr=slog, env=env))
        wait_port(self.server_port)
        for i in range(agents):
            self.add_agent(i, concurrency, env)
        self.wait_agents(agents)

    def add_agent(self, i, concurrency, env):
        alog = open(os.path.join(self.tmp, f"agent-{i}.log"), "w")
        p = subprocess.Popen(
            [os.path.join(self.bindir, "ttg-agent"), "--server", self.server, "--redis-url", self.redis_url,
             "--concurrency", str(concurrency), "--agent-id", f"bench-{i}"], stdout=alog, stderr=alog, env=env)
        self.procs.append(p)
        self.agents.append(p)

    def ctl(self, *args):
        out = subprocess.run([os.path.join(self.bindir, "ttgctl"), "--server", self.server, *args],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"ttgctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout

    def wait_agents(self, n, within=15.0):
        deadline = time.time() + within
        while time.time() < deadline:
            if len(json.loads(self.ctl("agents", "-o", "json"))) >= n:
                return
            time.sleep(0.05)
        raise SystemExit(f"{n} agents did not connect")

    def run(self, params, chunk, work_ms):
        """Submit, wait for the end, return (wall s, submit s, status)."""
        t0 = time.perf_counter()
        run_id = json.loads(self.ctl("submit", "--params", str(params), "--chunk-size", str(chunk),
                                     "--arg", f"work_ms={work_ms}", "-o", "json"))["run_id"]
        submit_s = time.perf_counter() - t0
        self.ctl("watch", run_id, "-o", "json")
        st = json.loads(self.ctl("status", run_id, "-o", "json"))
        if st["state"] != "SUCCEEDED":
            raise SystemExit(f"run {run_id} ended {st['state']}")
        return (st["finished_ms"] - st["created_ms"]) / 1000.0, submit_s, st

    def stop(self):
        for p in reversed(self.procs):
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    redis = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout.split()
    rv = next((w for w in redis if w.startswith("v=")), "v=?")[2:]
    return f"{os.cpu_count()} × {cpu}, {mem:.0f} GiB, {platform.system()} {platform.release()}, redis {rv}"


def commit():
    try:
        c = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return c + ("-dirty" if dirty else "")
    except OSError:
        return "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release", help="folder with ttg-server, ttg-agent, ttgctl")
    ap.add_argument("--out", default="docs/benchmarks.md", help="markdown file to rewrite ('' to skip)")
    ap.add_argument("--reps", type=int, default=5, help="runs per figure (median reported)")
    args = ap.parse_args()
    if not shutil.which("redis-server"):
        raise SystemExit("redis-server not found: run `make setup`")
    rows = []
    tmp = tempfile.mkdtemp(prefix="ttg-bench-")
    try:
        # B1: the reference sweep. 100 chunks of 100 ms over 3 single-slot
        # agents: the ideal is 10 s / 3 = 3.33 s (3.40 s with whole chunks:
        # one agent must do 34).
        c = Cluster(args.bin, agents=3, concurrency=1, tmp=tmp)
        try:
            walls = [c.run(10_000, 100, 1)[0] for _ in range(args.reps)]
            sums = {round(c.run(10_000, 100, 0)[2]["aggregate"]["sum"], 2)}
        finally:
            c.stop()
        med = statistics.median(walls)
        rows.append(("B1", "10,000 params, work_ms=1, chunk 100, 3 agents × concurrency 1",
                     f"{med:.3f} s", f"ideal 3.33 s → {3.3333 / med * 100:.1f} % of ideal "
                     f"(min {min(walls):.3f}, max {max(walls):.3f}); sum {sums}"))

        # B2: the queue's own overhead: no simulated work, 10,000 chunks.
        tmp2 = tempfile.mkdtemp(prefix="ttg-bench-", dir=tmp)
        c = Cluster(args.bin, agents=3, concurrency=4, tmp=tmp2)
        try:
            res = [c.run(1_000_000, 100, 0) for _ in range(args.reps)]
        finally:
            c.stop()
        walls = [r[0] for r in res]
        subs = [r[1] for r in res]
        med = statistics.median(walls)
        rows.append(("B2", "1,000,000 params, work_ms=0, chunk 100 (10,000 chunks), 3 agents × concurrency 4",
                     f"{med:.3f} s", f"{10_000 / med:,.0f} chunks/s, {1_000_000 / med:,.0f} params/s "
                     f"(min {min(walls):.3f}, max {max(walls):.3f})"))
        rows.append(("B3", "Submit of 1,000,000 params in 10,000 chunks (ttgctl process, incl. start-up)",
                     f"{statistics.median(subs):.3f} s", "all 10,000 tasks in Redis when it returns"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    head = "| id | benchmark | median | notes |\n|---|---|---|---|\n"
    table = head + "".join(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} |\n" for r in rows)
    print(table)
    if args.out:
        write_doc(args.out, table, args.reps)


def write_doc(path, table, reps):
    text = open(path).read() if os.path.exists(path) else ""
    start, end = "<!-- bench:start -->", "<!-- bench:end -->"
    block = (f"{start}\nMeasured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {machine()}, "
             f"commit `{commit()}`, median of {reps} runs each, with `make bench` "
             f"(`python3 scripts/bench.py --bin target/release --reps {reps}`).\n\n{table}{end}")
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text + "\n" + block + "\n"
    with open(path, "w") as f:
        f.write(text)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
