"""The library against its protocol, with real worker processes: each test
starts a model program with the library and speaks to it over its pipes
exactly as the agent does (docs/kernels.md)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

LIB = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)


class Worker:
    """A model program started in worker mode, spoken to like the agent."""

    def __init__(self, path, env=None):
        e = dict(os.environ, TTG_MODE="worker", TTG_PROTOCOL="1", TTG_RUN_ID="r-test",
                 PYTHONPATH=os.path.abspath(LIB))
        e.update(env or {})
        self.p = subprocess.Popen([sys.executable, str(path)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)

    def send(self, msg):
        self.p.stdin.write(json.dumps(msg).encode() + b"\n")
        self.p.stdin.flush()

    def recv(self):
        line = self.p.stdout.readline()
        assert line, "worker closed stdout; stderr: %s" % self.p.stderr.read().decode()
        return json.loads(line)

    def hello(self, protocol=1):
        self.send({"type": "hello", "protocol": protocol, "run_id": "r-test"})
        return self.recv()

    def chunk(self, index, start, end, attempt=1):
        self.send({"type": "chunk", "chunk": index, "attempt": attempt, "start": start, "end": end})
        return self.recv()

    def close(self):
        self.p.stdin.close()
        code = self.p.wait(timeout=10)
        err = self.p.stderr.read().decode()
        self.p.stdout.close()
        self.p.stderr.close()
        return code, err


def model(tmp_path, body):
    path = tmp_path / "model.py"
    path.write_text("import ttg\n" + textwrap.dedent(body) + "\nif __name__ == '__main__':\n    ttg.serve(model)\n")
    return path


def test_handshake_then_one_value_per_parameter(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel
        def model(p):
            return p * p
    """))
    ready = w.hello()
    assert ready["type"] == "ready" and ready["protocol"] == 1
    assert w.chunk(0, 0, 4) == {"type": "result", "chunk": 0, "values": [0.0, 1.0, 4.0, 9.0]}
    assert w.chunk(7, 10, 11) == {"type": "result", "chunk": 7, "values": [100.0]}
    assert w.close() == (0, "")


def test_an_exception_fails_its_chunk_with_the_traceback_and_the_worker_goes_on(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel
        def model(p):
            if p == 3:
                raise RuntimeError("diverged at p=3")
            return p
    """))
    w.hello()
    err = w.chunk(1, 2, 5)
    assert err["type"] == "error" and err["chunk"] == 1
    assert "Traceback" in err["error"] and "RuntimeError: diverged at p=3" in err["error"]
    assert "model.py" in err["error"]
    assert w.chunk(2, 5, 7)["values"] == [5.0, 6.0]
    assert w.close()[0] == 0


def test_user_output_cannot_corrupt_the_protocol(tmp_path):
    w = Worker(model(tmp_path, """
        import os, sys
        print("loading the model")
        @ttg.kernel
        def model(p):
            print("computing", p)
            sys.stdout.write("raw write\\n")
            os.write(1, b"fd 1 write\\n")
            assert sys.stdin.read() == ""   # stdin is not the protocol's
            return p + 0.5
    """))
    assert w.hello()["type"] == "ready"
    assert w.chunk(0, 0, 2)["values"] == [0.5, 1.5]
    code, err = w.close()
    assert code == 0
    for text in ("loading the model", "computing 0", "computing 1", "raw write", "fd 1 write"):
        assert text in err


def test_non_finite_or_non_numeric_values_fail_the_chunk_naming_them(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel
        def model(p):
            return {0: float("nan"), 1: float("inf"), 2: "3", 3: None}.get(p, p)
    """))
    w.hello()
    for p, named in ((0, "nan for p=0"), (1, "inf for p=1"), (2, "'3' (str) for p=2"), (3, "None (NoneType) for p=3")):
        e = w.chunk(p, p, p + 1)
        assert e["type"] == "error" and named in e["error"], e
    assert w.chunk(9, 4, 6)["values"] == [4.0, 5.0]
    w.close()


def test_batch_kernels_get_the_chunks_parameters(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel(batch=True)
        def model(ps):
            return [p * 10 for p in ps]
    """))
    w.hello()
    assert w.chunk(0, 3, 6)["values"] == [30.0, 40.0, 50.0]
    w.close()
    w = Worker(model(tmp_path, """
        @ttg.kernel(batch=True)
        def model(ps):
            return [1.0]
    """))
    w.hello()
    assert "returned 1 values for 3 parameters" in w.chunk(0, 3, 6)["error"]
    w.close()


def test_current_chunk_names_the_run_chunk_and_attempt(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel
        def model(p):
            c = ttg.current_chunk()
            assert c.run_id == "r-test" and c.start <= p < c.end
            return c.index * 100 + c.attempt
    """))
    w.hello()
    assert w.chunk(4, 0, 1, attempt=2)["values"] == [402.0]
    w.close()


