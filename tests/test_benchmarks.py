"""The benchmark scripts run and print what their docs promise (tiny sizes, no timing asserts)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from helpers import ROOT, TINY_FASTNET_RUN
from helpers import load_benchmark as _load


def test_throughput_precisions_prints_auto_against_both(capsys: pytest.CaptureFixture) -> None:
    argv = ["--data", "synthetic:64", "--models", "resnet20", "--batch-size", "16"]
    _load("throughput").main([*argv, "--steps", "1", "--warmup", "1", "--precisions"])
    out = capsys.readouterr().out
    assert "device cpu (" in out and "auto -> " in out
    row = next(line for line in out.splitlines() if line.startswith("resnet20"))
    bf16, fp32, auto, ratio = row.split()[1:]
    assert float(bf16) > 0 and float(fp32) > 0 and float(auto) > 0
    assert ratio.endswith("x") and float(ratio[:-1]) > 0


def test_profile_step_splits_a_step_into_categories(capsys: pytest.CaptureFixture) -> None:
    mod = _load("profile_step")
    assert mod.category("aten::convolution_backward") == "conv backward"
    assert mod.category("aten::mkldnn_convolution") == "conv forward"
    assert mod.category("aten::native_batch_norm") == "batch norm"
    assert mod.category("aten::add_") is None
    argv = ["--data", "synthetic:256", "--batch-size", "64", "--steps", "2", "--warmup", "1"]
    assert mod.main([*argv, "--eval-images", "128", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    shares = [
        float(line.split("%")[0].split()[-1])
        for line in out.splitlines()
        if line.startswith("  ") and not line.startswith("    ") and "%" in line
    ]
    assert abs(sum(shares) - 100) < 1.0, out  # every op's time lands in exactly one category
    assert "conv backward" in out and "data path" in out and "evaluation" in out
    other = out.split("the largest uncategorised ops")[1].split("\n\n")[0].splitlines()[1:]
    assert other and all(mod.category(line.split()[0]) is None for line in other), out


def test_eval_speed_prints_each_variant_against_the_first(capsys: pytest.CaptureFixture) -> None:
    mod = _load("eval_speed")
    argv = ["--model", "fastnet_small", "--images", "40", "--seconds", "0.2", "--rounds", "2"]
    assert mod.main([*argv, "--variants", "20:1", "20:0.25", "20:0.25:grid"]) == 0
    out = capsys.readouterr().out
    assert "flip + shifts ±1" in out  # fast-cpu's views
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 20 ")]
    assert [(r[1].strip(), r[2].strip()) for r in rows] == [
        ("1", "recipe"),
        ("0.25", "recipe"),
        ("0.25", "grid"),
    ]
    assert rows[0][4].strip() == "1.00–1.00"  # the first variant against itself, every round
    low, high = map(float, rows[1][4].split("–"))
    assert low <= float(rows[1][5].strip().rstrip("x")) <= high
    with pytest.raises(SystemExit):
        mod.main(["--variants", "20:0"])  # a fraction must be in (0, 1]
    with pytest.raises(SystemExit):
        mod.main(["--variants", "20:1:grit"])


def test_tta_views_reproduces_the_runs_held_out_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from cnnzoo.errors import UserError
    from cnnzoo.train import TrainConfig, train

    run = tmp_path / "r"
    cfg = TrainConfig(**TINY_FASTNET_RUN, epochs=1, tta=True, tta_shift=1, out=str(run))
    held_out = train(cfg).history[-1]["val_acc"]
    mod = _load("tta_views")
    assert mod.main([str(run), "--fractions", "0.5", "--json", str(tmp_path / "v.json")]) == 0
    scores = json.loads((tmp_path / "v.json").read_text())[str(run)]
    # the same views on the same held-out images and weights as the trainer's evaluation
    assert scores["recipe"] == pytest.approx(100 * held_out, abs=1e-9)
    assert {"plain", "flip", "corners", "grid", "recipe+2", "grid@0.5"} <= scores.keys()
    assert "| recipe | " in capsys.readouterr().out
    no_val = tmp_path / "n"
    train(TrainConfig(**{**TINY_FASTNET_RUN, "val": 0}, epochs=1, out=str(no_val)))
    with pytest.raises(UserError, match="held out no images"):
        mod.main([str(no_val)])


def test_heldout_vs_test_pairs_runs_by_seed(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """scripts/heldout_vs_test.py: differences per seed against the first file, their spread
    and correlation (here the test difference is exactly 2x the held-out one: r = 1)."""

    def runs(name: str, accs: dict[int, tuple[float, float]]) -> str:
        rows = [{"seed": s, "val_acc": v, "test_acc": t} for s, (v, t) in accs.items()]
        path = tmp_path / name
        path.write_text(json.dumps({"runs": {"m:r": rows}}))
        return str(path)

    base = runs("base.json", {0: (0.90, 0.90), 1: (0.91, 0.92), 2: (0.92, 0.90), 9: (0.9, 0.9)})
    cand = runs("cand.json", {0: (0.91, 0.92), 1: (0.91, 0.92), 2: (0.925, 0.91), 3: (0.99, 0.99)})
    spec = importlib.util.spec_from_file_location("hvt", ROOT / "scripts" / "heldout_vs_test.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main([base, cand]) == 0
    out = capsys.readouterr().out
    assert f"| {cand} | 3 | +0.50 | +1.00 |" in out  # seeds 0-2 only: 3 and 9 have no pair
    assert "3 pairs: a per-seed difference spreads by 0.50 points held out and 1.00" in out
    assert out.rstrip().endswith("r = 1.00")
    assert mod.main([base]) == 2


@pytest.mark.parametrize(
    "own, warmup",
    [
        ({"epochs": 20}, 0.23 * 20),  # the recipe's share of the run: 2.3 of fast-cpu's 10
        ({"epochs": 11, "warmup_epochs": 2.0}, 2.0),  # given: kept as given
    ],
    ids=["share-kept", "given-kept"],
)
def test_speedrun_warmup_follows_epochs_unless_given(
    own: dict, warmup: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = _load("speedrun")
    seen = []

    class Stop(Exception):
        pass

    def train(cfg: object) -> None:  # the config is all this test needs: no training
        seen.append(cfg)
        raise Stop

    monkeypatch.setattr(mod, "train", train)
    args = mod.build_parser().parse_args(["--set", *(f"{k}={v}" for k, v in own.items())])
    (config,) = mod.configurations(args)
    with pytest.raises(Stop):
        mod.run_one(config, 0, tmp_path, {**mod.shared_overrides(args), **config.own}, 1.0)
    assert seen[0].epochs == own["epochs"] and seen[0].warmup_epochs == pytest.approx(warmup)
