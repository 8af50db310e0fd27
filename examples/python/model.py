#!/usr/bin/env python3
"""A TTG model in Python, served with the ttg library (python/).

It computes the placeholder kernel's values, value(p) = (7p + 13) mod 1000 +
0.<p mod 100>, so a sweep of 10,000 parameters sums to 5,000,355.00 — and
spends --work-ms milliseconds of simulated work on each parameter, drift-free
within a chunk as the built-in placeholder's work_ms is: the i-th parameter
of a chunk is done (i + 1) × work after the chunk began, so a chunk of n
parameters takes n × work, the model's own per-call cost included.

    ttgctl submit --kernel exec --arg program=examples/python/model.py \
        --arg mode=worker --arg args='--work-ms 1' --params 10000 --watch
"""

import argparse
import time

import ttg


def placeholder(p):
    m = p % 100
    frac = m / 10 if m < 10 else m / 100
    return float((7 * (p % 1000) + 13) % 1000) + frac


# Sleep overshoots by ~0.1 ms with Linux's default 50 µs timer slack; with
# the slack at 1 µs (below), by ~40 µs: the last SPIN seconds are spun.
SPIN = 0.0001
try:  # Linux: wake from sleep on time, not up to 50 µs late
    import ctypes
    ctypes.CDLL(None).prctl(29, 1000, 0, 0, 0)  # PR_SET_TIMERSLACK, 1 µs
except (OSError, AttributeError):
    pass


def work_until(deadline):
    """Return at `deadline` (time.perf_counter()): sleep most of the way,
    spin the rest."""
    left = deadline - time.perf_counter()
    if left > SPIN:
        time.sleep(left - SPIN)
    while time.perf_counter() < deadline:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work-ms", type=float, default=0.0, help="work per parameter, milliseconds")
    work = ap.parse_args().work_ms / 1000

    began = {"chunk": None, "at": 0.0}

    @ttg.kernel
    def model(p):
        if work > 0:
            chunk = ttg.current_chunk()
            if began["chunk"] is not chunk:
                began["chunk"], began["at"] = chunk, time.perf_counter()
            work_until(began["at"] + (p - chunk.start + 1) * work)
        return placeholder(p)

    ttg.serve(model)


if __name__ == "__main__":
    main()
