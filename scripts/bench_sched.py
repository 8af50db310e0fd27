"""P8 of docs/benchmarks.md: many runs at once (#19).

- P8: a 300-param run (chunk 10, work_ms=1: 30 chunks of 10 ms) submitted
  1 s into a 30,000-param run (chunk 100, work_ms=1: 300 chunks of 100 ms),
  3 agents × concurrency 1: the small run's submit-to-end time against the
  same run alone on the same cluster (goal ≤ 2×), and the big run's total
  time against it alone (goal: grows by no more than the small run's work).
- P8b: a `--priority high` 3,000-param run (chunk 100: 30 chunks of 100 ms)
  submitted 1 s into a busy normal 30,000-param run, against it alone
  (goal ≤ 1.2×).
- P8c: claiming with 1,000 runs queued against one run (and two): 10,000
  chunks of no work queued as 1, 2 or 1,000 runs, claimed 20 at a time
  the way agents claim (one MULTI: claim.lua, then XREADGROUP) from 3
  clients at once; chunks/s and Redis µs per chunk (goal: within 10 % of one run).
  P2 against the commit before the scheduler is measured apart (its
  binaries in another folder: scripts/bench_sched.py has no old build).
"""

import os
import re
import statistics
import threading
import time

from benchlib import Cluster, Resp, new_dir


def span(st):
    return (st["finished_ms"] - st["created_ms"]) / 1000.0


def wait_end(c, run_id):
    while (st := c.status(run_id))["state"] in ("QUEUED", "RUNNING"):
        time.sleep(0.02)
    if st["state"] != "SUCCEEDED":
        raise SystemExit(f"run {run_id} ended {st['state']}")
    return st


def beside(c, big_params, small_args, delay=1.0):
    """Submit a big run, then after `delay` s the small one; both statuses."""
    big = c.submit(big_params, 100, 1)
    time.sleep(delay)
    small = c.submit(*small_args)
    s = wait_end(c, small)
    b = wait_end(c, big)
    return s, b


def p8(args, tmp):
    reps = max(1, min(args.reps, 3))
    c = Cluster(args.bin, agents=3, concurrency=1, tmp=new_dir(tmp))
    small_alone, small_beside, big_alone, big_beside = [], [], [], []
    high_alone, high_beside, high_low_class = [], [], []
    try:
        for _ in range(reps):
            small_alone.append(span(wait_end(c, c.submit(300, 10, 1))))
            high_alone.append(span(wait_end(c, c.submit(3_000, 100, 1, "--priority", "high"))))
            big_alone.append(span(wait_end(c, c.submit(30_000, 100, 1))))
            s, b = beside(c, 30_000, (300, 10, 1))
            small_beside.append(span(s))
            big_beside.append(span(b))
            h, _ = beside(c, 30_000, (3_000, 100, 1, "--priority", "high"))
            high_beside.append(span(h))
            # The same 3,000-param run at normal priority beside the big
            # one: what fair share alone would give it.
            n, _ = beside(c, 30_000, (3_000, 100, 1))
            high_low_class.append(span(n))
    finally:
        c.stop()
    med = statistics.median
    sa, sb, ba, bb = med(small_alone), med(small_beside), med(big_alone), med(big_beside)
    ha, hb, hn = med(high_alone), med(high_beside), med(high_low_class)
    small_work = 300 * 0.001  # agent-seconds of the small run's work
    return [
        ("P8", "300-param run (chunk 10, work_ms=1) submitted 1 s into a 30,000-param run (chunk 100, "
               "work_ms=1), 3 agents × 1; vs the same run alone",
         f"{sb:.3f} s", f"goal ≤ 2 × alone: {sb / sa:.2f} × ({sa:.3f} s alone; {reps} reps); the big run "
                        f"{bb:.2f} s vs {ba:.2f} s alone (+{bb - ba:.2f} s; the small run's work is "
                        f"{small_work:.1f} agent-s, {small_work / 3:.2f} s over 3 agents)"),
        ("P8b", "`--priority high` 3,000-param run (chunk 100, work_ms=1) submitted 1 s into a busy normal "
                "30,000-param run, 3 agents × 1; vs alone",
         f"{hb:.3f} s", f"goal ≤ 1.2 × alone: {hb / ha:.2f} × ({ha:.3f} s alone); the same run at normal "
                        f"priority beside it (fair share only): {hn:.3f} s = {hn / ha:.2f} ×"),
    ]


