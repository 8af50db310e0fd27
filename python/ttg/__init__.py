"""Write TTG sweep kernels in Python.

A model is a function of one parameter that returns a number::

    import ttg

    @ttg.kernel
    def model(p):
        return simulate(p)

Over a named parameter space (``ttgctl submit --axis lr=... --axis
depth=...``) the model takes the axes as keyword arguments, and with named
outputs (``--outputs loss,acc``) returns a dict of them::

    @ttg.kernel
    def model(lr, depth, rep=0):
        return {"loss": ..., "acc": ...}

    if __name__ == "__main__":
        ttg.serve(model)

Submit it with ``ttgctl submit --kernel exec --arg program=model.py
--arg mode=worker``: each agent slot starts the program once and sends it
chunk after chunk over TTG's worker protocol (version 1, newline-delimited
JSON on stdin/stdout, documented in docs/kernels.md). The same file also
works with ``mode=chunk`` (a process per chunk).

* An exception in the model fails that chunk, with the traceback as the
  chunk's error; the process keeps serving the next chunk.
* ``print()`` (and anything else written to file descriptor 1) goes to
  stderr, which the agent logs with the run id and chunk: under an agent,
  ``import ttg`` moves the protocol to descriptors of its own, so user
  output after that import cannot corrupt it (import ttg first).
* ``@ttg.kernel(batch=True)`` gets the list of a chunk's parameters (or of
  its points, as dicts) and returns their values (or dicts) in order, for
  numpy-style vectorised models.
* A missing, extra or non-finite output fails the chunk, naming it.
* :func:`current_chunk` tells the model which run, chunk and attempt it is
  serving.

Only the standard library is used.
"""

import json
import math
import os
import sys

__all__ = ["PROTOCOL", "Chunk", "Kernel", "current_chunk", "kernel", "serve"]
__version__ = "0.1.0"

#: The worker protocol version this library speaks.
PROTOCOL = 1

# Longest error text sent for one chunk (the end of a traceback matters most).
_MAX_ERROR = 16 * 1024

_current = None


class Chunk:
    """The chunk being computed: run id, chunk index, attempt and the
    parameter range ``start .. end`` (end excluded)."""

    __slots__ = ("run_id", "index", "attempt", "start", "end")

    def __init__(self, run_id, index, attempt, start, end):
        self.run_id = run_id
        self.index = index
        self.attempt = attempt
        self.start = start
        self.end = end

    def __repr__(self):
        return "Chunk(run_id=%r, index=%d, attempt=%d, start=%d, end=%d)" % (
            self.run_id, self.index, self.attempt, self.start, self.end)


def current_chunk():
    """The :class:`Chunk` being computed, or None outside a chunk."""
    return _current


class Kernel:
    """A model wrapped by :func:`kernel`; calling it calls the model."""

    def __init__(self, fn, batch=False):
        if not callable(fn):
            raise TypeError("ttg.kernel needs a function, got %r" % (fn,))
        self.fn = fn
        self.batch = batch
        self.__name__ = getattr(fn, "__name__", "model")
        self.__doc__ = getattr(fn, "__doc__", None)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def values(self, start, end):
        """The model's values for parameters ``start .. end``, checked:
        one finite number per parameter, or ValueError naming the first
        that is not."""
        return self.compute(start, end)["value"]

    def compute(self, start, end, points=None, outputs=None):
        """Output name -> one checked number per point, for points
        ``start .. end`` (``points``: their named values, when the run has a
        named space; ``outputs``: the run's output names, default
        ``["value"]``). ValueError names the point and output at fault."""
        outputs = list(outputs or ["value"])
        if points is None:
            args = list(range(start, end))
            label = ["p=%d" % p for p in args]
        else:
            args = points
            label = ["point %d %s" % (start + i, _shown(pt)) for i, pt in enumerate(points)]
        if self.batch:
            got = list(self.fn(args))
            if len(got) != len(args):
                raise ValueError("%s returned %d values for %d parameters"
                                 % (self.__name__, len(got), len(args)))
        else:
            fn = self.fn
            got = [fn(a) for a in args] if points is None else [fn(**a) for a in args]
        cols = {o: [] for o in outputs}
        name = self.__name__
        for r, where in zip(got, label):
            if isinstance(r, dict):
                for o in outputs:
                    if o not in r:
                        raise ValueError("%s returned no %r for %s (the run's outputs are %s)"
                                         % (name, o, where, ", ".join(outputs)))
                    cols[o].append(_number(r[o], where, name, o))
                if len(r) != len(outputs):
                    extra = sorted(k for k in r if k not in cols)
                    raise ValueError("%s returned output %r for %s, which the run does not declare (its outputs are %s)"
                                     % (name, extra[0], where, ", ".join(outputs)))
            elif len(outputs) == 1:
                cols[outputs[0]].append(_number(r, where, name, None))
            else:
                raise ValueError("%s returned %r for %s; the run declares outputs %s: return a dict of them"
                                 % (name, r, where, ", ".join(outputs)))
        return cols


