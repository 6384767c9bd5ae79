"""The pieces that make recipe ``fast`` airbench94: schedule, reflected crops, lookahead,
whitening-bias freezing, BN eps; each against an independent construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnnzoo.cli import build_parser
from cnnzoo.commands.train import config_from_args
from cnnzoo.data.loader import Augment, augment_batch
from cnnzoo.errors import UserError
from cnnzoo.models import create_model
from cnnzoo.train import TrainConfig, load_checkpoint, train
from cnnzoo.train.config import lr_at
from cnnzoo.train.lookahead import Lookahead
from cnnzoo.train.recipes import recipe_config, resolve_recipe_args
from helpers import TINY_FASTNET, TINY_FASTNET_RUN

TINY, RUN = TINY_FASTNET, TINY_FASTNET_RUN


def test_triangle_schedule_is_airbench94s() -> None:
    cfg = recipe_config("fast", "fastnet")
    per_epoch, total = 48, 480
    warm = cfg.warmup_epochs * per_epoch  # 23 % of the run
    # airbench94: np.interp(step, [0, 0.23·total, total], [0.2, 1, 0.07]) × lr
    for step in (0, 10, 50, 109, 111, 200, 479):  # (110 holds the peak, 0.15 % above)
        ref = np.interp(step + (step < warm), [0, warm, total], [0.2, 1.0, 0.07])
        assert lr_at(cfg, step, total, per_epoch) == pytest.approx(cfg.lr * ref, rel=2e-4)
    assert max(lr_at(cfg, s, total, per_epoch) for s in range(total)) == cfg.lr
    plain = TrainConfig(lr=0.1, warmup_epochs=1)  # warmup_start and final_lr default to 0
    assert lr_at(plain, 0, 100, 10) == pytest.approx(0.01)
    assert lr_at(plain, 99, 100, 10) == pytest.approx(0.1 * 0.5 * (1 + np.cos(np.pi * 89 / 90)))


def test_reflected_crops_equal_reflect_padding() -> None:
    torch.manual_seed(0)
    x = torch.randint(0, 256, (6, 32, 32, 3), dtype=torch.uint8)
    dx, dy = torch.tensor([0, 1, 2, 3, 4, 2]), torch.tensor([4, 3, 2, 1, 0, 0])
    flips = torch.zeros(6, dtype=torch.bool)
    got = augment_batch(x, dx, dy, flips, None, Augment(pad=2, flip=False, reflect=True))
    ref = F.pad(x.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="reflect")
    for i in range(6):
        want = ref[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32].permute(1, 2, 0)
        assert torch.equal(want.to(torch.uint8), got[i])
    zeros = augment_batch(x, dx, dy, flips, None, Augment(pad=2, flip=False))
    assert zeros[4, :2].eq(0).all() and not got[4, :2].eq(0).all()  # dy=0: two padded rows


def test_lookahead_follows_its_rule() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    la = Lookahead(model, start_epoch=3, every=5)
    with torch.no_grad():
        model.weight.fill_(1.0)
    la.after_step(epoch=3, step=10, total_steps=100)  # before epoch 4: nothing
    assert la.avg is None
    la.after_step(epoch=4, step=11, total_steps=100)  # not a multiple of 5: nothing
    assert la.avg is None
    la.after_step(epoch=4, step=15, total_steps=100)  # starts the average
    with torch.no_grad():
        model.weight.fill_(3.0)
    la.after_step(epoch=4, step=20, total_steps=100)
    rho = 0.95**5 * 0.2**3
    want = 1.0 + (1 - rho) * (3.0 - 1.0)
    assert model.weight.detach().eq(torch.tensor(want)).all()  # copied back into the weights
    with torch.no_grad():
        model.weight.fill_(7.0)
    la.end_epoch()
    assert model.weight.detach().eq(torch.tensor(want)).all()


def test_lookahead_resume_is_exact(tmp_path) -> None:
    cfg = dict(RUN, lookahead=True, epochs=6)
    train(TrainConfig(**cfg, out=str(tmp_path / "a")))
    train(TrainConfig(**cfg, stop_after=5, out=str(tmp_path / "b")))  # average running
    assert load_checkpoint(tmp_path / "b" / "last.pt")["lookahead"]["avg"] is not None
    train(TrainConfig(quiet=True), resume=tmp_path / "b")
    a = load_checkpoint(tmp_path / "a" / "last.pt")
    b = load_checkpoint(tmp_path / "b" / "last.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for k in a["lookahead"]["avg"]:
        assert torch.equal(a["lookahead"]["avg"][k], b["lookahead"]["avg"][k]), k


def test_whitening_bias_trains_then_freezes(tmp_path) -> None:
    biases = []
    for epochs in (1, 2, 3):
        out = tmp_path / f"e{epochs}"
        train(TrainConfig(**RUN, epochs=3, stop_after=epochs, whiten_bias_epochs=1, out=str(out)))
        biases.append(load_checkpoint(out / "last.pt")["model"]["stem_bias"])
    assert not torch.equal(biases[0], torch.zeros_like(biases[0]))  # trained in epoch 1
    assert torch.equal(biases[0], biases[1]) and torch.equal(biases[1], biases[2])
    with pytest.raises(UserError, match="no whitening stem bias"):
        train(
            TrainConfig(
                **{**RUN, "model": "resnet20", "model_kwargs": {}},
                whiten_bias_epochs=1,
                epochs=1,
                out=str(tmp_path / "r"),
            )
        )


def test_fastnet_matches_airbench94_defaults() -> None:
    model = create_model("fastnet", **TINY)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-12 for m in bns)
    assert model.stem_bias_scale == 1.0  # the stem bias at the plain learning rate


def test_recipe_fast_turns_the_pieces_on_and_flags_still_win() -> None:
    parser = build_parser()
    args = resolve_recipe_args(parser.parse_args(["train", "fastnet", "--recipe", "fast"]))
    cfg = config_from_args(args, "fastnet", None)
    assert (cfg.lookahead, cfg.crop_reflect, cfg.whiten_bias_epochs) == (True, True, 3)
    assert (cfg.warmup_start, cfg.final_lr) == (0.2, 0.07)
    argv = ["train", "fastnet", "--recipe", "fast", "--no-lookahead", "--final-lr", "0"]
    cfg = config_from_args(resolve_recipe_args(parser.parse_args(argv)), "fastnet", None)
    assert (cfg.lookahead, cfg.final_lr, cfg.crop_reflect) == (False, 0.0, True)
    with pytest.raises(UserError, match="two weight averages"):
        TrainConfig(lookahead=True, ema=0.99).validate()
