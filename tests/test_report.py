"""``cnnzoo report``: one self-contained HTML (or Markdown) page from runs and experiments,
checked in a real headless browser when Chromium is installed."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from cnnzoo.analysis.compare import load_run, write_comparison
from cnnzoo.commands.eval import evaluate_checkpoint, write_confusion
from helpers import run_main

TRAIN = ["--record-gradflow", "--data", "synthetic", "--subset", "32", "--val", "32",
         "--batch-size", "16", "--epochs", "2", "--precision", "fp32", "--threads", "1",
         "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished run with gradient flow and a confusion matrix, and a comparison of it."""
    from cnnzoo import cli

    root = tmp_path_factory.mktemp("report")
    run = root / "exp" / "runs" / "resnet20-s0"
    assert cli.main(["train", "resnet20", "--out", str(run), *TRAIN]) == 0
    write_confusion(evaluate_checkpoint(str(run / "best.pt"), device="cpu"), run / "eval")
    write_comparison(root / "exp", [load_run(run)])
    return run, root / "exp"


def test_html_is_self_contained(dirs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run, exp = dirs
    out = tmp_path / "report.html"
    code, _, err = run_main(["report", str(exp), str(run), "-o", str(out)], capsys)
    assert code == 0, err
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    # no reference to anything outside the file (links of the contents stay inside the page)
    assert not re.search(r"(src|href)=['\"](?!data:|#)", page)
    images = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    # comparison curves, then per run (twice: via exp/runs and directly): curves, gradflow,
    # confusion
    assert len(images) == 1 + 2 * 3
    assert all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    for text in ("resnet20", "lr", "test_acc", "conv gradient norms", "confusion matrix",
                 "L2 norm of d(loss)/d(weight)", "<table>"):  # fmt: skip
        assert text in page, text


def test_markdown_links_figures_beside_it(dirs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    run, _ = dirs
    out = tmp_path / "r" / "report.md"
    code, _, _ = run_main(["report", str(run), "-o", str(out)], capsys)
    assert code == 0
    md = out.read_text()
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 3  # curves, gradflow, confusion
    for link in links:
        assert not Path(link).is_absolute() and (out.parent / link).stat().st_size > 0
    assert "| model | resnet20 |" in md


def test_contents_open_a_report_of_several_runs(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    from cnnzoo.analysis.report import build_report

    run, exp = dirs
    single = build_report([run], tmp_path / "one.html").read_text()
    assert "<nav>" not in single  # one run: no contents
    page = build_report([exp, run], tmp_path / "two.html").read_text()
    nav = page[page.index("<nav>") : page.index("</nav>")]
    assert page.index("<nav>") < page.index("<h1 id=")  # the contents come first
    links = re.findall(r"<a href='#([^']+)'>([^<]+)</a>", nav)
    # the experiment, its run, then the run given directly: each link lands on its heading
    assert [text for _, text in links] == [
        f"compare: {exp}",
        "run resnet20-s0: resnet20",
        "run resnet20-s0: resnet20",
    ]
    for anchor, text in links:
        assert re.search(rf"<h[12] id='{anchor}'>{re.escape(text)}</h[12]>", page), anchor


def test_each_run_names_its_data(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    """Generated data is named as such; an archive by path and md5 (tests/test_data.py trains
    on one), and a run from before the source was recorded says so."""
    from cnnzoo.analysis.report import build_report, data_line

    run, _ = dirs
    page = build_report([run], tmp_path / "r.html").read_text()
    # --data synthetic: the generator's default size
    assert "<p>data: <code>synthetic:2000 (generated, seed 0)</code></p>" in page
    md = build_report([run], tmp_path / "r.md").read_text()
    assert "data: `synthetic:2000 (generated, seed 0)`" in md
    assert data_line({"data_source": "/d/c.tar.gz", "data_md5": "ab12"}) == (
        "data: `/d/c.tar.gz` (md5 `ab12`)"
    )
    assert data_line({"data_source": "/d/folder", "data_md5": None}) == "data: `/d/folder`"
    assert "not recorded" in data_line({})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["report", "/nonexistent", "-o", "x.html"], "not a directory"),
        (["report", ".", "-o", "x.pdf"], "must end in .html or .md"),
    ],
)
def test_bad_input(argv: list[str], message: str, capsys) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2 and message in err


def test_empty_folder_is_rejected(tmp_path: Path, capsys) -> None:
    code, _, err = run_main(["report", str(tmp_path), "-o", str(tmp_path / "r.html")], capsys)
    assert code == 2 and "neither a run directory" in err


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_renders_in_headless_chromium(dirs: tuple[Path, Path], tmp_path: Path, capsys) -> None:
    """Chromium loads the page from disk with networking off and paints it: the screenshot
    is a real PNG of the window size, and not a blank page."""
    _, exp = dirs
    page = tmp_path / "report.html"
    assert run_main(["report", str(exp), "-o", str(page)], capsys)[0] == 0
    shot = tmp_path / "shot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2000", page.as_uri()]  # fmt: skip
    subprocess.run(cmd, capture_output=True, timeout=120, check=False)
    assert shot.is_file(), "chromium wrote no screenshot"
    from PIL import Image

    img = Image.open(shot).convert("L")
    assert img.size == (1200, 2000)
    lo, hi = img.getextrema()
    assert hi - lo > 100  # text and figures drawn, not a blank page
    # the embedded figures were decoded and painted: many distinct grey levels, not just text
    assert len(img.getcolors(maxcolors=256) or range(256)) > 50
