"""FastNet, the named recipes and the speed-run benchmark, on tiny synthetic data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from cnnzoo.cli import build_parser, main
from cnnzoo.commands.train import config_from_args
from cnnzoo.errors import Interrupted, UserError
from cnnzoo.models import count_flops, create_model
from cnnzoo.train import TrainConfig, train
from cnnzoo.train.recipes import RECIPES, recipe_config, resolve_recipe_args
from helpers import load_benchmark

TINY = {"widths": [8, 16, 16], "stem": 6}


def test_fastnet_shapes_flops_and_frozen_stem() -> None:
    model = create_model("fastnet")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    # airbench94's geometry: ~0.24 GFLOP forward per image, ~2M parameters
    assert 0.2e9 < count_flops(model) < 0.3e9
    assert 1.5e6 < sum(p.numel() for p in model.parameters()) < 2.5e6
    assert "stem_weight" in dict(model.named_buffers())  # whitening filters are fixed
    assert create_model("fastnet", num_classes=100, **TINY)(torch.randn(1, 3, 32, 32)).shape == (
        1,
        100,
    )


def test_fastnet_small_is_the_narrow_twin() -> None:
    small, full = create_model("fastnet_small"), create_model("fastnet")
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert [g[0].out_channels for g in small.layers] == [32, 192, 192]
    assert 0.4 < count_flops(small) / count_flops(full) < 0.55  # 114 vs 236 MFLOP
    cpu, fast = RECIPES["fast-cpu"], RECIPES["fast"]
    # linear lr scaling with the batch; warm-up stays 23 % of the run
    assert cpu["lr"] / fast["lr"] == pytest.approx(cpu["batch_size"] / fast["batch_size"])
    assert cpu["warmup_epochs"] / cpu["epochs"] == pytest.approx(0.23)
    # fast-cpu-15: the same recipe over 15 epochs, the warm-up's share kept
    long = RECIPES["fast-cpu-15"]
    assert {k: v for k, v in long.items() if k not in ("epochs", "warmup_epochs")} == {
        k: v for k, v in cpu.items() if k not in ("epochs", "warmup_epochs")
    }
    assert long["epochs"] == 15 and long["warmup_epochs"] / 15 == pytest.approx(0.23)


def test_whitening_init_decorrelates_patches() -> None:
    torch.manual_seed(0)
    model = create_model("fastnet")
    # correlated pixels: a smooth image plus a little noise
    x = torch.nn.functional.interpolate(torch.randn(64, 3, 8, 8), size=32, mode="bilinear")
    x = x + 0.05 * torch.randn_like(x)
    model.init_from_data(x)
    w = model.stem_weight
    assert torch.allclose(w[:12], -w[12:])  # ± pairs
    out = torch.nn.functional.conv2d(x, w[:12]).permute(0, 2, 3, 1).reshape(-1, 12)
    cov = (out.T @ out / out.shape[0]).double()
    # unit variance (eps shrinks the smallest directions a little), no correlation
    assert torch.allclose(cov.diagonal()[:6], torch.ones(6, dtype=torch.double), atol=0.05)
    off = cov - torch.diag(cov.diagonal())
    assert off.abs().max() < 0.05
    with pytest.raises(ValueError):
        model.init_from_data(torch.randn(4, 1, 32, 32))


def test_shift_bn_bias_learns_scale_squared_faster() -> None:
    """Stored shift b/s with forward s·(b/s): SGD moves the effective shift s² times faster."""
    torch.manual_seed(0)
    model = create_model("fastnet", **TINY, bias_scale=8.0)
    bn = model.layers[0][2]
    x = torch.randn(4, 8, 5, 5)
    bn(x).sum().backward()
    # d(sum)/d(effective shift) = N·H·W per channel; the stored parameter sees s times that
    assert torch.allclose(bn.bias.grad, torch.full((8,), 8.0 * 4 * 5 * 5))
    assert bn.weight is None  # no scale
    # the constant unit scale handed to batch_norm (for cuDNN) is neither learnt nor saved
    assert not any("unit_scale" in k for k in model.state_dict())
    assert "unit_scale" not in dict(model.named_parameters())


def test_recipe_cli_defaults_and_explicit_options_win() -> None:
    parse = build_parser().parse_args
    args = resolve_recipe_args(
        parse(["train", "fastnet", "--recipe", "fast", "--epochs", "3", "--label-smoothing", "0"])
    )
    cfg = config_from_args(args, "fastnet", None)
    fast = RECIPES["fast"]
    assert cfg.epochs == 3 and cfg.label_smoothing == 0.0  # explicit, even at the default value
    assert (cfg.batch_size, cfg.lr, cfg.crop_pad, cfg.val) == (
        fast["batch_size"],
        fast["lr"],
        fast["crop_pad"],
        fast["val"],
    )
    assert cfg.nesterov and cfg.tta and cfg.alternate_flip and cfg.tta_shift == 1
    off = config_from_args(
        resolve_recipe_args(parse(["train", "fastnet", "--recipe", "fast", "--no-alternate-flip"])),
        "fastnet",
        None,
    )
    assert not off.alternate_flip and off.tta_shift == 1
    plain = config_from_args(resolve_recipe_args(parse(["train", "resnet20"])), "resnet20", None)
    assert (plain.epochs, plain.batch_size, plain.crop_pad, plain.val) == (20, 128, 4, None)
    assert not plain.nesterov and plain.augment


def test_unknown_recipe_is_a_user_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "fastnet", "--recipe", "nope", "--data", "synthetic"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    with pytest.raises(UserError):
        recipe_config("fast", "fastnet", not_a_field=1)


@pytest.mark.parametrize(
    ("name", "model"),
    [("fast", "fastnet"), ("fast-cpu", "fastnet_small"), ("fast-muon", "fastnet")],
)
def test_tiny_recipe_run_learns(tmp_path: Path, name: str, model: str) -> None:
    cfg = recipe_config(
        name,
        model,
        data="synthetic",
        model_kwargs=TINY,
        subset=500,
        epochs=3,
        batch_size=50,
        lr=0.5,  # the recipe's 1.5 needs its 2.3-epoch warm-up; this run is 3 epochs of 10 steps
        warmup_epochs=0.5,
        precision="fp32",  # tiny convs run faster in fp32 than through bf16 reorders
        out=str(tmp_path / "run"),
        quiet=True,
    )
    result = train(cfg)
    assert result.test_acc == result.test_acc_last  # val=0: the final weights, no selection
    assert result.test_acc > 0.3  # 10 classes; chance is 0.1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["crop_pad"] == 2 and saved["val"] == 0
    assert saved["alternate_flip"] and saved["tta_shift"] == 1
    state = torch.load(tmp_path / "run" / "best.pt", weights_only=False)["model"]
    w = state["stem_weight"]
    assert torch.allclose(w[:3], -w[3:])  # the trainer ran the whitening initialisation


def test_speedrun_benchmark_prints_the_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mod = load_benchmark("speedrun")
    out_json = tmp_path / "speedrun.json"
    argv = ["--seeds", "2", "--data", "synthetic", "--epochs", "1", "--batch-size", "100"]
    argv += ["--subset", "200", "--peak-tflops", "0.5", "--precision", "fp32"]
    argv += ["--model-kwargs", json.dumps(TINY), "--out", str(tmp_path), "--json", str(out_json)]
    assert mod.main(argv) == 0
    text = capsys.readouterr().out
    assert "fastnet_small fast-cpu seed 1:" in text and "TFLOP/s" in text
    assert "summary over 2 seed(s), fastnet_small --recipe fast-cpu" in text
    written = json.loads(out_json.read_text())
    runs = written["runs"]["fastnet_small:fast-cpu"]
    assert len(runs) == 2 and all(r["wall_s"] > 0 and r["tflops"] > 0 for r in runs)
    assert written["finished"] is True
    assert "| 2 | fp32 |" in text and "| – |" in text and "theoretical fp32" in text
    assert all(r["val_acc"] is None for r in runs)
    saved = json.loads((tmp_path / "fastnet_small-fast-cpu-seed0" / "config.json").read_text())
    assert saved["warmup_epochs"] == pytest.approx(0.23)  # --epochs 1: still 23 % of the run
    # --versus: the two configurations alternate, and the time ratio is printed
    argv[1] = "1"
    argv[argv.index("--out") + 1] = str(tmp_path / "versus")
    versus = ["--versus", "fastnet_small:fast-muon", "--first-seed", "3", "--micro-batch", "50"]
    versus += ["--val", "40", "--val-every", "3"]  # both hold out 40 images; scored at the end
    assert mod.main([*argv, *versus]) == 0
    text = capsys.readouterr().out
    order = [text.index("fast-cpu seed 3:"), text.index("fastnet_small fast-muon seed 3:")]
    assert order == sorted(order)
    assert "wall time fastnet_small fast-cpu / fastnet_small fast-muon" in text
    assert text.count("held-out acc 0.") == 2 and "| – |" not in text
    b = tmp_path / "versus" / "fastnet_small-fast-muon-seed3" / "config.json"
    saved = json.loads(b.read_text())  # B keeps its recipe's model_kwargs and its no warm-up
    assert saved["model_kwargs"] == {"stem_bias_scale": 8.0} and saved["warmup_epochs"] == 0
    assert saved["micro_batch"] is None  # --micro-batch is A's only
    a = json.loads(
        (tmp_path / "versus" / "fastnet_small-fast-cpu-seed3" / "config.json").read_text()
    )
    assert a["micro_batch"] == 50 and a["batch_size"] == 100
    assert a["val"] == saved["val"] == 40 and a["val_every"] == saved["val_every"] == 3
    ceiling = mod.measured_conv_tflops("fp32", seconds=0.1)
    assert 0.001 < ceiling < 1000


def test_speedrun_json_keeps_the_seeds_run_before_a_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    mod = load_benchmark("speedrun")
    done: list[int] = []

    def run_one(config: object, seed: int, *rest: object) -> dict:
        if done:  # the second run is stopped, as SIGTERM stops a real one
            raise Interrupted(15, "interrupted; resume with: ...")
        done.append(seed)
        return {"seed": seed, "wall_s": 1.0, "test_acc": 0.9, "val_acc": None}

    monkeypatch.setattr(mod, "run_one", run_one)
    out_json = tmp_path / "speedrun.json"
    argv = ["--seeds", "3", "--data", "synthetic", "--peak-tflops", "0.5", "--precision", "fp32"]
    with pytest.raises(Interrupted):
        mod.main([*argv, "--out", str(tmp_path), "--json", str(out_json)])
    saved = json.loads(out_json.read_text())
    assert [r["seed"] for r in saved["runs"]["fastnet_small:fast-cpu"]] == [0]
    assert saved["finished"] is False and saved["precision"] == "fp32"


def test_speedrun_counts_low_res_epochs_at_their_pixel_ratio(tmp_path: Path) -> None:
    mod = load_benchmark("speedrun")
    args = mod.build_parser().parse_args(["--low-res", "16", "--low-res-epochs", "2"])
    assert {"low_res": 16, "low_res_epochs": 2}.items() <= mod.shared_overrides(args).items()
    resolved = {"train_images": 45_000, "steps_per_epoch": 10}
    base = dict(data="x.tar.gz", epochs=4, batch_size=100, tta=False, val_every=99)
    images = [1000] * 4
    full = mod.flop_count(TrainConfig(**base), resolved, 1.0, 1, images)
    low = mod.flop_count(
        TrainConfig(**base, low_res=16, low_res_epochs=2), resolved, 1.0, 1, images
    )
    # 3 x 1,000 images x 4 epochs, plus the test pass and one held-out pass at the end
    assert full == 3 * 1000 * 4 + 10_000 + 5_000
    assert full - low == 3 * 1000 * 2 * (1 - 1 / 4)  # two epochs at a quarter of the pixels
    # a pruned run counts the images its epochs did train on
    pruned = mod.flop_count(TrainConfig(**base), resolved, 1.0, 1, [1000, 700, 700, 1000])
    assert full - pruned == 3 * 600


def test_speedrun_set_changes_the_first_configuration_only() -> None:
    mod = load_benchmark("speedrun")
    argv = ["--versus", "fastnet:fast", "--epochs", "3", "--micro-batch", "64"]
    args = mod.build_parser().parse_args([*argv, "--set", "epochs=11", "tta_fraction=0.3"])
    a, b = mod.configurations(args)
    assert (a.model, a.recipe) == ("fastnet_small", "fast-cpu") and b.model == "fastnet"
    assert a.own == {"micro_batch": 64, "epochs": 11, "tta_fraction": 0.3} and b.own == {}
    assert (a.label, b.label) == ("fastnet_small:fast-cpu", "fastnet:fast")
    assert mod.shared_overrides(args)["epochs"] == 3  # what --set does not name stays shared
    assert mod.parse_sets(["precision=bf16"]) == {"precision": "bf16"}  # not JSON: a string
    for bad in (["seed=3"], ["epochs"], ["nope=1"]):
        with pytest.raises(UserError, match="--set"):
            mod.parse_sets(bad)


def test_speedrun_set_against_its_own_recipe_runs_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--set epochs=11 --versus fastnet_small:fast-cpu: the candidate and the recipe as it is,
    alternated, each in its own run directory and JSON entry (they once shared one key, and
    only the baseline ran)."""
    mod = load_benchmark("speedrun")
    ran: list[tuple[str, int, dict, str]] = []

    def run_one(config, seed: int, out: Path, overrides: dict, *rest: object) -> dict:
        ran.append((config.label, seed, overrides, out.name))
        return {"seed": seed, "wall_s": 2.0 if "epochs" in config.own else 1.0,
                "test_acc": 0.9, "val_acc": None, "img_per_s": 1.0, "tflops": 1.0}  # fmt: skip

    monkeypatch.setattr(mod, "run_one", run_one)
    out_json = tmp_path / "speedrun.json"
    argv = ["--seeds", "2", "--data", "synthetic", "--peak-tflops", "0.5", "--precision", "fp32"]
    argv += ["--versus", "fastnet_small:fast-cpu", "--out", str(tmp_path), "--json", str(out_json)]
    assert mod.main([*argv, "--set", "epochs=11"]) == 0
    labels = [(label, seed) for label, seed, _, _ in ran]
    a, b = "fastnet_small:fast-cpu+set", "fastnet_small:fast-cpu"
    assert labels == [(a, 0), (b, 0), (a, 1), (b, 1)]
    assert ran[0][2]["epochs"] == 11 and "epochs" not in ran[1][2]
    assert [r[3] for r in ran[:2]] == [
        "fastnet_small-fast-cpu-set-seed0",
        "fastnet_small-fast-cpu-seed0",
    ]
    saved = json.loads(out_json.read_text())["runs"]
    assert sorted(saved) == [b, a] and all(len(rs) == 2 for rs in saved.values())
    text = capsys.readouterr().out
    assert "wall time fastnet_small fast-cpu+set / fastnet_small fast-cpu: 2.000x" in text
    assert "fastnet_small --recipe fast-cpu with {'epochs': 11}:" in text
    with pytest.raises(UserError, match="--versus fastnet_small:fast-cpu is the first"):
        mod.main(argv)  # nothing tells the two apart


