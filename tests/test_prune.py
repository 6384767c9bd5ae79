"""Data pruning (``--prune``, InfoBatch): which images an epoch skips, the loss weights that keep
its expected gradient the full data's, the loader's subset, the schedule's length, and runs that
use it. (Exact mid-epoch resume: tests/test_signals.py; merged over torchrun ranks:
tests/test_distributed.py.)"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from cnnzoo.cli import build_parser
from cnnzoo.commands.train import config_from_args
from cnnzoo.data import Augment, TensorLoader
from cnnzoo.errors import UserError
from cnnzoo.train import TrainConfig, load_checkpoint, train
from cnnzoo.train.prune import LossPruner, PrunedLoss, PrunePlan
from cnnzoo.train.recipes import resolve_recipe_args
from cnnzoo.train.runtime import DistInfo

N = 1000
PLAN = PrunePlan(n=N, rate=0.5, pool=0.6, epochs=5, full_last=1)
# distinct losses 1..N in a random order: the pool is the images with a loss of at most 600
LOSSES = torch.randperm(N, generator=torch.Generator().manual_seed(0)).float() + 1


def _pruner(seed: int = 0, losses: torch.Tensor = LOSSES) -> LossPruner:
    pruner = LossPruner(PLAN, seed)
    pruner.record(torch.arange(N), losses)
    return pruner


def test_plan_counts_the_skipped_images_and_the_pruned_epochs() -> None:
    plan = PrunePlan(n=1000, rate=0.5, pool=0.6, epochs=6, full_last=2)
    assert (plan.pool_size, plan.dropped) == (600, 300)
    assert [plan.pruned(e) for e in range(1, 7)] == [False, True, True, True, False, False]
    assert [plan.size(e) for e in range(1, 7)] == [1000, 700, 700, 700, 1000, 1000]
    assert plan.sizes() == [1000, 700, 700, 700, 1000, 1000]
    assert not any(PrunePlan(1000, 0.0, 0.6, 6, 1).pruned(e) for e in range(1, 7))
    tiny = PrunePlan(n=10, rate=0.9, pool=0.4, epochs=3, full_last=0)  # round(0.9 x 4) = 4
    assert (tiny.pool_size, tiny.dropped) == (4, 3)  # one of the pool is kept to stand in
    assert PrunePlan(n=1, rate=0.5, pool=0.1, epochs=3, full_last=0).dropped == 0  # no pool


def test_an_epoch_skips_only_low_loss_images_and_weights_up_the_rest_of_the_pool() -> None:
    pruner = _pruner()
    assert pruner.start_epoch(1) is None  # the first epoch sees every image
    assert torch.equal(pruner.weights, torch.ones(N))
    keep = pruner.start_epoch(2)
    assert keep.numel() == 700 and torch.equal(keep, keep.sort().values)
    skipped = torch.ones(N, dtype=torch.bool)
    skipped[keep] = False
    pool = LOSSES <= 600
    assert int(skipped.sum()) == 300 and bool(pool[skipped].all())
    assert torch.equal(pruner.weights[pool], torch.full((600,), 2.0))  # 1 / (1 - 0.5)
    assert torch.equal(pruner.weights[~pool], torch.ones(400))
    # the kept images' weights add up to the whole set: the pool's and the rest's apiece
    assert pruner.weights[keep][pool[keep]].sum().item() == 600
    assert pruner.weights[keep].sum().item() == N
    assert pruner.start_epoch(5) is None  # --prune-full-last 1
    # which pool images go is random, seeded by (seed, epoch)
    assert torch.equal(_pruner().start_epoch(2), keep)
    assert not torch.equal(_pruner().start_epoch(3), keep)
    assert not torch.equal(_pruner(seed=1).start_epoch(2), keep)


def test_a_resumed_epoch_chooses_from_the_losses_it_started_with() -> None:
    pruner = _pruner()
    keep = pruner.start_epoch(2)
    pruner.record(keep[:100], torch.full((100,), 1000.0))  # the epoch's training moves losses
    resumed = LossPruner(PLAN, seed=0)
    resumed.load_state_dict(pruner.state_dict())
    assert torch.equal(resumed.start_epoch(2), keep)  # the same images, the same weights
    assert torch.equal(resumed.weights, pruner.weights)
    assert torch.equal(resumed.losses, pruner.losses)
    # the next epoch chooses from the losses as they are now
    assert torch.equal(resumed.start_epoch(3), _pruner(losses=pruner.losses).start_epoch(3))


def test_sync_on_one_process_keeps_the_losses() -> None:
    pruner = _pruner()
    pruner.sync(DistInfo())
    assert torch.equal(pruner.losses, LOSSES) and not pruner.seen.any()


def test_pruned_loss_weights_each_image_and_records_its_loss() -> None:
    pruner = _pruner()
    keep = pruner.start_epoch(2)
    pool = LOSSES[keep] <= 600
    index = torch.cat([keep[pool][:2], keep[~pool][:2]])  # two weighted up, two not
    assert pruner.weights[index].tolist() == [2.0, 2.0, 1.0, 1.0]
    loader = SimpleNamespace(last_index=index)
    logits, y = torch.randn(4, 10), torch.tensor([1, 2, 3, 4])
    loss = PrunedLoss(pruner, loader, label_smoothing=0.1)(logits, y)
    each = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.1)  # (4,)
    want = (2 * each[0] + 2 * each[1] + each[2] + each[3]) / 4
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.allclose(pruner.losses[index], each) and bool(pruner.seen[index].all())
    with pytest.raises(RuntimeError, match="whole batch"):
        PrunedLoss(pruner, loader, 0.0)(logits[:2], y[:2])  # a micro-batch's share


def _ids_loader(subset=None, rank: int = 0, world: int = 1, batch: int = 10) -> TensorLoader:
    x = torch.zeros(100, 8, 8, 3, dtype=torch.uint8)
    loader = TensorLoader(
        x, torch.zeros(100, dtype=torch.long), batch, (0.5,) * 3, (0.25,) * 3, train=True,
        augment=Augment(pad=2), seed=1, rank=rank, world_size=world, channels_last=False,
    )  # fmt: skip
    loader.set_epoch(2, subset)
    return loader


def _seen(loader: TensorLoader) -> list[int]:
    seen = []
    for _ in loader.batches():
        seen += loader.last_index.tolist()
    return seen


def test_the_loader_trains_on_the_subset_alone_and_shards_it_over_ranks() -> None:
    subset = torch.arange(0, 100, 2)  # 50 images
    assert len(_ids_loader()) == 10 and len(_ids_loader(subset)) == 5
    assert sorted(_seen(_ids_loader(subset))) == subset.tolist()
    halves = [_seen(_ids_loader(subset, rank, 2, batch=5)) for rank in (0, 1)]
    assert sorted(halves[0] + halves[1]) == subset.tolist()  # disjoint, together the subset
    assert _ids_loader(subset).steps(100) == 10  # a full epoch's, whatever this one's subset


TINY = dict(
    model="resnet20", data="synthetic", subset=128, val=64, batch_size=32, precision="fp32",
    threads=1, quiet=True,
)  # fmt: skip


def test_a_pruned_run_takes_the_planned_steps_and_records_every_image(tmp_path) -> None:
    # 128 images, batch 32: full epochs 4 steps; pruned ones skip round(0.5 * 77) = 38 of the
    # pool of round(0.6 * 128) = 77, leaving 90 images = 2 steps
    cfg = TrainConfig(**TINY, epochs=3, prune=0.5, prune_pool=0.6, out=str(tmp_path / "r"))
    result = train(cfg)
    last = load_checkpoint(tmp_path / "r" / "last.pt")
    assert last["step"] == 4 + 2 + 4
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert (config["steps_per_epoch"], config["total_steps"]) == (4, 10)
    assert [r["epoch"] for r in result.history] == [1, 2, 3]
    assert [r["images"] for r in result.history] == [128, 64, 128]  # whole batches trained
    assert bool((last["prune"]["losses"] > 0).all())  # every image trained on has its loss
    assert last["prune"]["snapshot_epoch"] == 3


def test_pruning_that_skips_nothing_trains_as_plain_cross_entropy(tmp_path) -> None:
    """With every epoch full (--prune-full-last covers the run after epoch 1), the per-image
    loss path gives the plain run's weights: the weighting changes nothing else."""
    plain = TrainConfig(**TINY, epochs=2, out=str(tmp_path / "a"))
    full = TrainConfig(**TINY, epochs=2, prune=0.5, prune_full_last=1, out=str(tmp_path / "b"))
    train(plain), train(full)
    a, b = (load_checkpoint(tmp_path / r / "last.pt") for r in "ab")
    assert a["step"] == b["step"] == 8
    for key, tensor in a["model"].items():
        assert torch.allclose(b["model"][key].float(), tensor.float(), atol=1e-5), key


