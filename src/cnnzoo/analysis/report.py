"""One self-contained report (HTML or Markdown) from run and experiment directories.

HTML embeds every figure as a base64 PNG, so the single file opens anywhere without network or
the source folders. Markdown links its figures, copied into ``<report>_files/`` beside it.

What is collected from each directory given:

* a training run (``config.json`` + ``metrics.jsonl``): the configuration, the summary, the
  training curves, the gradient flow (``gradflow.jsonl``) and the confusion matrix of
  ``cnnzoo eval`` (``eval/confusion.png`` or ``.csv``);
* an experiment (``summary.json`` of ``compare`` or ``degradation``, or any folder of figures,
  e.g. ``cnnzoo gradflow --out``): its ``summary.md``, every figure, then each run in ``runs/``.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnnzoo.errors import UserError
from cnnzoo.train.rundir import RunDir, write_text_atomic

CONFIG_KEYS = (
    "model",
    "model_kwargs",
    "dataset",
    "epochs",
    "batch_size",
    "lr",
    "schedule",
    "weight_decay",
    "momentum",
    "augment",
    "val",
    "subset",
    "train_images",
    "seed",
    "device",
    "precision",
    "torch",
)
SUMMARY_KEYS = (
    "best_val_acc",
    "best_epoch",
    "test_acc",
    "test_acc_last",
    "test_loss",
    "train_seconds",
    "mean_img_per_s",
    "params",
)


@dataclass
class Block:
    """One piece of the report: kind is h1/h2/h3, text, markdown, code, table or figure."""

    kind: str
    text: str = ""
    rows: list[list[str]] | None = None
    path: Path | None = None
    run: bool = False  # a heading that opens one training run (the contents count them)


def is_run(path: Path) -> bool:
    return RunDir(path).is_run()


def _kv_table(d: dict[str, Any], keys: tuple[str, ...]) -> list[list[str]]:
    rows = [["setting", "value"]]
    for k in keys:
        if k in d and d[k] is not None:
            v = d[k]
            if isinstance(v, float):
                v = f"{v:.4g}"
            rows.append([k, str(v)])
    return rows


def data_line(config: dict[str, Any]) -> str:
    """What a run trained on: the archive's path and md5, the folder's path, or 'synthetic:N'."""
    source = config.get("data_source")
    if not source:
        return "data: not recorded (a run from before cnnzoo recorded its data source)"
    md5 = config.get("data_md5")
    return f"data: `{source}`" + (f" (md5 `{md5}`)" if md5 else "")


def run_blocks(run: Path, assets: Path, level: str = "h2") -> list[Block]:
    """Config, summary, curves, gradient flow and confusion matrix of one training run."""
    from cnnzoo.analysis.compare import Run, plot_curves

    rundir = RunDir(run)
    config, summary = rundir.config(), rundir.summary() or {}
    model = config.get("model", run.name)
    blocks = [Block(level, f"run {run.name}: {model}", run=True), Block("text", data_line(config))]
    blocks.append(Block("table", rows=_kv_table(config, CONFIG_KEYS)))
    if summary:
        blocks.append(Block("table", rows=_kv_table(summary, SUMMARY_KEYS)))
    else:
        blocks.append(Block("text", "no summary.json: the run has not finished"))
    history = rundir.metrics()
    stem = _slug(str(run))
    if history:
        r = Run(run, model, int(config.get("seed", 0)), config, history, summary)
        png = plot_curves({model: [r]}, assets / f"{stem}-curves.png", title=f"{model}")[0]
        blocks.append(Block("figure", f"{model}: training curves per epoch", path=png))
    if rundir.gradflow() is not None:
        from cnnzoo.analysis.gradflow import describe, plot_run_epochs, read_run_gradflow

        gmodel, grows = read_run_gradflow(run)
        png = plot_run_epochs(gmodel, grows, assets / f"{stem}-gradflow.png")[0]
        blocks.append(Block("figure", f"{gmodel}: conv gradient norms per epoch", path=png))
        first, last = grows[0], grows[-1]
        blocks.append(Block("code", describe({f"{gmodel} epoch {first['epoch']}": first})))
        if last is not first:
            blocks.append(Block("code", describe({f"{gmodel} epoch {last['epoch']}": last})))
    conf_png, conf_csv = run / "eval" / "confusion.png", run / "eval" / "confusion.csv"
    if conf_png.is_file():
        blocks.append(Block("figure", f"{model}: test confusion matrix", path=conf_png))
    elif conf_csv.is_file():
        rows = [line.split(",") for line in conf_csv.read_text().splitlines() if line]
        blocks.append(Block("h3", "test confusion matrix (rows: true, columns: predicted)"))
        blocks.append(Block("table", rows=rows))
    return blocks


def experiment_blocks(folder: Path, assets: Path) -> list[Block]:
    """summary.md, every figure in the folder, then each run under runs/."""
    kind = "figures"
    if (folder / "summary.json").is_file():
        try:
            kind = json.loads((folder / "summary.json").read_text()).get("kind", "experiment")
        except (ValueError, AttributeError):
            kind = "experiment"
    blocks = [Block("h1", f"{kind}: {folder}")]
    if (folder / "summary.md").is_file():
        blocks.append(Block("markdown", (folder / "summary.md").read_text()))
    for png in sorted(folder.glob("*.png")):
        blocks.append(Block("figure", png.stem.replace("-", " "), path=png))
    runs_dir = folder / "runs"
    if runs_dir.is_dir():
        for run in sorted(p for p in runs_dir.iterdir() if is_run(p)):
            blocks += run_blocks(run, assets, level="h2")
    return blocks


def collect(paths: list[str | Path], assets: Path) -> list[Block]:
    blocks: list[Block] = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise UserError(f"{p} is not a directory")
        if is_run(p):
            blocks += run_blocks(p, assets, level="h1")
        elif (p / "summary.json").is_file() or any(p.glob("*.png")):
            blocks += experiment_blocks(p, assets)
        else:
            raise UserError(
                f"{p} is neither a run directory (config.json + metrics.jsonl) nor an "
                "experiment folder (summary.json or figures)"
            )
    return blocks


def build_report(paths: list[str | Path], out: str | Path, title: str = "cnnzoo report") -> Path:
    """Write the report; ``.html``/``.htm`` gives self-contained HTML, ``.md`` Markdown."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".html", ".htm", ".md"):
        raise UserError(f"-o {out}: the report must end in .html or .md")
    if not paths:
        raise UserError("name at least one run or experiment directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".md":
        assets = out.parent / f"{out.stem}_files"
        assets.mkdir(exist_ok=True)
        blocks = collect(paths, assets)
        write_text_atomic(out, to_markdown(blocks, title, out.parent, assets))
        return out
    with tempfile.TemporaryDirectory() as tmp:
        blocks = collect(paths, Path(tmp))
        write_text_atomic(out, to_html(blocks, title))
    return out


# ---- rendering ------------------------------------------------------------------------------

CSS = """
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f0f0f0; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.9em; color: #555; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
h1 { border-bottom: 2px solid #ddd; margin-top: 1.6em; } h2 { margin-top: 1.4em; }
nav ul { list-style: none; padding-left: 0; } nav li.h2 { padding-left: 1.5em; }
"""


def _inline(text: str) -> str:
    """Escape, then **bold** and `code`."""
    t = html.escape(text)
    t = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", t)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", t)