def test_a_protocol_version_it_does_not_speak_is_refused_by_name(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel
        def model(p):
            return p
    """))
    e = w.hello(protocol=99)
    assert e["type"] == "error" and "speaks worker protocol 1, the agent sent 99" in e["error"]
    assert w.close()[0] == 2


def test_chunk_mode_reads_stdin_and_prints_one_value_per_line(tmp_path):
    path = model(tmp_path, """
        @ttg.kernel
        def model(p):
            print("noise")
            return p / 4
    """)
    env = dict(os.environ, TTG_PARAM_START="2", TTG_PARAM_END="5", TTG_RUN_ID="r", TTG_CHUNK_INDEX="0",
               TTG_ATTEMPT="1", TTG_MODE="chunk", PYTHONPATH=os.path.abspath(LIB))
    env.pop("TTG_PROTOCOL", None)
    out = subprocess.run([sys.executable, str(path)], input=b"2\n3\n4\n", capture_output=True, env=env, timeout=30)
    assert out.returncode == 0
    assert out.stdout.decode().split() == ["0.5", "0.75", "1.0"]
    assert "noise" in out.stderr.decode()


def named_hello(w, axes, outputs):
    w.send({"type": "hello", "protocol": 1, "run_id": "r-test", "axes": axes, "outputs": outputs})
    return w.recv()


def test_named_points_are_keyword_arguments_and_outputs_a_dict(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel
        def model(lr, act, rep):
            return {"loss": lr * 10 + rep, "acc": 1.0 if act == "relu" else 0.0}
    """))
    assert named_hello(w, ["lr", "act", "rep"], ["loss", "acc"])["type"] == "ready"
    pts = [{"lr": 0.1, "act": "relu", "rep": 0}, {"lr": 0.5, "act": "tanh", "rep": 1}]
    w.send({"type": "chunk", "chunk": 3, "attempt": 1, "start": 6, "end": 8, "points": pts})
    assert w.recv() == {"type": "result", "chunk": 3, "outputs": {"loss": [1.0, 6.0], "acc": [1.0, 0.0]}}
    assert w.close() == (0, "")


def test_a_missing_extra_or_bad_output_fails_the_chunk_naming_it(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel
        def model(x):
            return [{"loss": 1.0}, {"loss": 1.0, "acc": 2.0, "f1": 0.0},
                    {"loss": float("nan"), "acc": 0.0}, 5.0, {"loss": 1.0, "acc": 2.0}][x]
    """))
    named_hello(w, ["x"], ["loss", "acc"])
    for x, says in ((0, "returned no 'acc' for point 0 (x=0)"),
                    (1, "returned output 'f1' for point 1 (x=1), which the run does not declare"),
                    (2, "returned loss=nan for point 2 (x=2): values must be finite"),
                    (3, "returned 5.0 for point 3 (x=3); the run declares outputs loss, acc: return a dict")):
        w.send({"type": "chunk", "chunk": x, "attempt": 1, "start": x, "end": x + 1, "points": [{"x": x}]})
        e = w.recv()
        assert e["type"] == "error" and says in e["error"], (says, e)
    w.send({"type": "chunk", "chunk": 4, "attempt": 1, "start": 4, "end": 5, "points": [{"x": 4}]})
    assert w.recv()["outputs"] == {"loss": [1.0], "acc": [2.0]}
    w.close()


def test_batch_kernels_get_the_chunks_points(tmp_path):
    w = Worker(model(tmp_path, """
        @ttg.kernel(batch=True)
        def model(points):
            return [{"y": p["a"] * 2} for p in points]
    """))
    named_hello(w, ["a"], ["y"])
    w.send({"type": "chunk", "chunk": 0, "attempt": 1, "start": 0, "end": 2, "points": [{"a": 1}, {"a": 5}]})
    assert w.recv()["outputs"] == {"y": [2.0, 10.0]}
    w.close()


def test_chunk_mode_reads_points_and_prints_each_points_outputs(tmp_path):
    path = model(tmp_path, """
        @ttg.kernel
        def model(lr, depth):
            return {"loss": lr * depth, "acc": depth}
    """)
    env = dict(os.environ, TTG_PARAM_START="0", TTG_PARAM_END="2", TTG_RUN_ID="r", TTG_CHUNK_INDEX="0",
               TTG_ATTEMPT="1", TTG_MODE="chunk", TTG_AXES="lr,depth", TTG_OUTPUTS="loss,acc",
               PYTHONPATH=os.path.abspath(LIB))
    env.pop("TTG_PROTOCOL", None)
    stdin = b'{"lr":0.5,"depth":2}\n{"lr":0.25,"depth":4}\n'
    out = subprocess.run([sys.executable, str(path)], input=stdin, capture_output=True, env=env, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().splitlines() == ["1.0 2.0", "1.0 4.0"]


def test_run_by_hand_it_says_how_to_submit_it(tmp_path):
    path = model(tmp_path, """
        @ttg.kernel
        def model(p):
            return p
    """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTG_")}
    env["PYTHONPATH"] = os.path.abspath(LIB)
    out = subprocess.run([sys.executable, str(path)], capture_output=True, env=env, timeout=30)
    assert out.returncode == 2
    assert "ttgctl submit --kernel exec" in out.stderr.decode()


def test_kernel_needs_a_function():
    sys.path.insert(0, os.path.abspath(LIB))
    import ttg
    with pytest.raises(TypeError):
        ttg.kernel(3)
    k = ttg.kernel(lambda p: p + 1)
    assert k(1) == 2 and k.values(0, 2) == [1.0, 2.0]
