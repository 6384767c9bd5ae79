"""The accuracy table of docs/results/accuracy/, built from the committed run files only.

Each run folder under ``docs/results/accuracy/run-files/`` holds the run's own ``config.json``,
``summary.json`` and ``metrics.csv`` and a ``run.json`` written when it was filed: the exact
command, the wall time of the whole command, the machine. Runs of one model and recipe are one
row (mean ± sample std over seeds). Test accuracy is on the shared archive's test batch, the
first 1,000 official test images (each counted 10 times), so its sampling error is that of
1,000 images: sqrt(p(1-p)/1000); the validation split (5,000 held-out training images) gives a
second estimate with error sqrt(p(1-p)/5000).

    python scripts/accuracy_table.py            # prints the Markdown table
    python scripts/accuracy_table.py file RUN_DIR --recipe R --wall S --machine M --command C
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNS = ROOT / "docs" / "results" / "accuracy" / "run-files"
TEST_IMAGES = 1000  # distinct images in the shared archive's test batch
VAL_IMAGES = 5000  # the validation split held out of the training set


def load(run: Path) -> dict:
    row = json.loads((run / "run.json").read_text())
    row["config"] = json.loads((run / "config.json").read_text())
    row["summary"] = json.loads((run / "summary.json").read_text())
    row["name"] = run.name
    return row


def pm(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def se(p: float, n: int) -> float:
    return 100 * math.sqrt(p * (1 - p) / n)


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["config"]["model"], r["recipe"], r["machine"])].append(r)
    out = [
        "| model | recipe | epochs | seeds | best-val epoch | test acc % (mean ± std over seeds; "
        "± s.e. of 1,000 images) | val acc % (± s.e. of 5,000) | wall time | img/s | machine "
        "| runs |",
        "|---|---|---:|---:|---|---|---|---|---:|---|---|",
    ]
    for (model, recipe, machine), rs in sorted(groups.items()):
        tests = [r["summary"]["test_acc"] for r in rs]
        vals = [r["summary"]["best_val_acc"] for r in rs]
        mean = statistics.fmean(tests)
        # every seed is tested on the same 1,000 images: more seeds do not shrink this error
        err = se(mean, TEST_IMAGES)
        val_err = se(statistics.fmean(vals), VAL_IMAGES)
        walls = [r["wall_seconds"] / 60 for r in rs]
        out.append(
            f"| {model} | `{recipe}` | {rs[0]['config']['epochs']} | {len(rs)} | "
            f"{', '.join(str(r['summary']['best_epoch']) for r in rs)} | "
            f"{pm(tests)}; ± {err:.2f} | {pm(vals)}; ± {val_err:.2f} | {pm(walls, 1.0, 1)} min | "
            f"{statistics.fmean(r['summary']['mean_img_per_s'] for r in rs):.0f} | {machine} | "
            f"{', '.join(r['name'] for r in rs)} |"
        )
    return "\n".join(out)


def file_run(argv: list[str]) -> int:
    """Copy a finished run's small files into RUNS/<name>/ with its run.json."""
    import argparse
    import shutil

    p = argparse.ArgumentParser(prog="accuracy_table.py file")
    p.add_argument("run", type=Path)
    p.add_argument("--recipe", required=True)
    p.add_argument("--wall", type=float, required=True, help="wall seconds of the whole command")
    p.add_argument("--machine", required=True, help="CPU/GPU model, threads, precision")
    p.add_argument("--command", required=True)
    p.add_argument("--data", default="shared archive md5 80edd8881f010cfc87cc0c413fab2631")
    args = p.parse_args(argv)
    dest = RUNS / args.run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "summary.json", "metrics.csv", "metrics.jsonl"):
        shutil.copy2(args.run / name, dest / name)
    info = {k: getattr(args, k) for k in ("recipe", "machine", "command", "data")}
    info["wall_seconds"] = args.wall
    (dest / "run.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"filed {dest}")
    return 0


def main() -> int:
    if sys.argv[1:2] == ["file"]:
        return file_run(sys.argv[2:])
    rows = [load(p) for p in sorted(RUNS.iterdir()) if (p / "run.json").is_file()]
    print(table(rows))
    print()
    for r in rows:
        print(f"- `{r['name']}`: `{r['command']}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