def test_prune_options_are_checked_and_parsed() -> None:
    for bad, flag in [
        (dict(prune=1.0), "--prune "),
        (dict(prune=-0.1), "--prune "),
        (dict(prune_pool=0.0), "--prune-pool"),
        (dict(prune_pool=1.5), "--prune-pool"),
        (dict(prune_full_last=-1), "--prune-full-last"),
        (dict(prune=0.5, micro_batch=16), "--micro-batch"),
    ]:
        with pytest.raises(UserError, match=flag):
            TrainConfig(**bad).validate()
    argv = ["train", "fastnet", "--prune", "0.5", "--prune-pool", "0.7", "--prune-full-last", "2"]
    cfg = config_from_args(resolve_recipe_args(build_parser().parse_args(argv)), "fastnet", None)
    assert (cfg.prune, cfg.prune_pool, cfg.prune_full_last) == (0.5, 0.7, 2)


def test_pruning_below_one_batch_is_a_clear_error(tmp_path) -> None:
    cfg = TrainConfig(**{**TINY, "batch_size": 100}, prune=0.9, prune_pool=1.0)
    with pytest.raises(UserError, match="fewer than a batch of 100"):
        train(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "r")}))


def test_a_run_without_a_pruned_epoch_is_not_refused(tmp_path) -> None:
    # the same settings, but 2 epochs: the first and the last see every image, none is pruned
    cfg = TrainConfig(**{**TINY, "batch_size": 100}, epochs=2, prune=0.9, prune_pool=1.0)
    train(TrainConfig(**{**cfg.to_dict(), "out": str(tmp_path / "r")}))
    assert load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 2  # 1 full step per epoch
