"""Muon (``--optimizer muon``), ``--micro-batch`` and recipe ``fast-muon``: each piece against an
independent construction (the SVD for Newton–Schulz, ``torch.optim.SGD`` for the SGD groups, the
whole batch for its chunks), and exact resume."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from torch import nn

from cnnzoo.cli import build_parser
from cnnzoo.commands.train import config_from_args
from cnnzoo.errors import UserError
from cnnzoo.train import TrainConfig, load_checkpoint, train
from cnnzoo.train.config import lr_at
from cnnzoo.train.engine import forward_backward
from cnnzoo.train.muon import NS_COEFFICIENTS, Muon, orthogonalize
from cnnzoo.train.recipes import recipe_config, resolve_recipe_args
from cnnzoo.train.setup import muon_param_groups
from helpers import TINY_FASTNET, TINY_FASTNET_RUN

TINY = TINY_FASTNET
RUN = dict(TINY_FASTNET_RUN, optimizer="muon", muon_lr=0.1)


def newton_schulz_by_svd(g: torch.Tensor, steps: int) -> torch.Tensor:
    """What the iteration does, computed another way: it keeps g's singular vectors and maps each
    singular value σ/‖g‖_F through p(s) = as + bs³ + cs⁵, ``steps`` times."""
    a, b, c = NS_COEFFICIENTS
    u, s, vh = torch.linalg.svd(g.double(), full_matrices=False)
    s = s / torch.linalg.matrix_norm(g.double())
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    return (u * s) @ vh


@pytest.mark.parametrize("shape", [(16, 72), (72, 16), (32, 32)])
def test_orthogonalize_is_the_polynomial_on_singular_values(shape) -> None:
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    for steps in (1, 3, 5):
        got = orthogonalize(g, steps).double()
        assert torch.allclose(got, newton_schulz_by_svd(g, steps), atol=2e-5), (shape, steps)
    sv = torch.linalg.svdvals(orthogonalize(g, 5))
    assert sv.min() > 0.6 and sv.max() < 1.25  # near-orthogonal: every direction moves alike
    with pytest.raises(ValueError, match="matrix"):
        orthogonalize(torch.zeros(2, 3, 4))


def test_muon_step_follows_its_rule() -> None:
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(8, 4, 3, 3))
    opt = Muon([w], lr=0.1, momentum=0.6, nesterov=True, ns_steps=3)
    w0, grads = w.detach().clone(), [torch.randn(8, 4, 3, 3) for _ in range(2)]
    buf, want = torch.zeros_like(w0), w0.clone()
    for g in grads:
        w.grad = g.clone()
        opt.step()
        buf = 0.6 * buf + g
        update = (g + 0.6 * buf).reshape(8, -1)
        want = want * (8**0.5 / want.norm())  # renormalised to ‖W‖ = √out first
        want = want - 0.1 * newton_schulz_by_svd(update, 3).float().view_as(want)
        assert torch.allclose(w.detach(), want, atol=1e-5)
    plain = nn.Parameter(w0.clone())
    opt = Muon([plain], lr=0.1, momentum=0.6, nesterov=False, normalize=False)
    plain.grad = grads[0].clone()
    opt.step()
    want = w0 - 0.1 * newton_schulz_by_svd(grads[0].reshape(8, -1), 3).float().view_as(w0)
    assert torch.allclose(plain.detach(), want, atol=1e-5)


def test_sgd_groups_step_as_torch_sgd() -> None:
    torch.manual_seed(0)
    ref = [nn.Parameter(torch.randn(5)), nn.Parameter(torch.randn(3, 4))]
    ours = [nn.Parameter(p.detach().clone()) for p in ref]
    for nesterov in (False, True):
        opts = [
            torch.optim.SGD(ref, lr=0.3, momentum=0.85, nesterov=nesterov, weight_decay=0.01),
            Muon(ours, lr=0.3, momentum=0.85, nesterov=nesterov, weight_decay=0.01, muon=False),
        ]
        for _ in range(4):
            grads = [torch.randn_like(p) for p in ref]
            for params, opt in zip((ref, ours), opts, strict=True):
                for p, g in zip(params, grads, strict=True):
                    p.grad = g.clone()
                opt.step()
            for a, b in zip(ref, ours, strict=True):
                assert torch.allclose(a, b, atol=1e-6)


def test_muon_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="no weight decay"):
        Muon([nn.Parameter(torch.ones(2, 2))], weight_decay=0.1)
    with pytest.raises(ValueError, match="matrices"):
        Muon([nn.Parameter(torch.ones(2))])
    with pytest.raises(UserError, match="no conv filters"):
        muon_param_groups(nn.Linear(3, 2), TrainConfig(model="mlp", optimizer="muon"))
    for bad, match in (({"muon_lr": 0.0}, "--muon-lr"), ({"micro_batch": 0}, "--micro-batch")):
        with pytest.raises(UserError, match=match):
            TrainConfig(**bad).validate()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "fastnet", "--optimizer", "adam"])


def test_muon_run_schedules_both_groups_and_resumes_exactly(tmp_path) -> None:
    cfg = dict(RUN, epochs=3, micro_batch=24, whiten_bias_epochs=1)
    train(TrainConfig(**cfg, out=str(tmp_path / "a")))
    train(TrainConfig(**cfg, stop_after=2, out=str(tmp_path / "b")))
    train(TrainConfig(quiet=True), resume=tmp_path / "b")
    a, b = (load_checkpoint(tmp_path / r / "last.pt") for r in "ab")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    groups = a["optimizer"]["param_groups"]
    assert [g["muon"] for g in groups] == [False, True]  # SGD first, the filters last
    per_epoch = json.loads((tmp_path / "a" / "config.json").read_text())["steps_per_epoch"]
    last = lr_at(TrainConfig(**cfg), 3 * per_epoch - 1, 3 * per_epoch, per_epoch)
    assert groups[0]["lr"] == pytest.approx(last)
    assert groups[1]["lr"] == pytest.approx(last * 0.1 / 0.2)  # muon_lr, same schedule
    state = a["optimizer"]["state"]
    assert all("momentum_buffer" in s for s in state.values())


def test_muon_puts_every_filter_and_nothing_else_in_its_group() -> None:
    from cnnzoo.models import create_model

    model = create_model("fastnet", **TINY)
    groups = muon_param_groups(model, TrainConfig(model="fastnet", optimizer="muon", lr=0.5))
    filters = [p for p in model.parameters() if p.ndim == 4]
    assert groups[-1]["params"] == filters and groups[-1]["weight_decay"] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert groups[-1]["lr_scale"] == pytest.approx(0.24 / 0.5)


class _NoBN(nn.Module):
    """A net whose output for an image does not depend on the rest of the batch."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 5)
        self.no_sync_calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).amax((2, 3)))

    @contextlib.contextmanager
    def no_sync(self):  # as DDP's: the chunks before the last must not all-reduce
        self.no_sync_calls += 1
        yield