def _table_html(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{_inline(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>\n" for r in rows[1:]
    )
    return f"<table>\n<tr>{head}</tr>\n{body}</table>\n"


def _markdown_html(md: str) -> str:
    """The small Markdown subset the summaries use: headings, pipe tables, lists, paragraphs."""
    out: list[str] = []
    table: list[list[str]] = []
    items: list[str] = []

    def flush() -> None:
        if table:
            out.append(_table_html(table))
            table.clear()
        if items:
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in items) + "</ul>\n")
            items.clear()

    for line in md.splitlines():
        s = line.strip()
        if s.startswith("|"):
            cells = [c.strip() for c in s.strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                table.append(cells)
            continue
        if s.startswith("- "):
            items.append(s[2:])
            continue
        flush()
        if s.startswith("#"):
            level = min(6, len(s) - len(s.lstrip("#")) + 1)
            out.append(f"<h{level}>{_inline(s.lstrip('#').strip())}</h{level}>\n")
        elif s:
            out.append(f"<p>{_inline(s)}</p>\n")
    flush()
    return "".join(out)


def _contents(blocks: list[Block]) -> str:
    """A short table of contents (the h1 and h2 headings, linked to their ``id=sec-N``) when the
    report holds several runs; nothing for a single run."""
    if sum(b.run for b in blocks) < 2:
        return ""
    items = [
        f"<li class='{b.kind}'><a href='#sec-{i}'>{html.escape(b.text)}</a></li>\n"
        for i, b in enumerate(blocks)
        if b.kind in ("h1", "h2")
    ]
    return "<nav>\n<h2>Contents</h2>\n<ul>\n" + "".join(items) + "</ul>\n</nav>\n"


def to_html(blocks: list[Block], title: str) -> str:
    parts = [
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n",
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n",
        f"<h1>{html.escape(title)}</h1>\n",
        _contents(blocks),
    ]
    for i, b in enumerate(blocks):
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"<{b.kind} id='sec-{i}'>{html.escape(b.text)}</{b.kind}>\n")
        elif b.kind == "text":
            parts.append(f"<p>{_inline(b.text)}</p>\n")
        elif b.kind == "code":
            parts.append(f"<pre>{html.escape(b.text)}</pre>\n")
        elif b.kind == "markdown":
            parts.append(_markdown_html(b.text))
        elif b.kind == "table" and b.rows:
            parts.append(_table_html(b.rows))
        elif b.kind == "figure" and b.path is not None:
            data = base64.b64encode(b.path.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(b.text)}'>"
                f"<figcaption>{html.escape(b.text)}</figcaption></figure>\n"
            )
    parts.append("</body>\n</html>\n")
    return "".join(parts)


def to_markdown(blocks: list[Block], title: str, base: Path, assets: Path) -> str:
    parts = [f"# {title}\n"]
    for i, b in enumerate(blocks):
        if b.kind in ("h1", "h2", "h3"):
            parts.append(f"\n{'#' * (int(b.kind[1]) + 1)} {b.text}\n")
        elif b.kind == "text":
            parts.append(f"\n{b.text}\n")
        elif b.kind == "code":
            parts.append(f"\n```\n{b.text}\n```\n")
        elif b.kind == "markdown":  # demote its headings below the section's
            parts.append("\n" + re.sub(r"^#", "###", b.text, flags=re.M))
        elif b.kind == "table" and b.rows:
            head, *rest = b.rows
            parts.append("\n| " + " | ".join(head) + " |\n|" + "---|" * len(head) + "\n")
            parts.append("".join("| " + " | ".join(r) + " |\n" for r in rest))
        elif b.kind == "figure" and b.path is not None:
            src = b.path
            if assets not in src.parents:  # copy outside figures in, so the report travels
                src = assets / f"{i:03d}-{_slug(str(b.path.parent))}-{b.path.name}"
                shutil.copyfile(b.path, src)
            parts.append(f"\n![{b.text}]({src.relative_to(base).as_posix()})\n")
    return "".join(parts)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_")[-80:]
