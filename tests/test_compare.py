"""``cnnzoo compare``: trains models on one recipe and writes curves and a summary table."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest

from cnnzoo.analysis.compare import (
    Run,
    difference_sentence,
    group_runs,
    load_run,
    summary_rows,
    write_comparison,
)
from cnnzoo.errors import UserError
from helpers import run_main

TINY = ["--data", "synthetic", "--subset", "64", "--val", "64", "--batch-size", "32",
        "--epochs", "2", "--precision", "fp32", "--threads", "1", "--quiet"]  # fmt: skip


@pytest.fixture(scope="module")
def compared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cmp") / "out"
    mp = pytest.MonkeyPatch()
    mp.setenv("CNNZOO_OFFLINE", "1")
    from cnnzoo import cli

    code = cli.main(["compare", "resnet20", "plain20", "--out", str(out), *TINY])
    mp.undo()
    assert code == 0
    return out


def test_compare_writes_every_artifact(compared: Path) -> None:
    out = compared
    for name in ("summary.md", "summary.csv", "summary.json", "curves.png", "curves.svg"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "compare"
    assert [r["model"] for r in summary["models"]] == ["resnet20", "plain20"]
    for row in summary["models"]:
        assert row["params"] == 269_722  # both nets: identical weights, no projection shortcuts
        assert row["flops"] > 0 and row["seeds"] == 1
        assert 0 <= row["test_acc"] <= 1 and 0 <= row["best_val_acc"] <= 1
        assert row["train_seconds"] > 0 and row["img_per_s"] > 0
        # the table holds what the run directory says
        run_summary = json.loads((Path(row["runs"][0]) / "summary.json").read_text())
        assert row["test_acc"] == run_summary["test_acc"]
    with open(out / "summary.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["resnet20", "plain20"]
    md = (out / "summary.md").read_text()
    assert "| resnet20 |" in md and "| plain20 |" in md
    diff = 100 * (summary["models"][0]["test_acc"] - summary["models"][1]["test_acc"])
    assert summary["difference"].startswith(f"skip connections: {diff:+.2f}% test accuracy")
    assert summary["difference"] in md


def test_same_data_order_for_every_model(compared: Path) -> None:
    out = compared
    cfgs = [json.loads((out / "runs" / f"{m}-s0" / "config.json").read_text()) for m in
            ("resnet20", "plain20")]  # fmt: skip
    for key in ("seed", "subset", "val", "epochs", "lr", "batch_size", "data"):
        assert cfgs[0][key] == cfgs[1][key], key


def test_rerun_reuses_finished_runs(compared: Path, capsys) -> None:
    out = compared
    before = (out / "runs" / "resnet20-s0" / "summary.json").stat().st_mtime_ns
    code, _, err = run_main(["compare", "resnet20", "plain20", "--out", str(out), *TINY], capsys)
    assert code == 0
    assert err.count("reusing finished run") == 2
    assert (out / "runs" / "resnet20-s0" / "summary.json").stat().st_mtime_ns == before


def test_rerun_with_another_configuration_is_refused(compared: Path, capsys) -> None:
    """A finished run is reused only for the experiment it ran: other epochs or lr are one error
    line naming them; runtime options (threads, precision) do not make another experiment."""
    out = compared
    before = (out / "runs" / "resnet20-s0" / "summary.json").stat().st_mtime_ns
    argv = ["compare", "resnet20", "plain20", "--out", str(out), *TINY]
    code, _, err = run_main([*argv, "--epochs", "3", "--lr", "0.05"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "resnet20-s0 was trained with another configuration" in err
    assert "epochs 2 there, 3 asked" in err and "lr 0.1 there, 0.05 asked" in err
    assert "another --out" in err
    assert (out / "runs" / "resnet20-s0" / "summary.json").stat().st_mtime_ns == before
    code, _, err = run_main([*argv, "--threads", "2", "--precision", "bf16"], capsys)
    assert code == 0 and err.count("reusing finished run") == 2


def test_same_experiment_check_reads_old_and_defaulted_configs(tmp_path: Path) -> None:
    from cnnzoo.analysis.compare import check_same_experiment
    from cnnzoo.train.config import TrainConfig
    from cnnzoo.train.rundir import RunDir

    stored = {**TrainConfig(model="resnet20", epochs=5).to_dict(), "val": 5000}
    del stored["cutmix"]  # a run older than a field ran with its default
    (tmp_path / "config.json").write_text(json.dumps(stored))
    run = RunDir(tmp_path)
    # val None asks for the default split, whose size config.json holds resolved: not compared
    check_same_experiment(run, TrainConfig(model="resnet20", epochs=5, device="cpu"))
    check_same_experiment(run, TrainConfig(model="resnet20", epochs=5, val=5000))
    with pytest.raises(UserError, match=r"val 5000 there, 0 asked; cutmix 0.0 there, 1.0 asked"):
        check_same_experiment(run, TrainConfig(model="resnet20", epochs=5, val=0, cutmix=1.0))
    with pytest.raises(UserError, match="model 'resnet20' there, 'plain20' asked"):
        check_same_experiment(run, TrainConfig(model="plain20", epochs=5))


def test_same_experiment_check_compares_the_asked_for_split(tmp_path: Path) -> None:
    """A config.json that keeps the configuration as asked for: a run trained with --val 0 is
    not the default 10% split, though the used value (0) says nothing about what None means."""
    from cnnzoo.analysis.compare import check_same_experiment
    from cnnzoo.train.config import TrainConfig
    from cnnzoo.train.rundir import RunDir, write_config

    asked = TrainConfig(model="resnet20", epochs=5, val=0).to_dict()
    write_config(tmp_path, asked, {"val": 0, "device": "cpu"})
    run = RunDir(tmp_path)
    check_same_experiment(run, TrainConfig(model="resnet20", epochs=5, val=0))
    with pytest.raises(UserError, match="val 0 there, None asked"):
        check_same_experiment(run, TrainConfig(model="resnet20", epochs=5))


def test_existing_runs_given_with_runs(compared: Path, tmp_path: Path, capsys) -> None:
    out = compared
    runs = [str(out / "runs" / "plain20-s0"), str(out / "runs" / "resnet20-s0")]
    code, _, _ = run_main(["compare", "--runs", *runs, "--out", str(tmp_path)], capsys)
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["model"] for r in summary["models"]] == ["plain20", "resnet20"]
    # named resnet minus plain even when plain came first
    assert summary["difference"].startswith("skip connections:")
    assert "(resnet20 vs plain20" in summary["difference"]


def _fake_run(tmp: Path, model: str, seed: int, test_acc: float, curve: list[float]) -> Run:
    d = tmp / f"{model}-{seed}"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model": model, "seed": seed, "model_kwargs": {}}))
    summary = {"test_acc": test_acc, "best_val_acc": test_acc, "train_seconds": 10.0,
               "mean_img_per_s": 100.0}  # fmt: skip
    (d / "summary.json").write_text(json.dumps(summary))
    rows = [{"epoch": i + 1, "train_loss": 1 - a, "train_acc": a, "val_acc": a}
            for i, a in enumerate(curve)]  # fmt: skip
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return load_run(d)


def test_seeds_give_mean_and_std(tmp_path: Path) -> None:
    runs = [
        _fake_run(tmp_path, "resnet20", 0, 0.90, [0.5, 0.7]),
        _fake_run(tmp_path, "resnet20", 1, 0.92, [0.6, 0.8]),
        _fake_run(tmp_path, "plain20", 0, 0.85, [0.4, 0.6]),
        _fake_run(tmp_path, "plain20", 1, 0.87, [0.5, 0.7]),
    ]
    result = write_comparison(tmp_path / "out", runs)
    r20, p20 = result["rows"]
    assert r20["seeds"] == 2 and math.isclose(r20["test_acc"], 0.91)
    assert math.isclose(r20["test_acc_std"], math.sqrt(2 * 0.01**2))  # sample std of .90, .92
    assert math.isclose(result["rows"][0]["test_acc"] - p20["test_acc"], 0.05)
    assert result["sentence"].startswith("skip connections: +5.00% test accuracy")
    assert "standard error over 2 and 2 seeds" in result["sentence"]
    assert "91.00 ± 1.41" in (tmp_path / "out" / "summary.md").read_text()
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0


def test_difference_between_unrelated_models_is_named_plainly() -> None:
    rows = [{"model": "vgg11", "test_acc": 0.9, "seeds": 1, "test_acc_std": 0.0},
            {"model": "resnet20", "test_acc": 0.8, "seeds": 1, "test_acc_std": 0.0}]  # fmt: skip
    assert difference_sentence(rows).startswith("vgg11 instead of resnet20: +10.00%")
    assert difference_sentence(rows[:1]) == ""


def test_duplicate_seed_is_an_error(tmp_path: Path) -> None:
    a = _fake_run(tmp_path, "resnet20", 0, 0.9, [0.5])
    with pytest.raises(UserError, match="same seed"):
        write_comparison(tmp_path / "out", [a, a])
    with pytest.raises(UserError, match="same seed"):  # as group_runs says
        group_runs([a, a])
    assert summary_rows({"resnet20": [a]})[0]["seeds"] == 1


def test_summary_counts_flops_at_the_runs_image_size(tmp_path: Path) -> None:
    from cnnzoo.models import count_flops, count_params, create_model

    run = _fake_run(tmp_path, "resnet20", 0, 0.9, [0.5])
    run.config["image_size"] = 64
    row = summary_rows({"resnet20": [run]})[0]
    net = create_model("resnet20")
    assert row["flops"] == count_flops(net, (1, 3, 64, 64)) > 3.9 * count_flops(net)
    assert row["params"] == count_params(net)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["compare", "resnet20"], "at least two"),
        (["compare", "resnet20", "nosuchnet"], "unknown model"),
        (["compare", "resnet20", "plain20", "--seeds", "0"], "--seeds"),
        (["compare", "resnet20", "--runs", "/nonexistent/run"], "not a finished run"),
    ],
)
def test_bad_input_is_one_error_line(argv: list[str], message: str, capsys) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert err.startswith("error:") and message in err and err.count("\n") == 1


def test_runs_record_their_class_count(compared: Path) -> None:
    """compare sizes each model from the run's recorded class count, not the dataset's name."""
    configs = [json.loads(p.read_text()) for p in compared.rglob("config.json")]
    assert configs and all(c["num_classes"] == 10 for c in configs)


def test_a_run_killed_before_its_first_checkpoint_is_started_again(tmp_path: Path) -> None:
    """Its leftovers, folders included (tensorboard/), must not make the rerun refuse it."""
    from cnnzoo import cli

    dead = tmp_path / "out" / "runs" / "resnet20-s0"
    (dead / "tensorboard").mkdir(parents=True)
    (dead / "tensorboard" / "events.out").write_text("x")
    (dead / "config.json").write_text("{}")
    argv = [
        "compare",
        "resnet20",
        "plain20",
        "--out",
        str(tmp_path / "out"),
        *TINY,
        "--epochs",
        "1",
    ]
    assert cli.main(argv) == 0
    assert json.loads((dead / "summary.json").read_text())["epochs"] == 1
