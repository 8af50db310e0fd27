"""The benchmark suite's harness (scripts/bench.py and its modules): real
redis-server, ttg-server and ttg-agent processes, a minimal Redis client,
and process CPU and memory sampling. Standard library only."""

import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


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


class Resp:
    """A minimal Redis client (RESP2) so the suite needs no Python packages."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.f = self.sock.makefile("rb")

    def call(self, *args):
        out = [f"*{len(args)}\r\n".encode()]
        for a in args:
            b = a if isinstance(a, bytes) else str(a).encode()
            out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
        self.sock.sendall(b"".join(out))
        return self._read()

    def pipeline(self, cmds):
        """Send several commands in one write; their replies, in order."""
        out = []
        for args in cmds:
            out.append(f"*{len(args)}\r\n".encode())
            for a in args:
                b = a if isinstance(a, bytes) else str(a).encode()
                out.append(f"${len(b)}\r\n".encode() + b + b"\r\n")
        self.sock.sendall(b"".join(out))
        return [self._read() for _ in cmds]

    def _read(self):
        line = self.f.readline()[:-2]
        t, rest = line[:1], line[1:]
        if t == b"+":
            return rest.decode()
        if t == b"-":
            raise RuntimeError(rest.decode())
        if t == b":":
            return int(rest)
        if t == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.f.read(n + 2)[:-2]
            return data
        if t == b"*":
            n = int(rest)
            return None if n < 0 else [self._read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def info(self, section, field):
        text = self.call("INFO", section).decode()
        m = re.search(rf"^{field}:(\S+)", text, re.M)
        return int(m.group(1)) if m else None


def rss_kb(pid):
    """(VmRSS, VmHWM) of a process in KiB."""
    try:
        text = open(f"/proc/{pid}/status").read()
    except OSError:
        return (0, 0)
    get = lambda k: int(re.search(rf"^{k}:\s+(\d+)", text, re.M).group(1))
    return (get("VmRSS"), get("VmHWM"))


def cpu_s(pid):
    """User + system CPU seconds a process has used."""
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def mib(kb):
    return f"{kb / 1024:.1f} MiB"


class Sampler:
    """Samples RSS of some processes (and Redis used_memory) every `period` s."""

    def __init__(self, pids, redis_port=None, period=0.2):
        self.pids, self.period = dict(pids), period
        self.redis = Resp(redis_port) if redis_port else None
        self.rss = {k: [] for k in self.pids}
        self.redis_mem = []
        self.stop_ev = threading.Event()
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _loop(self):
        while not self.stop_ev.is_set():
            for k, pid in self.pids.items():
                r = rss_kb(pid)[0]
                if r:
                    self.rss[k].append(r)
            if self.redis:
                self.redis_mem.append(self.redis.info("memory", "used_memory"))
            self.stop_ev.wait(self.period)

    def stop(self):
        self.stop_ev.set()
        self.t.join()


class Cluster:
    """redis-server + ttg-server + N agents, each a real process."""

    def __init__(self, bindir, agents, concurrency, tmp, server_args=(), redis_args=(), agent_args=(),
                 agent_env=None, redis_cluster=None):
        """`redis_cluster`: seed URLs of a running Redis Cluster to use
        instead of starting a redis-server."""
        self.bindir, self.tmp = bindir, tmp
        self.agent_args, self.agent_env = list(agent_args), dict(agent_env or {})
        self.procs, self.agents = [], []
        self.redis_port, self.server_port = free_port(), free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}"
        self.server = f"http://127.0.0.1:{self.server_port}"
        where = ["--redis-url", self.redis_url]
        if redis_cluster:
            where = ["--redis-cluster", redis_cluster]
            self.agent_args = where + self.agent_args
            self.redis = None
        else:
            log = open(os.path.join(tmp, "redis.log"), "w")
            self.redis = subprocess.Popen(
                ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--dir", tmp,
                 "--save", "", "--appendonly", "yes", *redis_args], stdout=log, stderr=log)
            self.procs.append(self.redis)
            wait_port(self.redis_port)
        env = dict(os.environ, RUST_LOG="warn")
        slog = open(os.path.join(tmp, "server.log"), "w")
        self.server_proc = subprocess.Popen(
            [os.path.join(bindir, "ttg-server"), "--listen", f"127.0.0.1:{self.server_port}",
             *where, "--insecure-no-auth", *server_args],
            stdout=slog, stderr=slog, env=env)
        self.procs.append(self.server_proc)
        wait_port(self.server_port)
        for i in range(agents):
            self.add_agent(i, concurrency, env)
        self.wait_agents(agents)

    def add_agent(self, i, concurrency, env):
        alog = open(os.path.join(self.tmp, f"agent-{i}.log"), "w")
        p = subprocess.Popen(
            [os.path.join(self.bindir, "ttg-agent"), "--server", self.server, "--redis-url", self.redis_url,
             "--concurrency", str(concurrency), "--agent-id", f"bench-{i}", *self.agent_args],
            stdout=alog, stderr=alog, env=dict(env, **self.agent_env))
        p.agent_id = f"bench-{i}"
        self.procs.append(p)
        self.agents.append(p)

    def kill_agent(self, i, replace, concurrency=1):
        """SIGKILL agent i; start a replacement (as a supervisor would) if asked."""
        victim = self.agents[i]
        victim.kill()
        victim.wait()
        if replace:
            self.add_agent(f"r{len(self.procs)}", concurrency, dict(os.environ, RUST_LOG="warn"))
            self.agents[i] = self.agents.pop()
        else:
            self.agents.pop(i)

    def held(self):
        """agent id -> chunks held, from the agents' last heartbeats."""
        return {a["agent_id"]: len(a["held"]) for a in json.loads(self.ctl("agents", "-o", "json"))}

    def events(self, run_id):
        return [json.loads(l) for l in self.ctl("watch", run_id, "-o", "json").splitlines() if l.strip()]

    def submit(self, params, chunk, work_ms, *extra):
        return json.loads(self.ctl("submit", "--params", str(params), "--chunk-size", str(chunk),
                                   "--arg", f"work_ms={work_ms}", "-o", "json", *extra))["run_id"]

    def status(self, run_id):
        return json.loads(self.ctl("status", run_id, "-o", "json"))

    def ctl(self, *args, check=True):
        out = subprocess.run([os.path.join(self.bindir, "ttgctl"), "--server", self.server, *args],
                             capture_output=True, text=True)
        if check and out.returncode != 0:
            raise SystemExit(f"ttgctl {' '.join(args)} failed ({out.returncode}): {out.stderr.strip()}")
        return out.stdout if check else out

    def wait_agents(self, n, within=15.0):
        deadline = time.time() + within
        while time.time() < deadline:
            if len(json.loads(self.ctl("agents", "-o", "json"))) >= n:
                return
            time.sleep(0.05)
        raise SystemExit(f"{n} agents did not connect")

    def wait_done(self, run_id):
        self.ctl("watch", run_id, "-o", "json")
        st = self.status(run_id)
        if st["state"] != "SUCCEEDED":
            raise SystemExit(f"run {run_id} ended {st['state']}")
        return st

    def run(self, params, chunk, work_ms, submit_args=None, watch=True):
        """Submit, wait for the end, return (wall s, submit s, status).
        `submit_args` replaces the placeholder kernel's flags; without
        `watch`, the end is polled with Status every 50 ms instead of
        followed by a `ttgctl watch` (which costs the server per event)."""
        t0 = time.perf_counter()
        if submit_args is None:
            run_id = self.submit(params, chunk, work_ms)
        else:
            run_id = json.loads(self.ctl("submit", "--params", str(params), "--chunk-size", str(chunk),
                                         "-o", "json", *submit_args))["run_id"]
        submit_s = time.perf_counter() - t0
        if watch:
            st = self.wait_done(run_id)
        else:
            while (st := self.status(run_id))["state"] in ("QUEUED", "RUNNING"):
                time.sleep(0.05)
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


def new_dir(tmp):
    return tempfile.mkdtemp(prefix="ttg-bench-", dir=tmp)
