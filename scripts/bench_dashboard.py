"""D1 of docs/benchmarks.md: the dashboard under load (#21).

A 10^7-parameter run (10^5 chunks of 100, no work: well over 10,000 chunks
completed per second) on 3 agents × concurrency 2, watched by 50
browser-equivalents — each holds the run page's event stream
(/api/v1/runs/RUN/events) and the shared runs-and-agents snapshot
(/api/v1/live), as an open dashboard tab does: 100 SSE connections.
Against the same run with nobody watching, alternating on one cluster in
one session: the server's CPU (user + system, from /proc) and peak RSS
(VmHWM), the run's wall time, and the events each subscriber received.
"""

import http.client
import json
import statistics
import threading
import time

from benchlib import Cluster, cpu_s, free_port, new_dir, rss_kb

TABS = 50
PARAMS = 10_000_000


class Subscriber(threading.Thread):
    """An SSE client: counts the events of one stream until told to stop."""

    def __init__(self, port, path):
        super().__init__(daemon=True)
        self.port, self.path, self.events, self.stop = port, path, 0, False

    def run(self):
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
            c.request("GET", self.path, headers={"Accept": "text/event-stream"})
            r = c.getresponse()
            while not self.stop:
                line = r.fp.readline()
                if not line:
                    return
                if line.startswith(b"event:"):
                    self.events += 1
        except OSError:
            return


def d1(args, tmp):
    http_port = free_port()
    c = Cluster(args.bin, agents=3, concurrency=2, tmp=new_dir(tmp),
                server_args=("--http-addr", f"127.0.0.1:{http_port}"))
    pid = c.server_proc.pid
    watched, alone, events = [], [], []
    try:
        for rep in range(max(1, min(args.reps, 3))):
            for with_tabs in (False, True):
                run_id = json.loads(c.ctl("submit", "--params", str(PARAMS), "--chunk-size", "100",
                                          "--arg", "work_ms=0", "-o", "json"))["run_id"]
                subs = []
                if with_tabs:
                    for _ in range(TABS):
                        subs += [Subscriber(http_port, f"/api/v1/runs/{run_id}/events"),
                                 Subscriber(http_port, "/api/v1/live")]
                    for s in subs:
                        s.start()
                cpu0, t0 = cpu_s(pid), time.time()
                while (st := c.status(run_id))["state"] in ("QUEUED", "RUNNING"):
                    time.sleep(0.05)
                wall = (st["finished_ms"] - st["created_ms"]) / 1000.0
                sample = (cpu_s(pid) - cpu0, wall, time.time() - t0)
                for s in subs:
                    s.stop = True
                if with_tabs:
                    watched.append(sample)
                    events.append(statistics.median(s.events for s in subs[0::2]))
                else:
                    alone.append(sample)
                c.ctl("delete", run_id)
        now, hwm = rss_kb(pid)
    finally:
        c.stop()
    med = lambda xs, i: statistics.median(x[i] for x in xs)
    chunks = PARAMS // 100
    return [
        ("D1", f"dashboard: {TABS} browser tabs (run page events + the live snapshot each: {2 * TABS} SSE streams) "
               f"on a 10^7-param run (10^5 chunks, 3 agents × 2); vs nobody watching, alternating",
         f"{med(watched, 0):.2f} s server CPU",
         f"alone {med(alone, 0):.2f} s; run {med(watched, 1):.2f} s watched vs {med(alone, 1):.2f} s alone "
         f"({chunks / med(watched, 1):,.0f} vs {chunks / med(alone, 1):,.0f} chunks/s); server peak RSS "
         f"{hwm / 1024:.0f} MiB (now {now / 1024:.0f} MiB); each run-page stream got "
         f"{statistics.median(events):,.0f} events (progress at most 4 a second, failures and the end at once); "
         f"the 100 SSE clients are Python threads on the same 2 cores"),
    ]
