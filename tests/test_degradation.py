"""``cnnzoo degradation``: plain vs residual by depth (He et al. 2015, Figure 6)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from cnnzoo.analysis import degradation as dg
from cnnzoo.train.config import TrainConfig, lr_at
from helpers import run_main

TINY = ["--data", "synthetic", "--subset", "32", "--val", "32", "--batch-size", "16",
        "--epochs", "2", "--precision", "fp32", "--threads", "1", "--quiet"]  # fmt: skip


def test_tiny_study_writes_figure_and_table(tmp_path: Path, capsys) -> None:
    out = tmp_path / "deg"
    code, stdout, err = run_main(
        ["degradation", "--depths", "20", "--out", str(out), *TINY], capsys
    )
    assert code == 0, err
    for name in ("degradation.png", "degradation.svg", "summary.md", "summary.csv"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "degradation" and summary["depths"] == [20]
    assert summary["epochs"] == 2 and summary["subset"] == 32  # explicit flags beat the preset
    assert summary["weight_decay"] == 1e-4  # ... and the preset fills the rest
    rows = {r["model"]: r for r in summary["rows"]}
    # every preset value reaches the runs' configs (the warm-up once did not)
    for model in ("plain20", "resnet20"):
        cfg = json.loads((Path(rows[model]["run"]) / "config.json").read_text())
        assert cfg["warmup_epochs"] == dg.PRESETS["cpu"]["warmup_epochs"] > 0
        assert cfg["lr"] == 0.1 and cfg["schedule"] == "cosine"
        zero_init = cfg["model_kwargs"].get("zero_init_residual", False)
        assert zero_init == (model == "resnet20")  # ResNets only: plain twins keep their init
    assert set(rows) == {"plain20", "resnet20"}
    for model, row in rows.items():
        run = Path(row["run"])
        metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert row["epochs"] == len(metrics) == 2
        assert row["train_error"] == pytest.approx(100 * (1 - metrics[-1]["train_acc"]))
        assert row["val_error"] == pytest.approx(100 * (1 - metrics[-1]["val_acc"]))
        test_acc_last = json.loads((run / "summary.json").read_text())["test_acc_last"]
        assert row["test_error"] == pytest.approx(100 * (1 - test_acc_last))
        assert row["family"] + str(row["depth"]) == model
    with open(out / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    assert "| plain20 |" in stdout and "| resnet20 |" in stdout
    assert "estimated" in err
    # the same folder with another budget's settings: refused, not reused as if it were those
    code, _, err = run_main(["degradation", "--depths", "20", "--out", str(out), *TINY,
                             "--epochs", "3"], capsys)  # fmt: skip
    plan, error = err.splitlines()  # the plan, then one error line
    assert code == 2 and plan.startswith("degradation study:") and error.startswith("error: ")
    assert "epochs 2 there, 3 asked" in error


def test_every_preset_key_is_wired_to_a_flag() -> None:
    from cnnzoo.commands.degradation import PRESET_KEYS

    for preset in dg.PRESETS.values():
        assert set(preset) == set(PRESET_KEYS)


def test_zero_init_can_be_switched_off(tmp_path: Path, capsys) -> None:
    out = tmp_path / "deg"
    argv = ["degradation", "--depths", "20", "--out", str(out), "--no-zero-init-residual"]
    code, _, err = run_main([*argv, *TINY, "--epochs", "1"], capsys)
    assert code == 0, err
    cfg = json.loads((out / "runs" / "resnet20-s0" / "config.json").read_text())
    assert "zero_init_residual" not in cfg["model_kwargs"]


def test_verdict_reads_the_orderings() -> None:
    def rows(fam: str, errs: list[float]) -> list[dict]:
        return [
            {"family": fam, "depth": d, "train_error": e}
            for d, e in zip((20, 32, 44, 56), errs, strict=True)
        ]

    lines = dg.verdict(rows("plain", [5, 6, 7, 8]) + rows("resnet", [8, 7, 6, 5]))
    assert lines[0].startswith(
        "deeper plain nets reach a higher final training error: yes, at every"
    )
    assert lines[1].startswith(
        "deeper resnet nets reach a lower final training error: yes, at every"
    )
    lines = dg.verdict(rows("plain", [5, 7, 6, 8]) + rows("resnet", [5, 6, 7, 8]))
    assert "not at every step" in lines[0] and ": no (" in lines[1]


def test_default_budget_fits_ninety_minutes(capsys) -> None:
    p = dg.PRESETS["cpu"]
    est = dg.estimate_seconds(dg.DEFAULT_DEPTHS, p["epochs"], p["subset"], p["val"])
    assert est <= 90 * 60
    # resnet56 alone: 12 epochs x (10k + 5k/3) images at 180 img/s + 2 test passes at 540 img/s
    one = dg.estimate_seconds([56], 12, 10_000, 5_000) / 2
    assert one == pytest.approx(12 * (10_000 + 5_000 / 3) / 180 + 20_000 / 540)
    code, _, err = run_main(["degradation", "--dry-run"], capsys)
    assert code == 0 and f"estimated {est / 60:.0f} min" in err


def test_paper_budget_is_64k_iterations_with_step_schedule(capsys) -> None:
    p = dg.PRESETS["paper"]
    steps_per_epoch = (50_000 - p["val"]) // p["batch_size"]
    assert abs(p["epochs"] * steps_per_epoch - 64_000) < 500
    cfg = TrainConfig(schedule=p["schedule"], lr=p["lr"])
    total = 64_000
    assert lr_at(cfg, 31_999, total, 351) == pytest.approx(0.1)
    assert lr_at(cfg, 32_000, total, 351) == pytest.approx(0.01)
    assert lr_at(cfg, 48_000, total, 351) == pytest.approx(0.001)
    code, _, err = run_main(["degradation", "--budget", "paper", "--dry-run"], capsys)
    assert code == 0 and "182 epochs" in err and "step schedule" in err
    # its own default folder: the cpu study's runs in runs/degradation are never reused for it
    assert err.rstrip().endswith("-> runs/degradation-paper")
    code, _, err = run_main(["degradation", "--dry-run"], capsys)
    assert err.rstrip().endswith("-> runs/degradation")


def test_he2015_recipe_is_the_papers_64k_iterations() -> None:
    """The paper's 64k iterations at batch 128 on the 45k images its 5k validation split leaves
    (the recipe keeps the trainer's default hold-out of 10%), drops at 32k and 48k; the paper
    budget of the study runs the same schedule."""
    from cnnzoo.train.recipes import RECIPES, recipe_config

    cfg = recipe_config("he2015", "resnet20")
    n_val = cfg.val if cfg.val is not None else 50_000 // 10
    iterations = cfg.epochs * ((50_000 - n_val) // cfg.batch_size)
    assert abs(iterations - 64_000) < 500
    per_epoch = iterations / cfg.epochs
    assert lr_at(cfg, 31_900, iterations, per_epoch) == pytest.approx(0.1)  # drops by 32k...
    assert lr_at(cfg, 32_000, iterations, per_epoch) == pytest.approx(0.01)
    assert lr_at(cfg, 48_000, iterations, per_epoch) == pytest.approx(0.001)  # ... and by 48k
    assert dg.PRESETS["paper"]["epochs"] == RECIPES["he2015"]["epochs"]
    assert dg.PRESETS["paper"]["val"] == n_val


def test_depth_without_a_model_is_a_user_error(capsys) -> None:
    code, _, err = run_main(["degradation", "--depths", "50", "--dry-run"], capsys)
    assert code == 2 and "unknown model 'plain50'" in err
