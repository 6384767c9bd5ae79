"""mixup and cutmix: labels that sum to one, images mixed as the labels say, fixed per seed."""

from __future__ import annotations

import pytest
import torch

from cnnzoo.data import TensorLoader
from cnnzoo.data.mix import Mix, mix_batch, mix_rng
from cnnzoo.train import TrainConfig, train


def _loader(mix: Mix, seed: int = 0) -> TensorLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8, generator=g)
    y = torch.arange(64) % 10
    return TensorLoader(x, y, 16, (0.5,) * 3, (0.25,) * 3, train=True, seed=seed, mix=mix)


@pytest.mark.parametrize("mix", [Mix(mixup=0.4), Mix(cutmix=1.0), Mix(mixup=0.2, cutmix=1.0)])
def test_mixed_labels_sum_to_one_and_a_seed_fixes_the_batches(mix: Mix) -> None:
    a, b = list(_loader(mix)), list(_loader(mix))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert ya.shape == (16, 10)
        assert torch.allclose(ya.sum(1), torch.ones(16))
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = list(_loader(mix, seed=1))
    assert not all(torch.equal(ya, yo) for (_, ya), (_, yo) in zip(a, other, strict=True))


def test_mixup_blends_images_by_the_label_weight() -> None:
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)
    mixed, targets = mix_batch(x, y, Mix(mixup=1.0), mix_rng(0, 1, 0, 0))
    for i in range(8):
        others = [int(c) for c in targets[i].nonzero() if int(c) != i]
        j = others[0] if others else i  # the partner image (itself when paired with itself)
        own = float(targets[i, i])
        assert torch.allclose(mixed[i], own * x[i] + (1 - own) * x[j], atol=1e-6)


def test_cutmix_pastes_a_box_whose_area_is_the_label_weight() -> None:
    x, y = torch.zeros(4, 1, 16, 16), torch.arange(4)
    x += torch.arange(4).view(4, 1, 1, 1).float()  # image i is filled with the value i
    mixed, targets = mix_batch(x, y, Mix(cutmix=1.0), mix_rng(3, 1, 0, 0))
    for i in range(4):
        own_area = float((mixed[i] == i).float().mean())
        assert targets[i, i] == pytest.approx(own_area)


def test_a_run_with_mixup_and_cutmix_trains(tmp_path) -> None:
    cfg = TrainConfig(
        model="resnet20", data="synthetic", subset=128, val=64, batch_size=32, epochs=1,
        precision="fp32", mixup=0.2, cutmix=1.0, quiet=True, out=str(tmp_path / "r"),
    )  # fmt: skip
    result = train(cfg)
    assert 0.0 <= result.history[0]["train_acc"] <= 1.0 and result.test_acc is not None