# Claiming clients at once, like agents: enough to keep Redis busy.
CLAIMERS = 3


def claim_rate(args, tmp, runs):
    """Chunks handed out per second by claims as agents make them (one MULTI:
    claim.lua for up to 20 chunks of placeholder or collatz, then the
    XREADGROUP that delivers them), over 10,000 no-work chunks queued as
    `runs` runs, from CLAIMERS clients at once: (chunks/s, Redis µs per
    chunk)."""
    c = Cluster(args.bin, agents=0, concurrency=4, tmp=new_dir(tmp),
                server_args=("--max-runs-in-flight", "5000", "--submit-rate", "100000"))
    try:
        r = Resp(c.redis_port)
        per = 10_000 // runs
        for _ in range(runs):
            c.submit(per * 100, 100, 0)
        here = os.path.dirname(os.path.abspath(__file__))
        lua = lambda n: open(os.path.join(here, "..", "proto", "lua", n)).read()
        sha = r.call("SCRIPT", "LOAD", lua("prelude.lua") + "\n" + lua("claim.lua")).decode()
        kernels = ["collatz", "placeholder"]
        keys = ["ttg:sched:ticks"]
        for k in kernels:
            keys += [f"ttg:wake:{k}", f"ttg:sched:{k}", f"ttg:tasks:{k}"]
            try:
                r.call("XGROUP", "CREATE", f"ttg:tasks:{k}", "agents", "$", "MKSTREAM")
            except RuntimeError:
                pass
        r.call("CONFIG", "RESETSTAT")
        got = [0] * CLAIMERS

        def claimer(i):
            cr = Resp(c.redis_port)
            while True:
                cr.call("MULTI")
                cr.call("EVALSHA", sha, len(keys), *keys, 20, "ttg:")
                cr.call("XREADGROUP", "GROUP", "agents", f"bench-{i}", "COUNT", 20, "STREAMS",
                        *[f"ttg:tasks:{k}" for k in kernels], ">", ">")
                _, read = cr.call("EXEC")
                n = sum(len(s[1]) for s in read or [])
                if n == 0:
                    return
                got[i] += n

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(CLAIMERS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        got = sum(got)
        stats = r.call("INFO", "commandstats").decode()
        usec = int(re.search(r"cmdstat_exec:calls=\d+,usec=(\d+)", stats).group(1))
        if got != 10_000:
            raise SystemExit(f"claim_rate({runs}): {got} of 10,000 chunks handed out")
        return got / wall, usec / got
    finally:
        c.stop()


def p8c(args, tmp):
    reps = max(1, min(args.reps, 3))
    rates = {1: [], 2: [], 1_000: []}
    for _ in range(reps):
        for runs in rates:
            rates[runs].append(claim_rate(args, tmp, runs))
    med = {k: (statistics.median(x[0] for x in v), statistics.median(x[1] for x in v)) for k, v in rates.items()}
    (o, ou), (t, tu), (m, mu) = med[1], med[2], med[1_000]
    return [
        ("P8c", "claims as agents make them (claim.lua for 20 + XREADGROUP, one MULTI), 10,000 no-work "
                "chunks queued as 1,000 runs vs one run (and two), 3 clients at once",
         f"{m:,.0f} chunks/s", f"goal within 10 % of one run: {m / o:.0%} of {o:,.0f} chunks/s — Redis "
                               f"{mu:.1f} µs per chunk handed out vs {ou:.1f}; two runs {t:,.0f} chunks/s, "
                               f"{tu:.1f} µs: the cost does not grow with the runs queued (1,000 = {m / t:.0%} of "
                               f"two); what 1,000 runs add is a turn per run ({reps} reps)"),
    ]
