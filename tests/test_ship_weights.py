"""scripts/ship_weights.py: a finished run's weights, measured again as shipped, written with a
manifest entry (here into a temporary folder: the test never touches the package's weights)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cnnzoo.models import weights as W
from cnnzoo.train import TrainConfig, train
from cnnzoo.train.engine import TTA
from helpers import ROOT, TINY_FASTNET_RUN


def _script():
    spec = importlib.util.spec_from_file_location("ship", ROOT / "scripts" / "ship_weights.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _package_weights() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(W.WEIGHTS_DIR.iterdir()) if p.is_file()}


def test_ships_a_run_with_all_its_views_into_the_weights_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    views = {"tta": True, "tta_shift": 1, "tta_grid": True, "tta_fraction": 0.5}
    train(TrainConfig(**TINY_FASTNET_RUN, epochs=1, threads=1, **views, out=str(run)))
    summary = json.loads((run / "summary.json").read_text())
    package = _package_weights()
    dest = tmp_path / "weights"
    dest.mkdir()
    other = {"resnet20": {"cifar10": {"file": "resnet20-cifar10.safetensors", "sha256": "ab"}}}
    (dest / "manifest.json").write_text(json.dumps(other))

    mod = _script()
    asked: list[TTA] = []
    measure = mod.evaluate_checkpoint

    def spy(*args, **kwargs):
        asked.append(args[3])
        return measure(*args, **kwargs)

    monkeypatch.setattr(mod, "evaluate_checkpoint", spy)
    argv = [str(run), "--recipe", "tiny", "--command", "cnnzoo train fastnet ...", "--data"]
    mod.main([*argv, "synthetic", "--weights-dir", str(dest)])

    assert asked == [TTA(True, 1, True, 0.5)]  # grid and fraction too, not just flip and shift
    table = json.loads((dest / "manifest.json").read_text())
    assert table["resnet20"] == other["resnet20"]  # other entries kept
    entry = table["fastnet"]["cifar10"]
    _, meta = W.read_weights(dest / entry["file"], sha256=entry["sha256"])
    # the same weights and views as the run's own test: the same accuracy
    assert meta["test_acc"] == pytest.approx(summary["test_acc"], abs=1e-9)
    assert meta["run_test_acc"] == summary["test_acc"] and meta["data"] == "synthetic"
    assert entry["sha256"][:16] in capsys.readouterr().out
    assert _package_weights() == package
