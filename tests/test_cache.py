"""The decoded-data cache: verified on read, rebuilt with a warning when damaged, built once by
processes that start together."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import cnnzoo.data.cifar as cifar
from cache_worker import digest
from cnnzoo.data import cache, load_dataset
from helpers import ROOT, cnnzoo_env, fake_cifar10


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return fake_cifar10(tmp_path_factory.mktemp("fake") / "cifar-10-python.tar.gz")


@pytest.fixture(scope="module")
def fresh(archive: Path) -> str:
    """The digest of a decode that no cache took part in."""
    spec = cifar.DATASETS["cifar10"]
    a = cifar._decode(spec, archive, quiet=True)
    classes = [str(c) for c in a.pop("classes")]
    tensors = {k: torch.from_numpy(v) for k, v in a.items()}
    md5 = cifar.archive_md5(archive)
    return digest(cifar._to_dataset("cifar10", spec, tensors, classes, archive, md5))


@pytest.fixture(scope="module")
def good_cache(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache file written by a first start, for the damage tests to copy (one decode)."""
    folder = tmp_path_factory.mktemp("good-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CNNZOO_CACHE", str(folder))
        load_dataset("cifar10", archive, quiet=True)
    return _cache_file(folder)


def _cache_file(folder: Path) -> Path:
    (path,) = folder.glob("cifar10-*.safetensors")
    return path


def _key(archive: Path) -> str:
    st = archive.stat()
    return f"{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}"


def _flip_byte(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[: len(d) // 2], id="truncated"),
        pytest.param(lambda d: os.urandom(len(d)), id="garbage"),
        pytest.param(lambda d: _flip_byte(d, len(d) - 20_000_000), id="flipped-pixel"),
    ],
)
def test_damaged_cache_is_rebuilt_with_one_warning(
    damage, archive: Path, fresh: str, good_cache: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    path = tmp_path / good_cache.name
    path.write_bytes(damage(good_cache.read_bytes()))
    ds = load_dataset("cifar10", archive)
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if str(path) in ln]
    assert len(warnings) == 1 and warnings[0].startswith("warning: "), err
    assert "damaged" in warnings[0] and "decoding again" in warnings[0]
    assert digest(ds) == fresh
    # the rebuilt file is whole again: the next start reads it without a word
    monkeypatch.setattr(cifar, "_decode", lambda *a: pytest.fail("decoded again"))
    assert digest(load_dataset("cifar10", archive)) == fresh
    assert capsys.readouterr().err == ""


def _small() -> tuple[dict[str, torch.Tensor], dict]:
    x = torch.arange(4 * 5 * 5 * 3).to(torch.uint8).reshape(4, 5, 5, 3)
    return {"x": x, "y": torch.arange(4) * 1000}, {"classes": ["cat", "dog"]}


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: d[:-1], id="one-byte-short"),
        pytest.param(lambda d: d[:7], id="truncated-length"),
        pytest.param(lambda d: b"", id="empty"),
        pytest.param(lambda d: b"\xff" * len(d), id="garbage"),
        pytest.param(lambda d: _flip_byte(d, len(d) - 1), id="flipped-label-byte"),
        pytest.param(lambda d: d.replace(b"cat", b"cot"), id="changed-class-name"),
    ],
)
def test_any_damage_is_caught_and_rebuilt(damage, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    builds = []

    def build():
        builds.append(1)
        return _small()

    cache.load_or_build("t", "key", build)
    path = cache.cache_path("t", "key")
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(cache.CacheError):
        cache.read(path, "key")
    arrays, meta = cache.load_or_build("t", "key", build)
    err = capsys.readouterr().err
    assert len(builds) == 2 and f"warning: decoded-data cache {path} is damaged" in err
    want, want_meta = _small()
    assert meta == want_meta and all(torch.equal(arrays[k], want[k]) for k in want)
    cache.read(path, "key")  # written whole again


def test_cache_for_another_key_or_version_is_not_used(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path))
    arrays, meta = _small()
    path = cache.cache_path("t", "k1")
    path.parent.mkdir(parents=True, exist_ok=True)
    cache.write(path, "k1", arrays, meta)
    got, got_meta = cache.read(path, "k1")
    assert torch.equal(got["x"], arrays["x"]) and got_meta == meta
    with pytest.raises(cache.CacheError, match="another source"):
        cache.read(path, "k2")
    monkeypatch.setattr(cache, "VERSION", cache.VERSION + 1)
    with pytest.raises(cache.CacheError, match="version"):
        cache.read(path, "k1")


def test_unwritable_cache_folder_is_a_warning(tmp_path: Path, monkeypatch, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("CNNZOO_CACHE", str(blocker / "cache"))
    arrays, _ = cache.load_or_build("t", "key", _small)
    assert "warning: could not cache decoded data" in capsys.readouterr().err
    assert torch.equal(arrays["x"], _small()[0]["x"])


@pytest.mark.slow
def test_two_concurrent_first_starts_build_one_good_cache(
    archive: Path, fresh: str, tmp_path: Path
) -> None:
    env = cnnzoo_env({"CNNZOO_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"})
    go = tmp_path / "go"
    worker = [sys.executable, str(ROOT / "tests" / "cache_worker.py"), str(archive)]
    procs = [
        subprocess.Popen(
            [*worker, str(tmp_path / f"ready{i}"), str(go)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)):
        assert time.monotonic() < deadline, "workers did not start"
        time.sleep(0.01)
    go.touch()  # both start loading now
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert out.split()[-1] == fresh  # both train on data equal to a fresh decode
    # one of them decoded; the other waited for the lock and read the first one's file
    assert sum(out.split().count("decoding") for out, _ in outs) == 1
    assert not [name for name in os.listdir(tmp_path / "cache") if name.endswith(".tmp")]
    arrays, meta = cache.read(_cache_file(tmp_path / "cache"), _key(archive))
    assert meta["classes"][0] == "airplane" and arrays["train_x"].shape == (50000, 32, 32, 3)


def test_a_batch_file_rewritten_in_place_is_decoded_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extracted folder's cache was keyed by the folder's own size and mtime, which do not
    change when a batch file is rewritten in place: the old decode was served. Each batch
    file's size and mtime are now in the key (a tiny spec keeps the files small)."""
    import pickle

    from hostile import TINY, valid_blobs

    monkeypatch.setitem(cifar.DATASETS, "cifar10", TINY)
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name, blob in valid_blobs().items():
        (folder / name).write_bytes(blob)
    before = load_dataset("cifar10", folder, quiet=True)

    test_batch = folder / "test_batch"
    d = pickle.loads(test_batch.read_bytes(), encoding="latin1")
    d["labels"] = [(y + 1) % 10 for y in d["labels"]]
    st, folder_st = test_batch.stat(), folder.stat()
    with open(test_batch, "r+b") as f:  # in place: same inode, the folder's entry untouched
        f.write(pickle.dumps(d, 2))
        f.truncate()
    os.utime(test_batch, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    os.utime(folder, ns=(folder_st.st_atime_ns, folder_st.st_mtime_ns))
    assert (folder.stat().st_size, folder.stat().st_mtime_ns) == (
        folder_st.st_size,
        folder_st.st_mtime_ns,
    )

    after = load_dataset("cifar10", folder, quiet=True)
    assert torch.equal(after.test_y, (before.test_y + 1) % 10)
    assert torch.equal(after.train_x, before.train_x)
