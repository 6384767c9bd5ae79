"""The training engine on the synthetic dataset: run files, resume, selection, errors."""

from __future__ import annotations

import contextlib
import csv
import itertools
import json
import math
from pathlib import Path

import pytest
import torch

from cnnzoo.cli import main
from cnnzoo.errors import TrainingDiverged, UserError
from cnnzoo.train import TrainConfig, load_checkpoint, train
from cnnzoo.train.config import lr_at
from cnnzoo.train.rundir import RunDir

SMALL = dict(
    model="resnet20",
    data="synthetic",
    subset=256,
    val=100,
    batch_size=64,
    precision="fp32",
    quiet=True,
)
TINY = {**SMALL, "subset": 128, "val": 64}  # two steps per epoch


def test_cli_train_then_eval(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "R"
    assert (
        main(
            [
                "train",
                "resnet20",
                "--data",
                "synthetic",
                "--epochs",
                "2",
                "--out",
                str(out),
                "--quiet",
            ]
        )
        == 0
    )
    for name in (
        "config.json",
        "metrics.jsonl",
        "metrics.csv",
        "last.pt",
        "best.pt",
        "summary.json",
    ):
        assert (out / name).is_file(), name
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert list(rows[0]) == [
        "epoch",
        "lr",
        "train_loss",
        "train_acc",
        "val_loss",
        "val_acc",
        "seconds",
        "img_per_s",
        "images",
    ]
    # metrics.csv drops a key its columns lack (rundir.METRIC_COLUMNS): the trainer's rows and
    # the columns must name the same keys, in the same order
    jsonl = [json.loads(r) for r in (out / "metrics.jsonl").read_text().splitlines()]
    assert list(jsonl[0]) == list(rows[0])
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "resnet20" and config["val"] == 200  # 10% of 2,000, resolved
    summary = json.loads((out / "summary.json").read_text())
    assert 0 <= summary["test_acc"] <= 1
    capsys.readouterr()
    assert main(["eval", str(out / "best.pt"), "--data", "synthetic", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"accuracy", "per_class", "confusion"}
    confusion = torch.tensor(result["confusion"])
    assert confusion.shape == (10, 10) and confusion.sum().item() == 500
    assert result["accuracy"] == pytest.approx(confusion.diag().sum().item() / 500)
    assert result["accuracy"] == pytest.approx(summary["test_acc"])
    assert (out / "eval" / "confusion.csv").is_file()
    assert (out / "eval" / "confusion.png").stat().st_size > 0


def test_learns_the_synthetic_task(tmp_path: Path) -> None:
    result = train(
        TrainConfig(**{**SMALL, "subset": None, "val": 200}, epochs=3, out=str(tmp_path / "r"))
    )
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.test_acc > 0.3  # chance is 0.1


def test_resume_gives_identical_weights(tmp_path: Path) -> None:
    """2 epochs in one go == 1 epoch, stop, resume, 1 more epoch (fp32 on the CPU)."""
    straight = train(TrainConfig(**SMALL, epochs=2, out=str(tmp_path / "a")))
    first = train(TrainConfig(**SMALL, epochs=2, stop_after=1, out=str(tmp_path / "b")))
    assert first.test_acc is None and len(first.history) == 1
    resumed = train(TrainConfig(quiet=True), resume=tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert a["optimizer"]["param_groups"][0]["lr"] == b["optimizer"]["param_groups"][0]["lr"]
    keys = ("epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc")
    assert [[r[k] for k in keys] for r in resumed.history] == [
        [r[k] for k in keys] for r in straight.history
    ]
    rows = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == [1, 2]


def test_best_checkpoint_is_chosen_on_validation(tmp_path: Path) -> None:
    result = train(TrainConfig(**SMALL, epochs=2, out=str(tmp_path / "r")))
    best = load_checkpoint(tmp_path / "r" / "best.pt")
    val_accs = [r["val_acc"] for r in result.history]
    assert best["val_acc"] == max(val_accs)
    assert best["epoch"] == result.best_epoch == 1 + val_accs.index(max(val_accs))
    assert "optimizer" not in best  # best.pt holds weights and metadata only


def test_val_every_skips_validation_but_not_the_last_epoch(tmp_path: Path) -> None:
    every = train(TrainConfig(**SMALL, epochs=3, val_every=2, out=str(tmp_path / "a")))
    each = train(TrainConfig(**SMALL, epochs=3, out=str(tmp_path / "b")))
    assert [r["val_acc"] is None for r in every.history] == [True, False, False]
    # skipping a pass changes no weight: the evaluated epochs score exactly as before
    assert [r["val_acc"] for r in every.history[1:]] == [r["val_acc"] for r in each.history[1:]]
    assert every.test_acc_last == each.test_acc_last
    scores = {2: every.history[1]["val_acc"], 3: every.history[2]["val_acc"]}
    assert every.best_epoch == max(scores, key=lambda e: (scores[e], -e))
    assert load_checkpoint(tmp_path / "a" / "best.pt")["epoch"] == every.best_epoch


def test_no_validation_set(tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    cfg = TrainConfig(**{**SMALL, "val": 0, "quiet": False}, epochs=1, out=str(tmp_path / "r"))
    result = train(cfg)
    assert result.best_val_acc is None and result.history[0]["val_acc"] is None
    assert result.test_acc == result.test_acc_last
    done = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("done:")]
    assert len(done) == 1 and done[0].startswith("done: test acc ")  # no "best val acc nan"


def test_non_finite_weights_at_an_epochs_end_keep_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    """Without validation nothing evaluates the weights before the epoch's save: a last step
    that overflows them (its loss, computed before the update, was finite) must not be saved."""
    import cnnzoo.train.trainer as trainer

    real, calls = trainer.train_epoch, []

    def overflows_in_epoch_2(model, *args, **kwargs):
        stats = real(model, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                next(model.parameters()).fill_(math.inf)
        return stats

    monkeypatch.setattr(trainer, "train_epoch", overflows_in_epoch_2)
    out = tmp_path / "r"
    with pytest.raises(TrainingDiverged, match="weights became non-finite in epoch 2"):
        train(TrainConfig(**{**TINY, "val": 0}, epochs=2, out=str(out)))
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert load_checkpoint(out / "best.pt")["epoch"] == 1
    assert all(v.isfinite().all() for v in load_checkpoint(out / "last.pt")["model"].values())
    assert not (out / "summary.json").exists()


def test_divergence_stops_and_keeps_last_good_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "r"
    train(TrainConfig(**SMALL, epochs=3, stop_after=1, out=str(out)))
    before = (out / "last.pt").read_bytes()
    cfg = load_checkpoint(out / "last.pt")["config"]
    # Poison the run: resume it with an absurd learning rate written into its saved config.
    state = torch.load(out / "last.pt", weights_only=True)
    state["config"] = {**cfg, "lr": 1e6}
    torch.save(state, out / "last.pt")
    before = (out / "last.pt").read_bytes()
    with pytest.raises(TrainingDiverged, match="lower --lr"):
        train(TrainConfig(quiet=True), resume=out)
    assert (out / "last.pt").read_bytes() == before  # nothing overwritten
    assert load_checkpoint(out / "last.pt")["epoch"] == 1


def test_refuses_to_reuse_a_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "r"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(UserError, match="--resume"):
        train(TrainConfig(**SMALL, epochs=1, out=str(out)))
    assert (out / "keep.txt").read_text() == "mine" and len(list(out.iterdir())) == 1


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ({"lr": -1.0}, "--lr"),
        ({"epochs": 0}, "--epochs"),
        ({"batch_size": 10_000}, "larger"),
        ({"model": "nope"}, "unknown model"),
        ({"precision": "fp8"}, "--precision"),
        ({"tta_shift": 9}, "--tta-shift"),
        ({"tta_fraction": 0.0}, "--tta-fraction"),
        ({"tta_fraction": 1.5}, "--tta-fraction"),
        ({"tta_grid": True}, "--tta-grid needs --tta-shift"),
        ({"val_every": 0}, "--val-every"),
        ({"low_res": 24}, "--low-res PX and --low-res-epochs N go together"),
        ({"low_res_epochs": 2}, "--low-res PX and --low-res-epochs N go together"),
        ({"low_res": 32, "low_res_epochs": 2}, "--low-res must be in"),
        ({"seed": -1, "mixup": 0.2}, "--seed must be in"),  # numpy refuses negative seeds
        ({"seed": 2**45}, "--seed must be in"),  # seed × 1,000,003 overflows torch's 64 bits
    ],
)
def test_bad_values_are_user_errors(tmp_path: Path, override: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        train(TrainConfig(**{**SMALL, **override}, out=str(tmp_path / "r")))
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_tta_shift_must_be_below_the_image_size() -> None:
    """The shifted views pad by reflection, which needs fewer pixels than the image side: an
    8 px image folder with --tta-shift 8 is refused up front, not at its first validation."""
    import torch.nn.functional as F

    with pytest.raises(RuntimeError):  # what the first validation would meet
        F.pad(torch.zeros(1, 3, 8, 8), (8, 8, 8, 8), mode="reflect")
    TrainConfig(image_size=9, tta_shift=8).validate()
    with pytest.raises(UserError, match="--tta-shift 8 must be below --image-size 8"):
        TrainConfig(image_size=8, tta_shift=8).validate()


def test_cosine_schedule_with_warmup() -> None:
    cfg = TrainConfig(lr=0.1, warmup_epochs=1)
    lrs = [lr_at(cfg, s, total_steps=100, steps_per_epoch=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert max(lrs) == pytest.approx(0.1) and lrs[-1] < 1e-3
    assert all(a >= b for a, b in itertools.pairwise(lrs[9:]))
    plain = TrainConfig(lr=0.1)
    assert lr_at(plain, 50, 100, 10) == pytest.approx(0.05)
    assert math.isclose(lr_at(TrainConfig(schedule="constant"), 99, 100, 10), 0.1)


def test_record_gradflow(tmp_path: Path) -> None:
    train(TrainConfig(**SMALL, epochs=1, record_gradflow=True, out=str(tmp_path / "r")))
    rows = [json.loads(r) for r in (tmp_path / "r" / "gradflow.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1]
    assert len(rows[0]["layers"]) == 19  # resnet20: 19 convs (option A shortcuts have none)
    assert all(math.isfinite(v) and v > 0 for v in rows[1]["norms"])


def test_bf16_autocast_and_ema_run(tmp_path: Path) -> None:
    result = train(
        TrainConfig(
            **{**SMALL, "precision": "bf16"},
            epochs=1,
            ema=0.9,
            tta=True,
            tta_shift=1,
            alternate_flip=True,
            label_smoothing=0.1,
            cutout=8,
            out=str(tmp_path / "r"),
        )
    )
    assert math.isfinite(result.history[0]["train_loss"])
    assert json.loads((tmp_path / "r" / "config.json").read_text())["precision"] == "bf16"


def test_translate_tta_averages_shifted_views_with_reflection() -> None:
    from cnnzoo.train.engine import TTA, evaluate

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    x, y = torch.randn(5, 3, 8, 8), torch.randint(0, 4, (5,))
    # translated views built independently: view[i] = x[reflect(i + d)] along both axes
    ahead = torch.tensor([1, 2, 3, 4, 5, 6, 7, 6])  # d = +1: index 8 reflects to 6
    behind = torch.tensor([1, 0, 1, 2, 3, 4, 5, 6])  # d = -1: index -1 reflects to 1
    up_left = x[:, :, behind][:, :, :, behind]
    down_right = x[:, :, ahead][:, :, :, ahead]
    with torch.no_grad():
        logits = 0.5 * model(x) + 0.25 * (model(up_left) + model(down_right))
        expected = torch.nn.functional.cross_entropy(logits, y).item()
    res = evaluate(model, [(x, y)], 4, contextlib.nullcontext, TTA(shift=1))
    assert res.loss == pytest.approx(expected, rel=1e-5)
    plain = evaluate(model, [(x, y)], 4, contextlib.nullcontext)
    assert plain.loss != pytest.approx(expected, rel=1e-5)  # the shifted views do count


class _CountingModel(torch.nn.Module):
    """A linear classifier of 3x8x8 images that counts the images it is shown."""

    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
        self.seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return self.net(x)


def test_grid_tta_averages_all_nine_translations_and_their_mirrors() -> None:
    from cnnzoo.train.engine import TTA, evaluate

    torch.manual_seed(0)
    model = _CountingModel()
    x, y = torch.randn(5, 3, 8, 8), torch.randint(0, 4, (5,))
    # view (dy, dx) built independently: rows and columns shifted by d, reflected at the edges
    ahead = torch.tensor([1, 2, 3, 4, 5, 6, 7, 6])  # d = +1
    behind = torch.tensor([1, 0, 1, 2, 3, 4, 5, 6])  # d = -1
    index = {-1: behind, 0: torch.arange(8), 1: ahead}
    with torch.no_grad():
        views = [x[:, :, index[dy]][:, :, :, index[dx]] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        logits = sum(0.5 * (model(v) + model(v.flip(3))) for v in views) / 9
        expected = torch.nn.functional.cross_entropy(logits, y).item()
    model.seen = 0
    res = evaluate(model, [(x, y)], 4, contextlib.nullcontext, TTA(True, 1, grid=True))
    assert res.loss == pytest.approx(expected, rel=1e-5)
    assert model.seen == 5 * 18 and TTA(True, 1, grid=True).views == 18
    assert TTA(True, 1, grid=True, fraction=0.3).passes_per_image == pytest.approx(1 + 0.3 * 17)


def test_tta_fraction_gives_only_the_least_sure_images_the_extra_views() -> None:
    from cnnzoo.train.engine import TTA, evaluate

    torch.manual_seed(0)
    model = _CountingModel()
    x, y = torch.randn(10, 3, 8, 8), torch.randint(0, 4, (10,))
    nll = torch.nn.functional.cross_entropy
    with torch.no_grad():
        plain = model(x)
        unsure = plain.softmax(1).amax(1).argsort()[:3]  # the 3 lowest top probabilities
    full = evaluate(model, [(x, y)], 4, contextlib.nullcontext, TTA(True, 1))
    model.seen = 0
    gated = evaluate(model, [(x, y)], 4, contextlib.nullcontext, TTA(True, 1, fraction=0.3))
    # 10 plain views, then for the 3 unsure ones the mirror and 2 shifts x 2: 10 + 3 + 12
    assert model.seen == 25
    # full TTA's per-image losses for the unsure three, the plain ones for the rest
    model.seen = 0
    per_image = [
        evaluate(model, [(x[i : i + 1], y[i : i + 1])], 4, contextlib.nullcontext,
                 TTA(True, 1)).loss
        for i in range(10)
    ]  # fmt: skip
    with torch.no_grad():
        plain_loss = nll(plain, y, reduction="none")
    expected = [per_image[i] if i in unsure.tolist() else plain_loss[i].item() for i in range(10)]
    assert gated.loss == pytest.approx(sum(expected) / 10, rel=1e-5)
    assert gated.loss != pytest.approx(full.loss, rel=1e-5)  # the confident seven kept plain
    whole = TTA(True, 1, fraction=1.0)
    assert evaluate(model, [(x, y)], 4, contextlib.nullcontext, whole).loss == pytest.approx(
        full.loss, rel=1e-6
    )


def test_eval_uses_the_runs_tta_views_and_refuses_a_bad_fraction(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from helpers import assert_one_error_line, run_main

    out = tmp_path / "r"
    tta = dict(tta=True, tta_shift=1, tta_grid=True, tta_fraction=0.5)
    cfg = TrainConfig(**SMALL, epochs=1, **tta, out=str(out))
    summary = train(cfg)
    code, text, _ = run_main(["eval", str(out / "best.pt"), "--format", "json"], capsys)
    assert code == 0
    result = json.loads(text)
    assert result["accuracy"] == pytest.approx(summary.test_acc)
    assert result["views"] == "flip TTA + shifts of ±1 px on a 3x3 grid for the 50% least sure"
    code, _, err = run_main(["eval", str(out / "best.pt"), "--tta-fraction", "0"], capsys)
    assert code != 0 and "--tta-fraction must be in (0, 1]" in assert_one_error_line(err)


def test_resume_redoes_gradflow_rows_of_an_unfinished_epoch(tmp_path: Path) -> None:
    out = tmp_path / "r"
    train(TrainConfig(**SMALL, epochs=2, stop_after=1, record_gradflow=True, out=str(out)))
    log = out / "gradflow.jsonl"
    # as if killed after epoch 2's gradient row was written but before its last.pt landed
    log.write_text(log.read_text() + json.dumps({"epoch": 2, "layers": [], "norms": []}) + "\n")
    # and a torn line after it: a kill in the middle of an append (cnnzoo appended in place)
    log.write_text(log.read_text() + '{"epoch": 3, "layers": ["stem.co')
    train(TrainConfig(quiet=True), resume=out)
    rows = [json.loads(r) for r in log.read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert len(rows[2]["norms"]) == 19
    # a bad line before the last is damage no write of ours leaves: named, not silently dropped
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    with pytest.raises(UserError, match=r"gradflow.jsonl line 2 is not JSON"):
        RunDir(out).gradflow()


def test_cli_stop_after_then_resume(tmp_path: Path) -> None:
    out = tmp_path / "r"
    args = [
        "--data",
        "synthetic",
        "--subset",
        "256",
        "--val",
        "64",
        "--batch-size",
        "64",
        "--epochs",
        "2",
        "--quiet",
    ]
    assert main(["train", "resnet20", *args, "--stop-after", "1", "--out", str(out)]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not (out / "summary.json").exists()
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert load_checkpoint(out / "last.pt")["epoch"] == 2
    assert (out / "summary.json").is_file()


def test_auto_precision_decision_with_injected_timings(tmp_path, monkeypatch) -> None:
    from cnnzoo.train import precision as prec

    # The measured CPUs (shared/notes/cpu-performance.md): Zen 5, AMX Xeon, Xeon without AMX.
    assert prec.choose(bf16_tflops=0.81, fp32_tflops=0.44) == "bf16"
    assert prec.choose(bf16_tflops=1.26, fp32_tflops=0.30) == "bf16"
    assert prec.choose(bf16_tflops=0.06, fp32_tflops=0.13) == "fp32"
    assert prec.choose(bf16_tflops=0.45, fp32_tflops=0.44) == "fp32"  # within noise: fp32

    calls: list[object] = []
    speeds = {None: 0.40, torch.bfloat16: 0.80}

    def fake_conv_tflops(dtype):
        calls.append(dtype)
        return speeds[dtype]

    monkeypatch.setattr(prec, "conv_tflops", fake_conv_tflops)
    first = prec.cpu_precision(tmp_path)
    assert (first.precision, first.cached, len(calls)) == ("bf16", False, 2)
    assert "bf16 0.800 vs fp32 0.400" in first.reason
    again = prec.cpu_precision(tmp_path)  # cached per CPU key: no new measurement
    assert (again.precision, again.cached, len(calls)) == ("bf16", True, 2)
    speeds[torch.bfloat16] = 0.20  # another CPU (or torch, or thread count): measured anew
    monkeypatch.setattr(prec, "cpu_key", lambda: "another cpu")
    other = prec.cpu_precision(tmp_path)
    assert (other.precision, other.cached, len(calls)) == ("fp32", False, 4)
    (tmp_path / "precision.json").write_text("{not json")  # a broken cache: measure again
    assert prec.cpu_precision(tmp_path).cached is False


def test_cpu_key_names_model_flags_torch_and_threads() -> None:
    from cnnzoo.train.precision import cpu_key

    a = cpu_key("model name\t: AMD EPYC\nflags\t: avx512f avx512_bf16\n")
    b = cpu_key("model name\t: AMD EPYC\nflags\t: avx512f avx512_bf16 amx_bf16\n")
    assert a.startswith("AMD EPYC | flags ") and a != b
    assert torch.__version__ in a and f"{torch.get_num_threads()} thr" in a


def test_explicit_precision_wins_and_auto_is_recorded(tmp_path) -> None:
    from cnnzoo.train.runtime import choose_precision, resolve_precision

    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    explicit = choose_precision("fp32", torch.device("cpu"))
    assert (explicit.precision, explicit.measured) == ("fp32", None)
    with pytest.raises(UserError, match="fp16 needs a CUDA device"):
        resolve_precision("fp16", torch.device("cpu"))
    train(TrainConfig(**{**SMALL, "precision": "auto", "epochs": 1, "out": str(tmp_path / "r")}))
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())
    assert cfg["precision"] in ("bf16", "fp32") and cfg["precision_reason"].startswith("auto: ")
    assert set(cfg["precision_measured"]) == {"bf16_tflops", "fp32_tflops"}
    assert cfg["data_source"].startswith("synthetic:")  # generated data is labelled as such


def test_eval_follows_the_runs_tta_unless_told(tmp_path: Path, capsys) -> None:
    """`cnnzoo eval RUN` reports what summary.json reports: same checkpoint, same views."""
    out = tmp_path / "r"
    train(TrainConfig(**SMALL, epochs=1, tta=True, tta_shift=1, out=str(out)))
    summary = json.loads((out / "summary.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out), "--format", "json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["views"] == "flip TTA + shifts of ±1 px"
    assert got["accuracy"] == summary["test_acc"]
    assert main(["eval", str(out), "--format", "json", "--no-tta"]) == 0
    assert json.loads(capsys.readouterr().out)["views"] == "image only"


def test_resume_refuses_options_it_would_ignore(tmp_path: Path, capsys) -> None:
    out = tmp_path / "r"
    train(TrainConfig(**SMALL, epochs=2, stop_after=1, out=str(out)))
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.5", "--epochs", "9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --resume continues") and "--epochs, --lr" in err
    assert len(err.splitlines()) == 1 and (out / "last.pt").read_bytes() == before
    assert main(["train", "resnet20", "--resume", str(out)]) == 2  # a model name too
    assert main(["train", "--resume", str(out), "--quiet", "--stop-after", "2"]) == 0


def test_restart_after_a_kill_in_epoch_one_keeps_one_gradflow_row_per_epoch(
    tmp_path: Path,
) -> None:
    out = tmp_path / "r"
    train(TrainConfig(**SMALL, epochs=2, stop_after=1, record_gradflow=True, out=str(out)))
    for name in ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv"):
        (out / name).unlink()  # as if killed in epoch 1, after the epoch-0 gradient row
    train(TrainConfig(quiet=True), resume=out)
    rows = [json.loads(r) for r in (out / "gradflow.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


def test_a_kill_right_after_an_epochs_checkpoint_keeps_its_gradflow_row(
    tmp_path: Path, monkeypatch
) -> None:
    from cnnzoo.train.state import CheckpointSaver

    class Killed(Exception):
        pass

    real = CheckpointSaver.save

    def save_then_die(self, state, *args, **kwargs):
        real(self, state, *args, **kwargs)
        if state.epoch == 1:  # epoch 1's last.pt has landed
            raise Killed

    monkeypatch.setattr(CheckpointSaver, "save", save_then_die)
    out = tmp_path / "r"
    with pytest.raises(Killed):
        train(TrainConfig(**TINY, epochs=2, record_gradflow=True, out=str(out)))
    monkeypatch.undo()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    train(TrainConfig(quiet=True), resume=out)  # goes on with epoch 2: epoch 1 is not redone
    rows = [json.loads(r) for r in (out / "gradflow.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]


def test_a_stale_gradflow_temp_file_is_cleaned_up(tmp_path: Path) -> None:
    """A kill during a gradflow.jsonl write leaves its temp file: the folder still counts as
    empty, and the run that uses it removes the file."""
    out = tmp_path / "r"
    out.mkdir()
    (out / ".gradflow.jsonl.abc123.tmp").write_text('{"epoch": 0')
    train(TrainConfig(**TINY, epochs=1, record_gradflow=True, out=str(out)))
    assert not list(out.glob(".*.tmp"))
    assert (out / "summary.json").is_file()


@pytest.mark.parametrize(
    "kwargs", [{"num_classes": 100}, {"pretrained": True}, {"weights": "cifar10"}]
)
def test_model_kwargs_cannot_set_what_the_run_sets(tmp_path: Path, capsys, kwargs) -> None:
    from helpers import assert_one_error_line, run_main

    out = tmp_path / "r"
    missing = tmp_path / "no-such-archive.tar.gz"  # reading it would be a different error
    argv = ["train", "resnet20", "--data", str(missing), "--model-kwargs", json.dumps(kwargs)]
    code, _, err = run_main([*argv, "--out", str(out)], capsys)
    assert code == 2
    assert f"--model-kwargs cannot set {next(iter(kwargs))}:" in assert_one_error_line(err)
    assert not out.exists()


def test_progress_bar_reads_the_running_stats_only_when_it_redraws(capsys) -> None:
    """On a terminal the bar advances every step but syncs the device (reads the stats) at
    most every REDRAW_S seconds, not every step."""
    from cnnzoo.train.progress import Progress

    progress = Progress(1)
    progress.tty = True
    progress.start_epoch(1, steps=200)
    calls = []

    def stats():
        calls.append(1)
        return 1.0, 0.5, 64 * len(calls)

    for _ in range(200):
        progress.batch(stats)
    assert progress.bar.n == 200 and len(calls) <= 2


def test_progress_draws_a_bar_in_jupyter_but_not_into_a_pipe(monkeypatch) -> None:
    """A Jupyter kernel's stdout is no terminal, yet gets a bar (tqdm.auto's); a pipe or a log
    file (pytest's captured stdout here) gets the epoch lines only."""
    import sys
    import types

    from cnnzoo.train.progress import Progress, in_notebook

    assert not in_notebook() and not Progress(1).tty
    kernel = types.SimpleNamespace(config={"IPKernelApp": {}})
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: kernel))
    assert in_notebook() and Progress(1).tty
    terminal = types.SimpleNamespace(config={"TerminalIPythonApp": {}})  # IPython, no kernel
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: terminal))
    assert not in_notebook()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: None))
    assert not in_notebook()  # IPython imported, no shell running


def test_tensorboard_writer_is_closed_however_the_run_ends(tmp_path: Path, monkeypatch) -> None:
    from cnnzoo.train import callbacks

    closed: list[str] = []

    class Writer:
        def add_scalar(self, *args) -> None:
            pass

        def close(self) -> None:
            closed.append("closed")

    monkeypatch.setattr(callbacks, "_tensorboard", lambda *args: Writer())
    train(TrainConfig(**SMALL, epochs=2, stop_after=1, tensorboard=True, out=str(tmp_path / "a")))
    assert closed == ["closed"]  # stopped early
    with pytest.raises(TrainingDiverged):
        train(TrainConfig(**{**SMALL, "lr": 1e4}, epochs=1, tensorboard=True,
                          out=str(tmp_path / "b")))  # fmt: skip
    assert closed == ["closed", "closed"]  # ended by an error


def test_progress_lines_say_when_the_whole_run_ends() -> None:
    from cnnzoo.train.progress import run_eta

    assert run_eta([30.0, 32.0], epochs_left=58, now=0).startswith(" | run ends in 30m (~")
    assert run_eta([3900.0], epochs_left=1).startswith(" | run ends in 1h05m")
    assert run_eta([10.0], epochs_left=0) == "" and run_eta([], epochs_left=5) == ""


def test_low_res_epochs_reach_the_model_then_full_size(tmp_path: Path, monkeypatch) -> None:
    from cnnzoo.train import engine
    from helpers import TINY_FASTNET_RUN

    sides: list[int] = []  # the side of every training batch, in order
    real = engine.forward_backward

    def spy(model, x, *args, **kwargs):
        sides.append(x.shape[-1])
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(engine, "forward_backward", spy)
    cfg = TrainConfig(**TINY_FASTNET_RUN, epochs=3, low_res=16, low_res_epochs=2, out=str(tmp_path))
    train(cfg)
    per_epoch = json.loads((tmp_path / "config.json").read_text())["steps_per_epoch"]
    assert sides == [16] * (2 * per_epoch) + [32] * per_epoch


def test_the_apple_gpu_generator_is_saved_and_restored(monkeypatch) -> None:
    # Resume restores every generator training draws from; on a Mac that includes the MPS one.
    from cnnzoo.train import state as st

    restored = []
    monkeypatch.setattr(st, "mps_available", lambda: True)
    monkeypatch.setattr(torch.mps, "get_rng_state", lambda: torch.tensor([7], dtype=torch.uint8))
    monkeypatch.setattr(torch.mps, "set_rng_state", restored.append)
    saved = st.get_rng_state()
    assert torch.equal(saved["mps"], torch.tensor([7], dtype=torch.uint8))
    st.set_rng_state(saved)
    assert len(restored) == 1 and torch.equal(restored[0], saved["mps"])
    monkeypatch.setattr(st, "mps_available", lambda: False)
    assert "mps" not in st.get_rng_state()  # and a checkpoint without it loads anywhere
    st.set_rng_state(saved)
    assert len(restored) == 1