def test_speedrun_counts_gated_tta_views() -> None:
    mod = load_benchmark("speedrun")
    args = mod.build_parser().parse_args(["--tta-fraction", "0.3"])
    assert mod.shared_overrides(args)["tta_fraction"] == 0.3
    resolved = {"train_images": 50_000, "steps_per_epoch": 10}
    base = dict(data="x.tar.gz", epochs=1, batch_size=100, tta=True, tta_shift=1, val=0)
    train_flops = 3 * 1000
    full = mod.flop_count(TrainConfig(**base), resolved, 1.0, 0, [1000])
    gated = mod.flop_count(TrainConfig(**base, tta_fraction=0.3), resolved, 1.0, 0, [1000])
    assert full - train_flops == 6 * 10_000  # mirror x 3 positions, every test image
    assert gated - train_flops == pytest.approx((1 + 0.3 * 5) * 10_000)  # plain + 5 for 30%


def test_fastnet_widths_benchmark_prints_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    mod = load_benchmark("fastnet_widths")
    argv = ["--variants", "fastnet:4:8,16,16", "fastnet_small:2:8,8,8", "--seconds", "0.05"]
    assert mod.main([*argv, "--rounds", "3"]) == 0
    text = capsys.readouterr().out
    assert "3 rounds" in text
    rows = [line for line in text.splitlines() if line.startswith("| fast")]
    assert len(rows) == 2
    # the first variant against itself, round by round: exactly 1
    assert rows[0].endswith("| 1.00–1.00 | 1.00x |") and "| 8/16/16 | 4 |" in rows[0]
    assert "| 8/8/8 | 2 |" in rows[1]
    low, high = (float(x) for x in rows[1].split("|")[-3].split("–"))
    assert 0 < low <= float(rows[1].split("|")[-2].strip().rstrip("x")) <= high
    for bad in (["--variants", "fastnet"], [*argv, "--rounds", "0"]):
        with pytest.raises(SystemExit):  # no batch size; no rounds: argparse errors
            mod.main(bad)