def _shown(point):
    return "(" + ", ".join("%s=%r" % kv for kv in point.items()) + ")"


def kernel(fn=None, *, batch=False):
    """Mark ``fn`` as a TTG kernel: ``@ttg.kernel`` (``fn(p) -> number``) or
    ``@ttg.kernel(batch=True)`` (``fn([p, ...]) -> [number, ...]``)."""
    if fn is None:
        return lambda f: Kernel(f, batch=batch)
    return Kernel(fn, batch=batch)


def _number(v, where, name, output):
    what = "%s returned %r" % (name, v) if output is None else "%s returned %s=%r" % (name, output, v)
    if isinstance(v, (str, bytes)):
        raise ValueError("%s (%s) for %s: return a number" % (what, type(v).__name__, where))
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise ValueError("%s (%s) for %s: return a number"
                         % (what, type(v).__name__, where)) from None
    if not math.isfinite(x):
        raise ValueError("%s for %s: values must be finite" % (what, where))
    return x


def _under_agent():
    """Which way an agent started this program: "worker", "chunk" or None."""
    if os.environ.get("TTG_MODE") == "worker" or "TTG_PROTOCOL" in os.environ:
        return "worker"
    if "TTG_PARAM_START" in os.environ:
        return "chunk"
    return None


_stdio = None


def _protocol_stdio():
    """The agent's pipes, taken once (on import, under an agent)."""
    global _stdio
    if _stdio is None:
        _stdio = _take_stdio()
    return _stdio


def serve(model, argv=None):
    """Serve ``model`` to the TTG agent that started this program, until it
    closes stdin; then exit. Outside TTG (run by hand), print how to submit
    it and exit with status 2."""
    k = model if isinstance(model, Kernel) else Kernel(model)
    mode = _under_agent()
    if mode == "worker":
        sys.exit(_serve_worker(k))
    if mode == "chunk":
        sys.exit(_serve_chunk(k))
    prog = (argv or sys.argv)[0] if (argv or sys.argv) else "model.py"
    sys.stderr.write(
        "%s is a TTG kernel: it is run by a TTG agent, not by hand. Submit it with\n"
        "  ttgctl submit --kernel exec --arg program=%s --arg mode=worker --params N\n"
        "(agents need --allow-exec; see docs/kernels.md)\n" % (prog, os.path.abspath(prog)))
    sys.exit(2)


def _take_stdio():
    """Move the protocol off file descriptors 0 and 1: returns the agent's
    pipes as binary files; fd 1 (and sys.stdout) now write to stderr and
    fd 0 reads nothing, so user code can neither corrupt nor consume the
    protocol."""
    sys.stdout.flush()
    proto_in = os.fdopen(os.dup(0), "rb")
    proto_out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    sys.stdout = sys.stderr
    sys.stdin = open(os.devnull)
    return proto_in, proto_out


