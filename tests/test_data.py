"""CIFAR reading, the validation split, and batched augmentation."""

from __future__ import annotations

import json
import re
import tarfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnzoo.data import Augment, TensorLoader, load_dataset, normalize, stratified_split
from cnnzoo.data.loader import augment_batch
from cnnzoo.errors import UserError
from conftest import REAL_CIFAR10
from helpers import fake_cifar10


@pytest.fixture(scope="module")
def fake_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_cifar10(tmp_path_factory.mktemp("fake") / "cifar-10-python.tar.gz")


def test_reads_official_layout(fake_archive: Path, capsys: pytest.CaptureFixture) -> None:
    ds = load_dataset("cifar10", fake_archive)
    assert "md5" in capsys.readouterr().err  # not the official archive: a warning, not an error
    assert ds.train_x.shape == (50000, 32, 32, 3) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (10000, 32, 32, 3)
    # NHWC with the R, G, B planes in the right channels and aligned with the labels
    y = ds.train_y[:100]
    assert torch.equal(ds.train_x[:100, 5, 7, 0].long(), y)
    assert torch.equal(ds.train_x[:100, 31, 0, 2].long(), 200 + y)
    assert ds.classes[0] == "airplane" and ds.num_classes == 10


def test_decoded_cache_is_reused(fake_archive: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    load_dataset("cifar10", fake_archive, quiet=True)
    cached = list(tmp_path.glob("cifar10-*.safetensors"))
    assert len(cached) == 1
    import cnnzoo.data.cifar as cifar

    monkeypatch.setattr(cifar, "_decode", lambda *a: pytest.fail("decoded again"))
    ds = load_dataset("cifar10", fake_archive, quiet=True)
    assert ds.train_x.shape[0] == 50000


def test_the_archive_md5_is_recorded_and_reported(
    fake_archive: Path, tmp_path: Path, monkeypatch
) -> None:
    """The dataset carries its archive's md5 (decoded or read from the cache), a run records
    it in config.json, and the report names the archive by path and md5."""
    import hashlib

    import cnnzoo.data.cifar as cifar
    from cnnzoo.analysis.report import build_report
    from cnnzoo.train import TrainConfig, train

    expected = hashlib.md5(fake_archive.read_bytes(), usedforsecurity=False).hexdigest()
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    cifar._md5_of.cache_clear()
    assert load_dataset("cifar10", fake_archive, quiet=True).md5 == expected  # decoded
    cifar._md5_of.cache_clear()
    assert load_dataset("cifar10", fake_archive, quiet=True).md5 == expected  # from the cache
    assert load_dataset("cifar10", "synthetic:64").md5 is None

    run = tmp_path / "run"
    cfg = TrainConfig(
        model="resnet20", data=str(fake_archive), subset=16, val=16, batch_size=16, epochs=2,
        stop_after=1, precision="fp32", threads=1, quiet=True, out=str(run),
    )  # fmt: skip
    train(cfg)  # stopped after epoch 1: no pass over the 10,000 test images
    config = json.loads((run / "config.json").read_text())
    assert config["data_source"] == str(fake_archive)
    assert config["data_md5"] == expected
    page = build_report([run], tmp_path / "report.html").read_text()
    assert f"data: <code>{config['data_source']}</code> (md5 <code>{expected}</code>)" in page


def test_reads_extracted_folder(fake_archive: Path, tmp_path: Path) -> None:
    with tarfile.open(fake_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    a = load_dataset("cifar10", tmp_path, quiet=True)  # the folder holding cifar-10-batches-py
    b = load_dataset("cifar10", tmp_path / "cifar-10-batches-py", quiet=True)
    assert torch.equal(a.test_y, b.test_y)
    assert a.md5 is None  # a folder has no archive md5


def test_wrong_image_count_is_a_clear_error(tmp_path: Path) -> None:
    small = fake_cifar10(tmp_path / "cifar-10-python.tar.gz", n_train=50, n_test=10)
    with pytest.raises(UserError, match="50000"):
        load_dataset("cifar10", small, quiet=True)


def test_missing_data_offline_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz.*--data"):
        load_dataset("cifar10", tmp_path)


def test_missing_data_in_the_default_folder_offline_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CNNZOO_DATA", str(tmp_path))
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz not found.*CNNZOO_OFFLINE"):
        load_dataset("cifar10")


def test_a_data_path_that_holds_nothing_is_an_error_never_a_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A typo in --data once became a new folder with CIFAR downloaded into it (``x.tar.xz``
    a folder of that name): only the default folder is downloaded into."""
    from cnnzoo.data import cifar

    class Downloading(Exception):
        pass

    asked: list[Path] = []

    def download(url: str, dest: Path, md5: str, quiet: bool = False) -> None:
        asked.append(dest)
        raise Downloading

    monkeypatch.setattr(cifar, "download", download)
    monkeypatch.delenv("CNNZOO_OFFLINE")
    given = tmp_path / "given"
    given.mkdir()
    for name in ("cifar-10-python.tar.xz", "cifar.tar.bz2", "typo", "a/b"):
        with pytest.raises(
            UserError, match=f"^no such file or folder: {re.escape(str(tmp_path / name))}$"
        ):
            load_dataset("cifar10", tmp_path / name, quiet=True)
    with pytest.raises(UserError, match=r"cifar-10-python\.tar\.gz not found in .*given"):
        load_dataset("cifar10", given, quiet=True)  # a folder, but not one with the data
    assert asked == [] and sorted(p.name for p in tmp_path.iterdir()) == ["given"]
    assert not list(given.iterdir())

    home = tmp_path / "home"
    monkeypatch.setenv("CNNZOO_DATA", str(home))
    with pytest.raises(Downloading):
        load_dataset("cifar10", quiet=True)
    assert asked == [home / "cifar-10-python.tar.gz"]


def test_download_write_failure_is_not_called_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk while saving a download was reported as "you may be offline" (exit 2); it is
    now a WriteFailed (exit 1) naming the file, and nothing is kept. A network failure keeps
    the offline wording."""
    import errno
    import os

    from cnnzoo.data import archive
    from cnnzoo.errors import WriteFailed

    src = tmp_path / "served.tar.gz"
    src.write_bytes(b"archive bytes" * 100)
    md5 = archive.md5sum(src)
    dest = tmp_path / "data" / "cifar-10-python.tar.gz"

    def full_disk(fd: int) -> None:  # the temp file's fsync, before its rename
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(WriteFailed, match=re.escape(f"cannot write {dest}: No space left on")):
        archive.download(src.as_uri(), dest, md5, quiet=True)
    assert not list(dest.parent.iterdir()), "no temp file left"
    monkeypatch.undo()
    with pytest.raises(UserError, match="you may be offline"):
        archive.download((tmp_path / "gone.tar.gz").as_uri(), dest, md5, quiet=True)
    archive.download(src.as_uri(), dest, md5, quiet=True)
    assert dest.read_bytes() == src.read_bytes()

    # a data folder that takes no file: bad input, said before anything is fetched
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    fetched: list[str] = []
    monkeypatch.setattr("cnnzoo.atomic.tempfile.mkstemp", refuse)
    monkeypatch.setattr(archive.urllib.request, "urlopen", lambda *a, **k: fetched.append(a[0]))
    other = tmp_path / "ro" / "cifar-10-python.tar.gz"
    with pytest.raises(UserError, match=re.escape(f"cannot write to {other.parent}: Permission")):
        archive.download(src.as_uri(), other, md5, quiet=True)
    assert not fetched


@pytest.mark.skipif(not REAL_CIFAR10.is_file(), reason="the project's CIFAR-10 copy is absent")
def test_real_archive() -> None:
    ds = load_dataset("cifar10", REAL_CIFAR10, quiet=True)
    assert ds.train_x.shape == (50000, 32, 32, 3) and ds.test_x.shape == (10000, 32, 32, 3)
    assert ds.train_y[0].item() == 6  # frog, as in the official data
    assert torch.equal(ds.train_y.bincount(), torch.full((10,), 5000))
    mean = ds.train_x[:5000].float().mean((0, 1, 2)) / 255
    assert torch.allclose(mean, torch.tensor(ds.mean), atol=0.01)


def test_stratified_split_is_balanced_and_seeded() -> None:
    labels = torch.arange(1000) % 10
    train, val = stratified_split(labels, 100, seed=3)
    assert val.numel() == 100 and train.numel() == 900
    assert torch.equal(labels[val].bincount(), torch.full((10,), 10))
    assert not set(train.tolist()) & set(val.tolist())
    assert torch.equal(val, stratified_split(labels, 100, seed=3)[1])
    assert not torch.equal(val, stratified_split(labels, 100, seed=4)[1])
    assert stratified_split(labels, 0, seed=0)[1].numel() == 0


def test_normalize_uses_true_statistics() -> None:
    x = torch.full((1, 32, 32, 3), 128, dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
    out = normalize(x, mean, std)
    assert out.shape == (1, 3, 32, 32)
    assert out.is_contiguous(memory_format=torch.channels_last)
    expected = (128 / 255 - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(out[0, :, 0, 0], expected)


def test_crop_and_flip_are_exact() -> None:
    x = torch.arange(2 * 32 * 32 * 3).reshape(2, 32, 32, 3).to(torch.uint8)
    aug = Augment(pad=4, flip=True)
    no = torch.zeros(2, dtype=torch.bool)
    centre = torch.full((2,), 4)
    assert torch.equal(augment_batch(x, centre, centre, no, None, aug), x)
    shifted = augment_batch(x, torch.tensor([0, 8]), torch.tensor([4, 4]), no, None, aug)
    assert torch.equal(shifted[0, :, 4:], x[0, :, :28]) and shifted[0, :, :4].eq(0).all()
    assert torch.equal(shifted[1, :, :28], x[1, :, 4:]) and shifted[1, :, 28:].eq(0).all()
    flipped = augment_batch(x, centre, centre, torch.tensor([True, False]), None, aug)
    assert torch.equal(flipped[0], x[0].flip(1)) and torch.equal(flipped[1], x[1])


def test_cutout_zeroes_a_square() -> None:
    x = torch.full((1, 32, 32, 3), 9, dtype=torch.uint8)
    c = torch.full((1,), 4)
    out = augment_batch(x, c, c, torch.zeros(1, dtype=torch.bool), torch.tensor([[16, 16]]),
                        Augment(pad=4, cutout=8))  # fmt: skip
    assert out.eq(0).all(-1).sum().item() == 64


def test_alternating_flips_show_each_image_both_ways_in_consecutive_epochs() -> None:
    # image i is a left-to-right ramp tagged with i, so its orientation and identity can be read
    n = 40
    ramp = torch.arange(32).view(1, 1, 32, 1).expand(n, 32, 32, 3)
    x = (ramp + 100 * (torch.arange(n).view(n, 1, 1, 1) % 2)).to(torch.uint8)
    loader = TensorLoader(x, torch.arange(n), 8, (0.0,) * 3, (1.0,) * 3, train=True,
                          augment=Augment(pad=0, alternate_flip=True), seed=3)  # fmt: skip

    def flipped(epoch: int) -> torch.Tensor:  # (n,) bool, indexed by image
        loader.set_epoch(epoch)
        out = torch.zeros(n, dtype=torch.bool)
        for xb, yb in loader:
            out[yb] = xb[:, 0, 0, 0] > xb[:, 0, 0, -1]  # ramp runs right-to-left: mirrored
        return out

    e0, e1, e2, e3 = (flipped(e) for e in range(4))
    assert 0 < e0.sum() < n  # random in the first epoch
    assert torch.equal(e1, ~e0) and torch.equal(e2, e0) and torch.equal(e3, ~e0)


def test_low_res_epochs_downsample_the_augmented_batch_then_stop() -> None:
    x = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    y = torch.arange(16)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.3, 0.4)

    def batches(aug: Augment, epoch: int) -> list[torch.Tensor]:
        loader = TensorLoader(x, y, 8, mean, std, train=True, augment=aug, seed=5)
        loader.set_epoch(epoch)
        return [xb for xb, _ in loader]

    full = Augment(pad=2, reflect=True, alternate_flip=True)
    low = Augment(pad=2, reflect=True, alternate_flip=True, low_res=24, low_res_epochs=2)
    for epoch in (1, 2):  # the same crops and flips, then an antialiased bilinear resize
        for a, b in zip(batches(full, epoch), batches(low, epoch), strict=True):
            assert b.shape == (8, 3, 24, 24) and b.is_contiguous(memory_format=torch.channels_last)
            want = F.interpolate(a, size=(24, 24), mode="bilinear", antialias=True)
            assert torch.allclose(b, want, atol=1e-6)
            # a 4/3 downsample keeps each channel's mean (the normalisation's statistics)
            assert torch.allclose(b.mean((2, 3)), a.mean((2, 3)), atol=0.05)
    for a, b in zip(batches(full, 3), batches(low, 3), strict=True):
        assert torch.equal(a, b)  # after epoch 2: the full-size batches themselves


def _loader(seed: int = 0, rank: int = 0, world: int = 1, batch: int = 8) -> TensorLoader:
    x = torch.arange(40).repeat_interleave(32 * 32 * 3).reshape(40, 32, 32, 3).to(torch.uint8)
    y = torch.arange(40)
    return TensorLoader(x, y, batch, (0.0,) * 3, (1.0,) * 3, train=True, augment=Augment(),
                        seed=seed, rank=rank, world_size=world)  # fmt: skip


def test_loader_is_deterministic_per_seed_and_epoch() -> None:
    def labels(loader: TensorLoader, epoch: int) -> list[int]:
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    a, b = _loader(seed=1), _loader(seed=1)
    assert labels(a, 1) == labels(b, 1)
    assert labels(a, 1) != labels(a, 2)
    b.set_epoch(2)  # same seed and epoch: the same augmented pixels too
    assert torch.equal(next(iter(a))[0], next(iter(b))[0])


def test_ranks_see_disjoint_shards_of_the_same_permutation() -> None:
    single = _loader(batch=8)
    ranks = [_loader(rank=r, world=2, batch=4) for r in range(2)]
    for loader in (single, *ranks):
        loader.set_epoch(3)
    one = [y for _, y in single]
    two = [list(zip(*[iter(r) for r in ranks], strict=True))]
    shards = [torch.cat([b[1] for b in step]) for step in two[0]]
    assert len(one) == len(shards) == 5
    for a, b in zip(one, shards, strict=True):
        assert sorted(a.tolist()) == sorted(b.tolist())  # the same images in each global step
    seen0 = torch.cat([y for _, y in ranks[0]])
    seen1 = torch.cat([y for _, y in ranks[1]])
    assert not set(seen0.tolist()) & set(seen1.tolist())


def test_eval_loader_counts_every_image_once() -> None:
    x = torch.zeros(10, 32, 32, 3, dtype=torch.uint8)
    y = torch.arange(10)
    seen = []
    for r in range(3):
        loader = TensorLoader(x, y, 3, (0.0,) * 3, (1.0,) * 3, rank=r, world_size=3)
        seen += torch.cat([b for _, b in loader]).tolist()
    assert sorted(seen) == list(range(10))


def test_synthetic_size_is_selectable_and_malformed_size_is_a_user_error():
    default = load_dataset("cifar10", "synthetic")
    big = load_dataset("cifar10", "synthetic:3000")
    assert len(default.train_y) == 2000 and len(big.train_y) == 3000
    assert big.train_x.shape[1:] == (32, 32, 3) and big.train_x.dtype == torch.uint8
    for bad in ("synthetic:", "synthetic:abc", "synthetic:5"):
        if bad == "synthetic:":
            assert len(load_dataset("cifar10", bad).train_y) == 2000
            continue
        with pytest.raises(UserError, match="synthetic:N"):
            load_dataset("cifar10", bad)
