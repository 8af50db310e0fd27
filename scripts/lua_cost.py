#!/usr/bin/env python3
"""Instruction count of a completion in Redis, per chunk.

Runs redis-server under callgrind, loads the completion script exactly as the
agents do (proto/lua/prelude.lua + complete.lua), sets up a RUNNING run,
and sends completions as the agents do (one pipelined MULTI: an HSETNX of
each chunk's values, then the script) on real pending deliveries with
batches of 1, 8 and 32 chunks of P2's shape (100
packed f64 values, a 60-byte event body), and of 32 chunks with 3 outputs (#18's named outputs). Prints Redis's instructions per
chunk (Ir, callgrind's count: stable on a noisy shared machine, unlike wall
time). Also counts XREADGROUP COUNT 8 per entry delivered, claims as
agents make them (claim.lua and its XREADGROUP in one MULTI) of 1 and of
32 chunks per entry handed out, claims of 20 with 10,000 chunks queued as
one run and as 1,000 runs (P8c's shape), and reports the biggest functions of the
completion's batch-32 case.

    python3 scripts/lua_cost.py            # needs valgrind and redis-server

Used before and after each hot-path change; figures in docs/benchmarks.md.
"""
import glob
import re
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
from bench import Resp, free_port, stream_scripts, wait_port  # noqa: E402

CALLS = 200


def dump(pid, d):
    """Dump callgrind's counters and return the total Ir since the last zero."""
    before = set(glob.glob(os.path.join(d, "cg.*")))
    subprocess.run(["callgrind_control", "-d", str(pid)], check=True, capture_output=True)
    deadline = time.time() + 30
    while time.time() < deadline:
        new = set(glob.glob(os.path.join(d, "cg.*"))) - before
        for f in new:
            text = open(f).read()
            for line in text.splitlines():
                if line.startswith("summary:"):
                    return int(line.split()[1]), f
        time.sleep(0.2)
    raise SystemExit("callgrind dump did not appear")


