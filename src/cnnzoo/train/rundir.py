"""The files of a run directory: config.json, metrics.jsonl/.csv, summary.json."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from cnnzoo.atomic import atomic_open

METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "img_per_s",
)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def write_metrics(out: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite both metric files from the full history (so a resume never duplicates rows)."""
    write_text_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(out / "metrics.csv", buf.getvalue())


def read_metrics(out: Path) -> list[dict[str, Any]]:
    path = Path(out) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
