"""Does a held-out screen predict the test images? Paired per-seed differences from speed runs.

Each argument is a ``benchmarks/speedrun.py --json`` file of runs trained with ``--val N``, so
every run has a held-out accuracy (its 5,000 held-out training images) and a test accuracy (the
archive's 1,000 test images) of the same final weights. Against the first file (the baseline),
each other file's runs are paired by seed; the script prints each candidate's mean difference
on both, then, over all pairs, the spread of a per-seed difference on each and how well the
held-out difference predicts the test one (Pearson r).

    python scripts/heldout_vs_test.py BASE.json CANDIDATE.json [CANDIDATE.json ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def scores(path: Path) -> dict[int, tuple[float, float]]:
    """seed -> (held-out, test) accuracy in points, of the file's first configuration."""
    runs = next(iter(json.loads(path.read_text())["runs"].values()))
    return {
        r["seed"]: (100 * r["val_acc"], 100 * r["test_acc"])
        for r in runs
        if r.get("val_acc") is not None and r.get("test_acc") is not None
    }


def pairs(base: dict, cand: dict) -> list[tuple[float, float]]:
    """(held-out, test) differences, candidate - baseline, for the seeds both ran."""
    return [(cand[s][0] - base[s][0], cand[s][1] - base[s][1]) for s in sorted(cand) if s in base]


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[-1].strip(), file=sys.stderr)
        return 2
    base = scores(Path(argv[0]))
    every: list[tuple[float, float]] = []
    print("| candidate | seeds | held-out − base | test − base |\n|---|---:|---:|---:|")
    for name in argv[1:]:
        found = pairs(base, scores(Path(name)))
        if not found:
            continue
        every += found
        held, test = (statistics.fmean(v) for v in zip(*found, strict=True))
        print(f"| {name} | {len(found)} | {held:+.2f} | {test:+.2f} |")
    if len(every) < 3:
        print("fewer than 3 pairs: no spread or correlation")
        return 0
    held, test = (list(v) for v in zip(*every, strict=True))
    print(
        f"\n{len(every)} pairs: a per-seed difference spreads by {statistics.stdev(held):.2f} "
        f"points held out and {statistics.stdev(test):.2f} on the test images; r = "
        f"{statistics.correlation(held, test):.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
