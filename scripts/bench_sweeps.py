"""P9 of docs/benchmarks.md: named parameter spaces and outputs (#18).

One cluster, one session, alternating runs so the ratio is fair on a noisy
machine:
- P9: a 10^7-point grid over 4 axes (one of them text) with 3 outputs,
  built-in placeholder kernel (which decodes every point), against a plain
  `--params 10000000` run with one output, both at the default chunk size
  (100); P9k the same at chunk 1,000 (where bytes, not chunks, dominate).
- P9m: Redis bytes per point of the grid's stored results (goal ≤ 8.5 × 3).
- P9b: `ttgctl best RUN --by loss -n 10` on the completed chunk-100 grid
  (10^5 chunks; process wall time, start-up included; goal ≤ 100 ms), and
  -n 1000.
- P9p: `ttgctl results RUN -o parquet` of the 10^7 points × (index, 4 axes,
  3 outputs): time and the client's peak RSS (goals ≤ 10 s, ≤ 200 MiB).
"""

import json
import os
import statistics
import subprocess
import time

from benchlib import Cluster, Resp, mib, new_dir

AXES = ["--axis", "a=range:0:100", "--axis", "b=linspace:0:1:1000",
        "--axis", "c=logspace:1e-3:1e3:10", "--axis", "d=t0,t1,t2,t3,t4,t5,t6,t7,t8,t9"]
OUTPUTS = ["--outputs", "loss,acc,secs"]
POINTS = 10_000_000


def timed(cmd):
    """Wall seconds and peak RSS (KiB) of a process, output discarded."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode()
    p.stderr.close()
    if status != 0:
        raise SystemExit(f"{' '.join(cmd)} failed: {err}")
    return wall, ru.ru_maxrss


def pairs(c, r, chunk, reps):
    """Alternate plain and grid runs at `chunk`; walls, and the last grid's id
    (its results kept; every other run's results deleted to bound memory)."""
    grid, plain, run_id = [], [], None
    for _ in range(reps):
        if run_id:
            r.call("DEL", f"ttg:run:{run_id}:results")
        wall, _, st = c.run(POINTS, chunk, 0, watch=False)
        plain.append(wall)
        r.call("DEL", f"ttg:run:{st['run_id']}:results")
        run_id = json.loads(c.ctl("submit", *AXES, *OUTPUTS, "--chunk-size", str(chunk), "-o", "json"))["run_id"]
        while (st := c.status(run_id))["state"] in ("QUEUED", "RUNNING"):
            time.sleep(0.05)
        if st["state"] != "SUCCEEDED":
            raise SystemExit(f"grid run ended {st['state']}")
        grid.append((st["finished_ms"] - st["created_ms"]) / 1000.0)
    return statistics.median(grid), statistics.median(plain), run_id


def p9(args, tmp):
    c = Cluster(args.bin, agents=3, concurrency=2, tmp=new_dir(tmp))
    best10, best1k, pq = [], [], []
    try:
        r = Resp(c.redis_port)
        reps = max(1, min(args.reps, 3))
        gk, pk, big = pairs(c, r, 1_000, reps)
        results = int(r.call("MEMORY", "USAGE", f"ttg:run:{big}:results", "SAMPLES", "0"))
        r.call("DEL", f"ttg:run:{big}:results")
        g, p, run_id = pairs(c, r, 100, reps)
        results100 = int(r.call("MEMORY", "USAGE", f"ttg:run:{run_id}:results", "SAMPLES", "0"))
        ext = int(r.call("MEMORY", "USAGE", f"ttg:run:{run_id}:ext", "SAMPLES", "0"))
        ctl = [os.path.join(args.bin, "ttgctl"), "--server", c.server]
        for _ in range(max(5, args.reps)):
            best10.append(timed([*ctl, "best", run_id, "--by", "loss", "-n", "10"])[0])
            best1k.append(timed([*ctl, "best", run_id, "--by", "acc", "--max", "-n", "1000"])[0])
        read10 = json.loads(c.ctl("best", run_id, "--by", "loss", "-n", "10", "-o", "json"))["chunks_read"]
        read1k = json.loads(c.ctl("best", run_id, "--by", "acc", "--max", "-n", "1000", "-o", "json"))["chunks_read"]
        out = os.path.join(tmp, "p9.parquet")
        for _ in range(reps):
            pq.append(timed([*ctl, "results", run_id, "-o", "parquet", "--file", out]))
        pq_bytes = os.path.getsize(out)
        os.remove(out)
    finally:
        c.stop()
    ratio = lambda g, p: p / g
    pq_s = statistics.median(x[0] for x in pq)
    pq_rss = max(x[1] for x in pq)
    return [
        ("P9", "10^7-point grid (4 axes: int range, linspace, logspace, 10 texts) × 3 outputs, placeholder, "
               "chunk 100 (10^5 chunks), 3 agents × concurrency 2; vs `--params 10000000`, one output, "
               "same cluster, alternating",
         f"{g:.2f} s", f"goal ≥ 80 %: {ratio(g, p):.0%} of the plain run's chunks/s ({POINTS / 100 / g:,.0f} vs "
                       f"{POINTS / 100 / p:,.0f} chunks/s; plain {p:.2f} s; {reps} pairs)"),
        ("P9k", "P9 at chunk 1,000 (10^4 chunks of 24 KB: bytes, not chunks, dominate)",
         f"{gk:.2f} s", f"{ratio(gk, pk):.0%} of the plain run's chunks/s ({POINTS / 1000 / gk:,.0f} vs "
                        f"{POINTS / 1000 / pk:,.0f}; plain {pk:.2f} s)"),
        ("P9m", "Redis bytes per point of the grid's results (3 outputs)", f"{results / POINTS:.2f} B/point",
         f"goal ≤ 25.5 (8.5 × 3), chunk 1,000: {results / POINTS / 3:.2f} B per output per point; at chunk 100 "
         f"{results100 / POINTS:.2f} B/point; chunk extremes (Best's index) {ext / POINTS:.2f} B/point at chunk 100"),
        ("P9b", "`ttgctl best RUN --by loss -n 10` on the completed chunk-100 grid (10^5 chunks; process incl. start-up)",
         f"{statistics.median(best10) * 1000:.0f} ms",
         f"goal ≤ 100 ms; read {read10} of 100,000 chunks; `--by acc --max -n 1000`: "
         f"{statistics.median(best1k) * 1000:.0f} ms, {read1k} chunks read"),
        ("P9p", "`ttgctl results RUN -o parquet --file …` of that grid: 10^7 rows × (index, 4 axes, 3 outputs)",
         f"{pq_s:.1f} s", f"goal ≤ 10 s and ≤ 200 MiB: ttgctl peak RSS {mib(pq_rss)}; file {pq_bytes / 2**20:.0f} MiB"),
    ]
