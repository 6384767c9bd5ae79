"""``cnnzoo gradflow``: per-layer conv gradient norms at init and from recorded runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from cnnzoo.analysis import gradflow as gf
from cnnzoo.models import create_model, list_models
from helpers import run_main

RECORD = ["--record-gradflow", "--data", "synthetic", "--subset", "32", "--val", "32",
          "--batch-size", "16", "--epochs", "2", "--precision", "fp32", "--threads", "1",
          "--quiet"]  # fmt: skip
SYN = ["--data", "synthetic", "--batch-size", "16", "--threads", "1"]


def _convs(name: str) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in create_model(name).modules())


def test_json_has_one_finite_norm_per_conv(tmp_path: Path, capsys) -> None:
    code, out, err = run_main(
        ["gradflow", "plain20", "resnet20", "--format", "json", "--out", str(tmp_path), *SYN],
        capsys,
    )
    assert code == 0, err
    data = json.loads(out)
    assert list(data) == ["plain20", "resnet20"]
    for name, r in data.items():
        assert len(r["norms"]) == len(r["layers"]) == _convs(name) == 19
        assert all(math.isfinite(n) and n > 0 for n in r["norms"])
        assert math.isclose(r["max_min_ratio"], max(r["norms"]) / min(r["norms"]))
        assert math.isclose(r["first_last_ratio"], r["norms"][0] / r["norms"][-1])
    # bars per model + overlay, as PNG and SVG, non-empty
    for stem in ("bars-plain20", "bars-resnet20", "overlay"):
        for ext in (".png", ".svg"):
            assert (tmp_path / f"{stem}{ext}").stat().st_size > 0


def test_norms_match_a_direct_backward_pass() -> None:
    """The numbers are d(loss)/d(weight) of the model built from the seed, on the batch."""
    x, y, num_classes = gf.training_batch("cifar10", "synthetic", batch_size=8, seed=3)
    assert num_classes == 10
    res = gf.measure_models(["resnet20"], x, y, seed=5)["resnet20"]
    torch.manual_seed(5)
    model = create_model("resnet20").train()
    nn.CrossEntropyLoss()(model(x), y).backward()
    mods = dict(model.named_modules())
    # the first layer called in the forward pass is the stem conv, nearest the input
    first = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    assert res["layers"][0] == first
    for name, norm in zip(res["layers"], res["norms"], strict=True):
        assert math.isclose(mods[name].weight.grad.norm().item(), norm, rel_tol=1e-4)


def test_text_describes_the_measurement_and_gives_a_verdict(tmp_path: Path, capsys) -> None:
    code, out, _ = run_main(["gradflow", "plain20", "--no-plot", *SYN], capsys)
    assert code == 0
    assert "L2 norm of d(loss)/d(weight) for every conv layer" in out
    assert "at initialisation" in out
    assert "Verdict:" in out
    assert ("Yang et al. 2019" in out) or ("vanishing-gradient" in out)


def test_describe_verdicts_follow_the_numbers() -> None:
    grow = {"plain56": {"norms": [8.0, 1.0], "max_min_ratio": 8.0, "first_last_ratio": 8.0}}
    shrink = {"plain56": {"norms": [1.0, 8.0], "max_min_ratio": 8.0, "first_last_ratio": 0.125}}
    assert "supports the BatchNorm mean-field picture" in gf.describe(grow)
    assert "supports the notebook's vanishing-gradient explanation" in gf.describe(shrink)


def test_run_reads_recorded_epochs(tmp_path: Path, capsys) -> None:
    run = tmp_path / "run"
    code, _, _ = run_main(["train", "resnet20", "--out", str(run), *RECORD], capsys)
    assert code == 0
    code, out, _ = run_main(
        ["gradflow", "--run", str(run), "--format", "json", "--out", str(tmp_path / "g")], capsys
    )
    assert code == 0
    data = json.loads(out)
    (key,) = data
    assert key == "resnet20 (run)"
    assert [e["epoch"] for e in data[key]["epochs"]] == [0, 1, 2]  # init + each epoch end
    assert data[key]["epoch"] == 2 and len(data[key]["norms"]) == _convs("resnet20")
    for ext in (".png", ".svg"):
        assert (tmp_path / "g" / f"epochs-resnet20_run{ext}").stat().st_size > 0
    code, out, _ = run_main(["gradflow", "--run", str(run), "--no-plot"], capsys)
    assert code == 0 and "after epoch 2" in out and "at initialisation" in out


def test_sweep_lists_the_six_models() -> None:
    assert gf.SWEEP_MODELS == ("plain20", "plain56", "plain110", "resnet20", "resnet56",
                               "resnet110")  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["gradflow"], "name models"),
        (["gradflow", "resnet21", "--data", "synthetic"], "unknown model"),
        (["gradflow", "--run", "/nonexistent"], "no gradflow.jsonl"),
        (["gradflow", "resnet20", "--data", "synthetic", "--batch-size", "1"], "--batch-size"),
        (["gradflow", "resnet20", "--data", "synthetic", "--threads", "0"], "--threads"),
    ],
)
def test_bad_input(argv: list[str], message: str, capsys) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2 and err.startswith("error:") and message in err


def test_generated_data_has_ten_classes_whatever_the_dataset_says() -> None:
    """--dataset cifar100 --data synthetic: the data (and so the models) have 10 classes."""
    _, y, num_classes = gf.training_batch("cifar100", "synthetic", batch_size=8, seed=0)
    assert num_classes == 10 and int(y.max()) < 10


def test_measurement_uses_local_batch_norm_for_a_sync_bn_model() -> None:
    """Under torchrun --sync-bn, rank 0 measures alone, and a training-mode SyncBatchNorm forward
    is a collective the other ranks never join (they hung). The measured copy uses BatchNorm2d
    with the same state; the model itself keeps its SyncBatchNorm. (The hang needs CUDA ranks.)"""
    import copy

    torch.manual_seed(0)
    model = nn.SyncBatchNorm.convert_sync_batchnorm(create_model("resnet20"))
    local = gf._local_batch_norm(copy.deepcopy(model))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in local.modules())
    assert any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(local.train()(x), model.train()(x))  # one process: the same numbers
    _, norms = gf.conv_grad_norms(model, x, torch.randint(0, 10, (4,)))
    assert len(norms) == 19 and all(math.isfinite(n) and n > 0 for n in norms)


def test_the_measurement_forks_the_random_stream_of_the_batch_device() -> None:
    """Dropout in the measured copy must not advance a CUDA generator either (only the CPU's was
    forked before). The CUDA path itself needs a GPU; here the choice of streams is checked."""
    from types import SimpleNamespace

    from cnnzoo.models.gradnorms import rng_devices

    cuda = torch.device("cuda", 1)
    assert rng_devices(SimpleNamespace(device=cuda)) == [cuda]
    assert rng_devices(torch.zeros(1)) == []  # the CPU generator is always forked
    model = create_model("vgg11").train()  # dropout: the CPU stream stays where it was
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    before = torch.get_rng_state()
    gf.conv_grad_norms(model, x, y)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("name", list_models())
def test_is_plain_names_exactly_the_nets_without_skip_connections(name: str) -> None:
    # The figures draw plain nets dashed by name; the name must match what the net is.
    skips = [m.skip for m in create_model(name).modules() if hasattr(m, "skip")]
    assert gf.is_plain(name) == (bool(skips) and not any(skips))