def main():
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} not found (apt-get install -y valgrind redis-server)")
    d = tempfile.mkdtemp(prefix="ttg-lua-cost-")
    port = free_port()
    vg = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={d}/cg.%p",
                           "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--dir", d],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, within=60)
        r = Resp(port)
        sha = r.call("SCRIPT", "LOAD", stream_scripts()).decode()
        r.call("HSET", "b:run", "state", "RUNNING", "total", 10 ** 5, "done", 0, "dead", 0, "count", 0,
               "sum", 0, "retention_ms", 1000)
        need = 20 + CALLS * (1 + 8 + 32 + 32)
        for i in range(need + CALLS * 8 + 100):
            r.call("XADD", "b:tasks", "*", "t", "x" * 40, "a", "1", "tp", "")
        r.call("XGROUP", "CREATE", "b:tasks", "agents", "0")
        # Real deliveries for the script to ack and delete, as in a run.
        got = r.call("XREADGROUP", "GROUP", "agents", "w", "COUNT", need, "STREAMS", "b:tasks", ">")
        ids = iter([e[0].decode() for e in got[0][1]])
        values, body = "v" * 800, "e" * 60
        keys = lambda i: ["b:run", f"b:done:{i}", "b:results", "b:events", "b:tasks", "b:deadbits",
                          "b:stats", "b:expiring", "b:ext"]
        # Per output (min, max), then per output (sum, argmin, argmax), f64.
        stats = lambda k: struct.pack(f"<{2 * k}d", *[0.5, 99.5] * k) + struct.pack(f"<{3 * k}d", *[4999.5, 0, 99] * k)
        rows = []
        pid = vg.pid
        # Warm up (the script compiled, the stream's structures allocated).
        def complete(key_set, outputs, chunks):
            """One completion MULTI, pipelined in one write: (chunk, values) pairs."""
            cmds = [("MULTI",)]
            cmds += [("HSETNX", key_set[2], c, v) for c, v in chunks]
            args = []
            for c, _ in chunks:
                args += [next(ids), c, 100, body, stats(outputs)]
            # ARGV[5]: the batch's compute µs, charged to the run's agent time.
            cmds += [("EVALSHA", sha, 9, *key_set, "agents", "run", "w", outputs, 50 * len(chunks), *args),
                     ("EXEC",)]
            r.pipeline(cmds)

        for i in range(20):
            complete(keys(f"w{i}"), 1, [(0, values)])
        for batch, outputs in ((1, 1), (8, 1), (32, 1), (32, 3)):
            subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
            r.call("PING")
            for i in range(CALLS):
                complete(keys(f"{batch}:{outputs}:{i}"), outputs,
                         [(k, values * outputs) for k in range(batch)])
            ir, f = dump(pid, d)
            rows.append((f"completion, batch {batch}, {outputs} output(s)", ir / (CALLS * batch)))
            if batch == 32 and outputs == int(os.environ.get("LUA_COST_HOT_OUTPUTS", "1")):
                top = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", f],
                                     capture_output=True, text=True).stdout
                lines = [ln for ln in top.splitlines() if re.match(r"^\s*[\d,]+ \(", ln)]
                hot = [ln for ln in lines if "PROGRAM TOTALS" not in ln][:18]
        subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
        r.call("PING")
        for i in range(CALLS):
            r.call("XREADGROUP", "GROUP", "agents", f"c{i % 3}", "COUNT", 8, "STREAMS", "b:tasks", ">")
        ir, _ = dump(pid, d)
        rows.append(("XREADGROUP COUNT 8, per entry", ir / (CALLS * 8)))
        # Claims as agents make them (one MULTI: claim.lua, which chooses
        # the run and appends its entries, then XREADGROUP) from one run of
        # P2's shape: per claim of 1 chunk (the fixed cost) and per chunk
        # of claims of 32.
        claim = r.call("SCRIPT", "LOAD", stream_scripts("claim")).decode()

        def queue(pre, runs, chunks):
            """`runs` normal-priority runs of `chunks` chunks each, queued
            for kernel k under key prefix `pre` as Submit leaves them."""
            r.call("XGROUP", "CREATE", f"{pre}tasks:k", "agents", "$", "MKSTREAM")
            for j in range(runs):
                r.call("HSET", f"{pre}run:r{j}", "state", "RUNNING", "next", 0, "total", chunks, "qn", 0,
                       "inflight", 0, "cap", 0, "weight", 1,
                       "task", b"\x0a\x02r1\x12\x0bplaceholder" + b"\x00" * 24,
                       "params", chunks * 100, "csize", 100, "created_ms", int(time.time() * 1000), "class", 1,
                       "sched", f"{pre}sched:k", "wake", f"{pre}wake:k", "served", 0, "nserved", 0, "vbase", 0)
                r.call("ZADD", f"{pre}sched:k", 2 ** 46, f"r{j}")
            return [f"{pre}sched:ticks", f"{pre}wake:k", f"{pre}sched:k", f"{pre}tasks:k"]

        def claims(pre, ck, count, calls=CALLS):
            got = 0
            for _ in range(calls):
                out = r.pipeline([("MULTI",), ("EVALSHA", claim, len(ck), *ck, count, pre),
                                  ("XREADGROUP", "GROUP", "agents", "a", "COUNT", count, "STREAMS", ck[3], ">"),
                                  ("EXEC",)])
                read = out[-1][1]
                got += len(read[0][1]) if read else 0
            return got

        ck = queue("c:", 1, 10 ** 7)
        claims("c:", ck, 4)
        for count in (1, 32):
            subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
            r.call("PING")
            claims("c:", ck, count)
            ir, _ = dump(pid, d)
            rows.append((f"claim COUNT {count} (claim.lua + XREADGROUP), per entry", ir / (CALLS * count)))
        # P8c's shape: claims of 20 over 10,000 chunks queued as one run, or
        # as 1,000 runs of 10 (each claim then takes two runs' turns).
        for runs in (1, 1_000):
            pre = f"m{runs}:"
            ck = queue(pre, runs, 10_000 // runs)
            claims(pre, ck, 20, 5)
            subprocess.run(["callgrind_control", "-z", str(pid)], check=True, capture_output=True)
            r.call("PING")
            got = claims(pre, ck, 20, 100)
            ir, _ = dump(pid, d)
            rows.append((f"claim COUNT 20, {runs:,} run(s) queued, per entry", ir / max(1, got)))
        for name, per in rows:
            print(f"{name:40s} {per:10,.0f} Ir per chunk")
        print("\nbiggest functions, batch 32 (self Ir over all calls):")
        print("\n".join(hot))
    finally:
        vg.terminate()
        vg.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
