#!/usr/bin/env python3
"""P2 (1,000,000 params, 10,000 no-work chunks, 3 agents x 4) with two
builds' binaries, alternating on fresh clusters in one session, so a change
is judged against what came before on the same machine at the same time:

    python3 scripts/bench_compare.py OLD_BIN_DIR NEW_BIN_DIR [rounds]
"""

import statistics
import sys
import tempfile

from benchlib import Cluster, new_dir


def main():
    if len(sys.argv) not in (3, 4):
        raise SystemExit(__doc__)
    old, new = sys.argv[1], sys.argv[2]
    rounds = int(sys.argv[3]) if len(sys.argv) == 4 else 4
    tmp = tempfile.mkdtemp(prefix="ttg-compare-")
    res = {old: [], new: []}
    for _ in range(rounds):
        for b in (old, new):
            c = Cluster(b, agents=3, concurrency=4, tmp=new_dir(tmp))
            try:
                for _ in range(2):
                    res[b].append(c.run(1_000_000, 100, 0)[0])
            finally:
                c.stop()
    o, n = statistics.median(res[old]), statistics.median(res[new])
    print(f"P2 {old}: {o:.3f} s, {new}: {n:.3f} s, ratio {n / o:.3f} "
          f"(runs: {sorted(res[old])} vs {sorted(res[new])})")


if __name__ == "__main__":
    main()
