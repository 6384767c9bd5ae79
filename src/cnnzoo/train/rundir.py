"""The run directory: its files (config.json, metrics.jsonl/.csv, summary.json, gradflow.jsonl,
last.pt/best.pt) and its life (created once, refused when it exists, cleaned after a kill)."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnzoo.atomic import atomic_open, require_writable
from cnnzoo.errors import UserError, WriteFailed
from cnnzoo.train.runtime import DistInfo, barrier

GRADFLOW_FILE = "gradflow.jsonl"  # per-epoch conv gradient norms (--record-gradflow)
METRIC_COLUMNS = (
    "epoch",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "seconds",
    "img_per_s",
    "images",  # trained this epoch, over all ranks (fewer in a --prune epoch)
)
# config.json holds, at the top level, the values the run used (the device, precision and
# validation count it resolved: what report, compare and the benchmarks read) and, under this
# key, the configuration as asked for (``TrainConfig.to_dict()``, as last.pt's "config"). A
# resume rebuilds the asked-for one: the used values would pin "auto" to one machine's choice
# and turn an image folder's val/ count into a --val that the folder refuses.
REQUESTED_KEY = "requested"


@contextlib.contextmanager
def reported_write(path: Path) -> Iterator[None]:
    """Turn an ``OSError`` while writing ``path`` (ENOSPC, EIO, EROFS, a quota) into a
    ``WriteFailed`` that names the file and the space left on its filesystem. The atomic writes
    have already removed their temp file by then, so the previous ``path`` is untouched."""
    try:
        yield
    except OSError as err:
        reason = err.strerror or str(err)
        raise WriteFailed(
            f"cannot write {path}: {reason} ({_free_space(path.parent)}); "
            f"{path.name} is left as it was"
        ) from err


def _free_space(folder: Path) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free on its filesystem"


def write_text_atomic(path: Path, text: str) -> None:
    with reported_write(path), atomic_open(path, "w") as f:
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
    """metrics.jsonl's rows (none before the first epoch ends), read as ``_jsonl_rows`` does."""
    path = Path(out) / "metrics.jsonl"
    return [json.loads(r) for r in _jsonl_rows(path)] if path.is_file() else []


def write_config(out: Path, requested: dict[str, Any], used: dict[str, Any]) -> None:
    """config.json: ``used`` over ``requested`` at the top level, ``requested`` apart."""
    write_json(out / "config.json", {**requested, **used, REQUESTED_KEY: requested})


def _jsonl_rows(path: Path) -> list[str]:
    """The rows of a JSON-lines file. A torn last line (a kill or a full disk in the middle of
    an append by an older cnnzoo, which wrote in place) is dropped; a bad line before it is
    damage that no write of ours leaves, and an error naming the file."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    for i, line in enumerate(lines):
        try:
            json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                return lines[:-1]
            raise UserError(f"{path} line {i + 1} is not JSON; the file is damaged") from None
    return lines


def append_jsonl(path: Path, row: dict[str, Any]) -> None:
    """Add a row by rewriting the file (temp file + rename; it holds one row per epoch): a kill
    leaves the old file or the new one, and a full disk is a ``WriteFailed`` that keeps it."""
    rows = _jsonl_rows(path) if path.is_file() else []
    write_text_atomic(path, "".join(r + "\n" for r in [*rows, json.dumps(row)]))


# ---- the run directory's life: create, refuse, detect a kill, clean up, resume ---------------

# The files a run writes atomically (temp file + rename), whose temp files a kill can leave.
RUN_FILES = (
    "last.pt",
    "best.pt",
    "config.json",
    "metrics.jsonl",
    "metrics.csv",
    "summary.json",
    GRADFLOW_FILE,
)


def stale_temp_files(out: Path) -> list[Path]:
    """Temp files of saves cut short by a kill."""
    return [p for name in RUN_FILES for p in out.glob(f".{name}.*.tmp")]


def has_run_files(out: Path) -> bool:
    """Anything in ``out`` besides temp files of a run killed before it wrote a file."""
    stale = set(stale_temp_files(out))
    return any(p not in stale for p in out.iterdir())


def read_config(run: Path) -> dict[str, Any]:
    """A run's config.json as a dict; ``UserError`` when it is missing or not one."""
    path = Path(run) / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    if not isinstance(cfg, dict):
        raise UserError(f"{path} is not a cnnzoo run configuration")
    return cfg


def requested_part(config: dict[str, Any], path: Path) -> dict[str, Any]:
    """The configuration as asked for, from a config.json's contents (read from ``path``), which
    a resume rebuilds; a config.json written before cnnzoo kept it apart gives its used values,
    as resumes then did."""
    requested = config.get(REQUESTED_KEY, config)
    if not isinstance(requested, dict):
        raise UserError(f"{path} is not a cnnzoo run configuration")
    return requested


def truncate_jsonl(path: Path, last_epoch: int) -> None:
    """Keep the rows of a per-epoch JSON-lines file up to ``last_epoch`` (the resume point)."""
    if path.is_file():
        kept = [r for r in _jsonl_rows(path) if json.loads(r)["epoch"] <= last_epoch]
        write_text_atomic(path, "".join(r + "\n" for r in kept))


def prepare_out_dir(out: Path, dist: DistInfo, resuming: bool) -> Path:
    """Create the run directory on rank 0 and remove stale temp files; never reuse a non-empty
    one unless resuming."""
    if not resuming and out.exists() and (not out.is_dir() or has_run_files(out)):
        raise UserError(
            f"{out} already exists; pass --resume {out} to continue it, or another --out"
        )
    barrier(dist)  # every rank has checked before rank 0 creates anything
    if dist.is_main:
        require_writable(out, create=True)
        for stale in stale_temp_files(out):
            stale.unlink(missing_ok=True)
    barrier(dist)
    return out


@dataclass(frozen=True)
class RunDir:
    """One run directory, read: what it holds and whether it finished. Every command that reads
    runs (compare, report, gradflow) goes through it."""

    path: Path

    def file(self, name: str) -> Path:
        return self.path / name

    def is_run(self) -> bool:
        """A training run's folder (its configuration and at least its metrics file)."""
        return self.file("config.json").is_file() and self.file("metrics.jsonl").is_file()

    def is_finished(self) -> bool:
        return self.file("summary.json").is_file() and self.file("config.json").is_file()

    def has_checkpoint(self) -> bool:
        return self.file("last.pt").is_file()

    def killed_before_first_checkpoint(self) -> bool:
        """Its config.json but no last.pt yet: stopped during epoch 1."""
        return not self.file("last.pt").exists() and self.file("config.json").is_file()

    def config(self) -> dict[str, Any]:
        """config.json: the values the run used (and, under ``REQUESTED_KEY``, the asked-for
        configuration)."""
        return read_config(self.path)

    def summary(self) -> dict[str, Any] | None:
        """summary.json, or None while the run has not finished."""
        path = self.file("summary.json")
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read {path}: {err}") from None

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.path)

    def gradflow(self) -> list[dict[str, Any]] | None:
        """The gradflow.jsonl rows, or None when the run did not record them."""
        path = self.file(GRADFLOW_FILE)
        if not path.is_file():
            return None
        return [json.loads(line) for line in _jsonl_rows(path)]
