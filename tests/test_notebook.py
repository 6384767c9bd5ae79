"""examples/cnn_architectures.ipynb: executed headless, top to bottom, on generated data with the
tiny budget (so it never rots), and committed without outputs (so nothing stale is shown)."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from helpers import ROOT, cnnzoo_env

NOTEBOOK = ROOT / "examples" / "cnn_architectures.ipynb"
FIGURES = 5  # comparison curves, gradient flow of each of the 2 runs, at initialisation, zoo


def test_committed_notebook_is_stripped() -> None:
    """No outputs, no execution counts: what is committed is the lesson, not one run of it."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert len(code) >= 10
    stale = [i for i, c in enumerate(code) if c.outputs or c.execution_count is not None]
    assert not stale, f"code cells {stale} hold outputs: clear them before committing"
    assert nb.metadata.kernelspec.name == "python3"
    # the budget is one variable at the top, and CI can set it and the data from outside
    first = code[0].source
    assert 'BUDGET = os.environ.get("CNNZOO_NOTEBOOK_BUDGET", "small")' in first
    assert 'DATA = os.environ.get("CNNZOO_NOTEBOOK_DATA") or None' in first


@pytest.mark.slow
def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ipykernel.kernelspec import write_kernel_spec

    # the kernel is this interpreter (the venv's), whatever other kernelspecs the machine has
    write_kernel_spec(tmp_path / "jupyter" / "kernels" / "python3")
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    work = tmp_path / "work"
    work.mkdir()
    nb = nbformat.read(NOTEBOOK, as_version=4)
    env = cnnzoo_env({"CNNZOO_NOTEBOOK_BUDGET": "tiny", "CNNZOO_NOTEBOOK_DATA": "synthetic:512"})
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(work)}}
    )
    client.execute(env=env)  # a cell that raises fails here (CellExecutionError)

    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    pngs = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == FIGURES
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    # tqdm.auto drew epoch bars: a widget where ipywidgets is installed, else tqdm's text bar
    widget = "application/vnd.jupyter.widget-view+json"
    assert any(widget in o.get("data", {}) for o in outputs) or "%|" in text
    for model in ("resnet32", "plain32"):
        assert f"training {model} on synthetic" in text
    assert text.count("epoch 2/2 lr") == 2  # both runs' last epoch lines
    out = work / "runs" / "notebook-tiny-synthetic"
    summary = json.loads((out / "summary.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["resnet32", "plain32"]
    assert "<nav>" in (out / "report.html").read_text()  # two runs: the report has contents
