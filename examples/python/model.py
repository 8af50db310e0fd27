#!/usr/bin/env python3
"""A TTG model in Python, served with the ttg library (python/).

It computes the placeholder kernel's values, value(p) = (7p + 13) mod 1000 +
0.<p mod 100>, so a sweep of 10,000 parameters sums to 5,000,355.00 — and
spends --work-ms milliseconds of work on each parameter (sleep, then a
short spin, so each call takes that long and no more).

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


# Sleep overshoots by ~0.1 ms here; the rest of a call is spun.
SPIN = 0.0002


def work_for(seconds):
    """Take `seconds`: sleep most of it, spin the last 0.2 ms (sleep alone
    overshoots by ~0.1 ms, which would add 10 % to a 1 ms model)."""
    end = time.perf_counter() + seconds
    if seconds > SPIN:
        time.sleep(seconds - SPIN)
    while time.perf_counter() < end:
        pass


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work-ms", type=float, default=0.0, help="work per parameter, milliseconds")
    work = ap.parse_args().work_ms / 1000

    @ttg.kernel
    def model(p):
        if work > 0:
            work_for(work)
        return placeholder(p)

    ttg.serve(model)


if __name__ == "__main__":
    main()
