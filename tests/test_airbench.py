"""The pieces that make recipe ``fast`` airbench94: schedule, reflected crops, lookahead,
whitening-bias freezing, BN eps; each against an independent construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cnnzoo.cli import build_parser
from cnnzoo.commands.train import config_from_args
from cnnzoo.data.loader import Augment, augment_batch
from cnnzoo.errors import UserError
from cnnzoo.models import create_model
from cnnzoo.train import TrainConfig, load_checkpoint, train
from cnnzoo.train.config import lr_at, whiten_bias_lr_at
from cnnzoo.train.lookahead import Lookahead
from cnnzoo.train.recipes import recipe_config, resolve_recipe_args
from cnnzoo.train.setup import build_optim, setup_runtime
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


def _lookahead(tmp_path, every: int | None, decay: float | None) -> tuple[Lookahead, nn.Linear]:
    """A lookahead over a 2-weight model: built directly with its defaults (``every`` None), or
    by ``build_optim`` from a config with ``every`` and ``decay``."""
    model = nn.Linear(2, 1, bias=False)
    if every is None:
        return Lookahead(model, start_epoch=3), model
    cfg = TrainConfig(
        lookahead=True, lookahead_every=every, lookahead_decay=decay, precision="fp32",
        out=str(tmp_path),
    ).validate()  # fmt: skip
    return build_optim(cfg, model, setup_runtime(cfg)).lookahead, model


@pytest.mark.parametrize(
    "every,decay", [(None, None), (20, 0.5)], ids=["airbench94-defaults", "from-the-config"]
)
def test_lookahead_follows_its_rule(tmp_path, every, decay) -> None:
    la, model = _lookahead(tmp_path, every, decay)
    every, decay = every or 5, decay or 0.95**5
    assert (la.every, la.decay) == (every, decay)
    with torch.no_grad():
        model.weight.fill_(1.0)
    la.after_step(epoch=3, step=2 * every, total_steps=100)  # before epoch 4: nothing
    assert la.avg is None
    la.after_step(epoch=4, step=3 * every - 1, total_steps=100)  # not a multiple: nothing
    assert la.avg is None
    la.after_step(epoch=4, step=3 * every, total_steps=100)  # starts the average
    with torch.no_grad():
        model.weight.fill_(3.0)
    la.after_step(epoch=4, step=4 * every, total_steps=100)
    rho = decay * (4 * every / 100) ** 3  # airbench94 at every=5: 0.95^5 × 0.2^3
    want = torch.tensor(1.0 + (1 - rho) * (3.0 - 1.0))
    assert torch.allclose(model.weight.detach(), want)  # copied back into the weights
    with torch.no_grad():
        model.weight.fill_(7.0)
    la.end_epoch()
    assert torch.allclose(model.weight.detach(), want)


def test_lookahead_options_are_checked_and_flags_win() -> None:
    for bad in (dict(lookahead_every=0), dict(lookahead_decay=1.0), dict(lookahead_decay=-0.1)):
        with pytest.raises(UserError, match="--lookahead-"):
            TrainConfig(**bad).validate()
    argv = ["train", "fastnet", "--recipe", "fast", "--lookahead-every", "20"]
    cfg = config_from_args(resolve_recipe_args(build_parser().parse_args(argv)), "fastnet", None)
    assert (cfg.lookahead, cfg.lookahead_every, cfg.lookahead_decay) == (True, 20, 0.95**5)


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


def test_whitening_bias_decay_is_airbench94_muons() -> None:
    cfg = TrainConfig(lr=0.5, whiten_bias_epochs=3, whiten_bias_decay=True).validate()
    for step in (0, 1, 50, 149, 150, 400):  # 50 steps per epoch: 150 steps of training
        assert whiten_bias_lr_at(cfg, step, 50) == pytest.approx(0.5 * max(0, 1 - step / 150))
    for bad in (dict(whiten_bias_epochs=None), dict(whiten_bias_epochs=0)):
        with pytest.raises(UserError, match="--whiten-bias-decay needs"):
            TrainConfig(whiten_bias_decay=True, **bad).validate()


@pytest.mark.parametrize("optimizer", ["sgd", "muon"])
def test_whitening_bias_decays_in_a_group_of_its_own(tmp_path, optimizer) -> None:
    cfg = TrainConfig(
        **{**RUN, "optimizer": optimizer, "nesterov": True},
        epochs=3,
        whiten_bias_epochs=2,
        whiten_bias_decay=True,
        out=str(tmp_path / "a"),
    )
    train(TrainConfig(**{**cfg.to_dict(), "stop_after": 1}))
    ckpt = load_checkpoint(tmp_path / "a" / "last.pt")
    groups, per_epoch = ckpt["optimizer"]["param_groups"], ckpt["step"]  # after epoch 1
    bias_groups = [g for g in groups if g.get("whiten_bias")]
    assert len(bias_groups) == 1 and len(bias_groups[0]["params"]) == 1
    assert groups[-1] is bias_groups[0]  # group 0 still carries the schedule's lr
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == len(list(create_model("fastnet", **TINY).parameters()))
    assert groups[0]["lr"] == pytest.approx(lr_at(cfg, per_epoch - 1, 3 * per_epoch, per_epoch))
    want = cfg.lr * (1 - (per_epoch - 1) / (2 * per_epoch))  # the last step of epoch 1 of 2
    assert bias_groups[0]["lr"] == pytest.approx(want)
    assert bias_groups[0]["weight_decay"] == groups[0]["weight_decay"]


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
