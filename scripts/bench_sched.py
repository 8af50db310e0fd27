"""P8 of docs/benchmarks.md: many runs at once (#19).

- P8: a 300-param run (chunk 10, work_ms=1: 30 chunks of 10 ms) submitted
  1 s into a 30,000-param run (chunk 100, work_ms=1: 300 chunks of 100 ms),
  3 agents × concurrency 1: the small run's submit-to-end time against the
  same run alone on the same cluster (goal ≤ 2×), and the big run's total
  time against it alone (goal: grows by no more than the small run's work).
- P8b: a `--priority high` 3,000-param run (chunk 100: 30 chunks of 100 ms)
  submitted 1 s into a busy normal 30,000-param run, against it alone
  (goal ≤ 1.2×).
- P8c: claiming with 1,000 runs queued against one run: 10,000 chunks of
  no work (P2's) as one run of 10^6 params or as 1,000 runs of 1,000
  params, all queued before 3 agents × concurrency 4 start; chunks/s from
  the 200th completion to the last (goal: within 10 %).
"""

import os
import statistics
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


def claim_rate(args, tmp, runs):
    """Chunks/s of 10,000 no-work chunks queued as `runs` runs before the
    agents start, from the 200th completion to the last."""
    c = Cluster(args.bin, agents=0, concurrency=4, tmp=new_dir(tmp),
                server_args=("--max-runs-in-flight", "5000", "--submit-rate", "100000"))
    try:
        r = Resp(c.redis_port)
        per = 10_000 // runs
        for _ in range(runs):
            c.submit(per * 100, 100, 0)
        env = dict(os.environ, RUST_LOG="warn")
        for i in range(3):
            c.add_agent(i, 4, env)
        completed = lambda: int(r.call("HGET", "ttg:stats", "completed") or 0)
        deadline = time.time() + 300
        t0 = None
        while (n := completed()) < 10_000:
            if t0 is None and n >= 200:
                t0, n0 = time.perf_counter(), n
            if time.time() > deadline:
                raise SystemExit(f"claim_rate({runs}): {n} of 10,000 chunks after 300 s")
            time.sleep(0.002)
        t1 = time.perf_counter()
        return (10_000 - n0) / (t1 - t0)
    finally:
        c.stop()


def p8c(args, tmp):
    reps = max(1, min(args.reps, 3))
    one, many = [], []
    for _ in range(reps):
        one.append(claim_rate(args, tmp, 1))
        many.append(claim_rate(args, tmp, 1_000))
    o, m = statistics.median(one), statistics.median(many)
    return [
        ("P8c", "10,000 no-work chunks (chunk 100) queued as 1,000 runs of 1,000 params vs as one run of "
                "10^6, queued before 3 agents × concurrency 4 start; chunks/s from the 200th completion",
         f"{m:,.0f} chunks/s", f"goal within 10 % of one run: {m / o:.0%} of {o:,.0f} chunks/s ({reps} pairs, "
                               "alternating)"),
    ]