def _error_text():
    """The current exception's traceback, from the user's code down: the
    library's own frames are left out."""
    import traceback  # only on an error: keeps start-up short

    _, e, tb = sys.exc_info()
    while tb is not None and tb.tb_frame.f_globals.get("__name__") == __name__:
        tb = tb.tb_next
    text = "Traceback (most recent call last):\n" + "".join(traceback.format_tb(tb)) \
        + "".join(traceback.format_exception_only(type(e), e))
    if len(text) > _MAX_ERROR:
        text = "…" + text[-_MAX_ERROR:]
    return text.rstrip()


def _send(out, msg):
    out.write(json.dumps(msg, allow_nan=False, separators=(",", ":")).encode() + b"\n")
    out.flush()


def _serve_worker(k):
    global _current
    proto_in, proto_out = _protocol_stdio()
    first = proto_in.readline()
    if not first:
        return 0
    try:
        hello = json.loads(first)
    except ValueError:
        hello = None
    if not isinstance(hello, dict) or hello.get("type") != "hello":
        _send(proto_out, {"type": "error",
                          "error": "expected a hello message first, got %r" % first[:200]})
        return 2
    if hello.get("protocol") != PROTOCOL:
        _send(proto_out, {"type": "error",
                          "error": "the ttg Python library %s speaks worker protocol %d, the agent sent %r"
                          % (__version__, PROTOCOL, hello.get("protocol"))})
        return 2
    run_id = hello.get("run_id", "")
    outputs = hello.get("outputs")
    _send(proto_out, {"type": "ready", "protocol": PROTOCOL,
                      "library": "ttg-python/" + __version__})
    for line in proto_in:
        if not line.strip():
            continue
        msg = json.loads(line)
        if msg.get("type") != "chunk":
            # Newer agents may send messages this version does not know.
            continue
        index = msg["chunk"]
        _current = Chunk(run_id, index, msg.get("attempt", 1), msg["start"], msg["end"])
        try:
            cols = k.compute(msg["start"], msg["end"], msg.get("points"), outputs)
            if outputs is None:
                body = b'"values":' + json.dumps(cols["value"], allow_nan=False, separators=(",", ":")).encode()
            else:
                body = b'"outputs":' + json.dumps(cols, allow_nan=False, separators=(",", ":")).encode()
            reply = b'{"type":"result","chunk":%d,%s}\n' % (index, body)
        except Exception:  # the user's code: reported as this chunk's error
            reply = json.dumps({"type": "error", "chunk": index,
                                "error": _error_text()}).encode() + b"\n"
        finally:
            _current = None
        proto_out.write(reply)
        proto_out.flush()
    return 0


def _serve_chunk(k):
    """``mode=chunk``: this process computes one chunk — the parameters on
    stdin, one value per line on stdout."""
    global _current
    proto_in, proto_out = _protocol_stdio()
    start = int(os.environ["TTG_PARAM_START"])
    end = int(os.environ["TTG_PARAM_END"])
    outputs = os.environ.get("TTG_OUTPUTS", "value").split(",")
    lines = proto_in.read().splitlines()
    points = [json.loads(x) for x in lines if x.strip()] if os.environ.get("TTG_AXES") else None
    _current = Chunk(os.environ.get("TTG_RUN_ID", ""), int(os.environ.get("TTG_CHUNK_INDEX", "0")),
                     int(os.environ.get("TTG_ATTEMPT", "1")), start, end)
    try:
        cols = k.compute(start, end, points, outputs)
    except Exception:
        sys.stderr.write(_error_text() + "\n")
        return 1
    rows = zip(*(cols[o] for o in outputs))
    proto_out.write("".join(" ".join("%r" % v for v in row) + "\n" for row in rows).encode())
    proto_out.flush()
    return 0


# Under an agent, take the protocol's descriptors as soon as the model
# imports the library, so its own prints at import time (loading a model,
# say) go to stderr too.
if _under_agent():
    _protocol_stdio()
