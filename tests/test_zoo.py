"""The architecture table and the parameters/FLOPs bar chart (``cnnzoo models --plot``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnnzoo.analysis.zoo import architecture_rows, plot_zoo, zoo_markdown
from cnnzoo.commands.models import model_rows
from cnnzoo.errors import UnknownModelError, UserError
from helpers import run_main


def test_models_plot_writes_chart_and_table(tmp_path: Path, capsys) -> None:
    target = tmp_path / "zoo.png"
    code, stdout, err = run_main(["models", "resnet2*", "--plot", str(target)], capsys)
    assert code == 0
    for ext in (".png", ".svg", ".md"):
        path = target.with_suffix(ext)
        assert path.stat().st_size > 0 and f"wrote {path}" in err
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = target.with_suffix(".svg").read_text()
    # every bar is labelled with its value; both panels and their axis labels are there
    assert "270k" in svg and "81.1M" in svg  # resnet20: 269,722 parameters, 81.1 MFLOPs
    assert "parameters (count, log scale)" in svg and "FLOPs per forward pass" in svg
    table = target.with_suffix(".md").read_text()
    assert "| resnet20 | 269,722 |" in table
    assert "resnet20" in stdout


def test_table_has_one_row_per_model_with_year_depth_feature() -> None:
    rows = model_rows("plain*")
    md = zoo_markdown(rows)
    body = [line for line in md.splitlines() if line.startswith("| plain")]
    assert len(body) == len(rows)
    for r, line in zip(rows, body, strict=True):
        assert f"| {r['depth']} | {r['year']} |" in line and r["key_feature"] in line


def test_architecture_rows_keep_the_order_given() -> None:
    """The notebook's table names its own models, in its own order (the reference notebook's)."""
    rows = architecture_rows(["resnet20", "plain20"])
    assert [r["name"] for r in rows] == ["resnet20", "plain20"]
    # option-A shortcuts have no weights: the twins differ only in the skips
    assert rows[0]["params"] == rows[1]["params"] == 269_722
    assert rows[0]["key_feature"] != rows[1]["key_feature"]
    with pytest.raises(UnknownModelError):
        architecture_rows(["resnet21"])


def test_no_rows_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        plot_zoo([], tmp_path / "x.png")