@pytest.mark.parametrize("soft", [False, True])
def test_micro_batches_give_the_batch_gradient(soft) -> None:
    torch.manual_seed(0)
    model, x = _NoBN(), torch.randn(10, 3, 8, 8)
    y = torch.softmax(torch.randn(10, 5), 1) if soft else torch.randint(0, 5, (10,))
    criterion = nn.CrossEntropyLoss(label_smoothing=0.2)
    results = []
    for micro in (None, 3):  # 3 + 3 + 3 + 1: unequal chunks weigh by their size
        model.zero_grad()
        loss, logits = forward_backward(model, x, y, criterion, contextlib.nullcontext, None, micro)
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss.detach(), logits.detach(), grads))
    (l1, o1, g1), (l2, o2, g2) = results
    assert torch.allclose(l1, l2, atol=1e-6) and torch.allclose(o1, o2, atol=1e-6)
    for a, b in zip(g1, g2, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert model.no_sync_calls == 3  # all chunks but the last


def test_recipe_fast_muon_is_airbench94_muon_and_flags_still_win() -> None:
    cfg = recipe_config("fast-muon", "fastnet")
    assert (cfg.optimizer, cfg.muon_lr, cfg.muon_momentum, cfg.epochs) == ("muon", 0.24, 0.6, 8)
    assert (cfg.batch_size, cfg.lookahead, cfg.warmup_epochs, cfg.final_lr) == (2000, False, 0, 0)
    assert (cfg.whiten_bias_epochs, cfg.whiten_bias_decay) == (3, True)
    # airbench94_muon's per-step weight decay, 2e-6 × batch 2000, and its bias lr 0.053 × 2000
    # spread over FastNet's 64× bias reparametrisation
    assert cfg.lr * cfg.weight_decay == pytest.approx(2e-6 * 2000)
    assert cfg.lr * 8**2 == pytest.approx(0.053 * 2000, rel=1e-3)
    parser = build_parser()
    args = resolve_recipe_args(parser.parse_args(["train", "fastnet", "--recipe", "fast-muon"]))
    cli = config_from_args(args, "fastnet", None)
    assert cli.model_kwargs == {"stem_bias_scale": 8.0} and cli.optimizer == "muon"
    argv = ["train", "fastnet", "--recipe", "fast-muon", "--model-kwargs", "{}", "--muon-lr", "0.1"]
    cli = config_from_args(resolve_recipe_args(parser.parse_args(argv)), "fastnet", None)
    assert cli.model_kwargs == {} and cli.muon_lr == 0.1
