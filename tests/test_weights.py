"""Weights files: safetensors export and load, the shipped weights, sha256 checks, torch.hub."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnzoo
from cnnzoo.data.archive import md5sum
from cnnzoo.errors import UserError
from cnnzoo.models import weights as W
from cnnzoo.train import load_checkpoint, model_from_checkpoint
from conftest import REAL_CIFAR10
from helpers import ROOT, assert_one_error_line, cnnzoo_env, make_checkpoint, run_main

SHIPPED = [(name, tag) for name, tags in W.manifest().items() for tag in tags]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("weights") / "best.pt")


def test_export_then_load_gives_the_same_model(ckpt, tmp_path, capsys) -> None:
    out = tmp_path / "r20.safetensors"
    code, stdout, err = run_main(["export", str(ckpt), "-o", str(out)], capsys)
    assert code == 0, err
    assert f"sha256 {W.sha256_file(out)}" in stdout
    model = cnnzoo.create_model("resnet20", weights=str(out))
    ref = model_from_checkpoint(load_checkpoint(ckpt))
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model(x), ref(x))  # fp32: bit-identical, BN statistics included
    meta, saved = model.pretrained_cfg, load_checkpoint(ckpt)
    assert meta["model_name"] == "resnet20" and meta["classes"] == saved["classes"]
    assert meta["mean"] == pytest.approx(saved["mean"]) and meta["dtype"] == "float32"
    assert not model.training


def test_half_export_is_half_the_size_and_close(ckpt, tmp_path, capsys) -> None:
    full, half = tmp_path / "f.safetensors", tmp_path / "h.safetensors"
    assert run_main(["export", str(ckpt), "-o", str(full)], capsys)[0] == 0
    assert run_main(["export", str(ckpt), "-o", str(half), "--half"], capsys)[0] == 0
    assert half.stat().st_size < 0.55 * full.stat().st_size
    x = torch.randn(2, 3, 32, 32)
    a = cnnzoo.create_model("resnet20", weights=str(full))(x)
    b = cnnzoo.create_model("resnet20", weights=str(half))(x)
    assert torch.allclose(a, b, atol=0.05 * a.abs().max().item())


def test_wrong_model_classes_or_file_are_clear_errors(ckpt, tmp_path) -> None:
    out = tmp_path / "r20.safetensors"
    from cnnzoo.inference.weights import export_safetensors

    export_safetensors(ckpt, out)
    with pytest.raises(UserError, match="holds weights for resnet20, not resnet32"):
        cnnzoo.create_model("resnet32", weights=str(out))
    with pytest.raises(ValueError, match="for 10 classes, not 100"):
        cnnzoo.create_model("resnet20", num_classes=100, weights=str(out))
    with pytest.raises(UserError, match="no pretrained weights 'imagenet'"):
        cnnzoo.create_model("resnet20", weights="imagenet")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 40)
    with pytest.raises(UserError, match="cannot read weights"):
        cnnzoo.create_model("resnet20", weights=str(tmp_path / "junk.safetensors"))


def test_sha256_mismatch_is_refused_with_one_line(ckpt, tmp_path, monkeypatch, capsys) -> None:
    from cnnzoo.inference.weights import export_safetensors

    _, sha = export_safetensors(ckpt, tmp_path / "resnet20-cifar10.safetensors")
    entry = {"resnet20": {"cifar10": {"file": "resnet20-cifar10.safetensors", "sha256": sha}}}
    (tmp_path / "manifest.json").write_text(json.dumps(entry))
    monkeypatch.setattr(W, "WEIGHTS_DIR", tmp_path)
    monkeypatch.setattr(W, "MANIFEST", tmp_path / "manifest.json")
    assert cnnzoo.create_model("resnet20", pretrained=True).pretrained_cfg["num_classes"] == 10
    blob = bytearray((tmp_path / "resnet20-cifar10.safetensors").read_bytes())
    blob[-1] ^= 1  # one bit of one weight
    (tmp_path / "resnet20-cifar10.safetensors").write_bytes(bytes(blob))
    with pytest.raises(UserError, match="sha256"):
        cnnzoo.create_model("resnet20", pretrained=True)
    code, _, err = run_main(["eval", "--pretrained", "resnet20", "--data", "synthetic"], capsys)
    assert code == 2 and "sha256" in assert_one_error_line(err)


def test_eval_needs_exactly_one_source(ckpt, capsys) -> None:
    code, _, err = run_main(["eval"], capsys)
    assert code == 2 and "--pretrained" in assert_one_error_line(err)
    code, _, err = run_main(["eval", str(ckpt), "--pretrained", "resnet20"], capsys)
    assert code == 2


def test_something_is_shipped_within_the_size_budget() -> None:
    assert ("resnet20", "cifar10") in SHIPPED
    total = sum(p.stat().st_size for p in W.WEIGHTS_DIR.glob("*.safetensors"))
    assert total <= 15e6
    listed = {e["file"] for tags in W.manifest().values() for e in tags.values()}
    assert listed == {p.name for p in W.WEIGHTS_DIR.glob("*.safetensors")}


def test_list_models_pretrained_names_the_shipped_ones(tmp_path, monkeypatch, capsys) -> None:
    assert cnnzoo.list_models(pretrained=True) == sorted({name for name, _ in SHIPPED})
    entry = {"cifar10": {"file": "x.safetensors", "sha256": "0" * 64}}
    listing = tmp_path / "manifest.json"  # a listing with a name the registry does not know
    listing.write_text(json.dumps({"vgg11": entry, "resnet20": entry, "nonesuch": entry}))
    monkeypatch.setattr(W, "MANIFEST", listing)
    assert cnnzoo.list_models(pretrained=True) == ["resnet20", "vgg11"]
    assert cnnzoo.list_models("vgg*", pretrained=True) == ["vgg11"]
    code, out, _ = run_main(["models", "--pretrained", "--format", "json"], capsys)
    assert code == 0 and [r["name"] for r in json.loads(out)] == ["resnet20", "vgg11"]
    code, _, err = run_main(["models", "plain*", "--pretrained"], capsys)
    assert code == 2 and "no model with shipped weights" in assert_one_error_line(err)


@pytest.mark.parametrize(("name", "tag"), SHIPPED)
def test_shipped_weights_load_with_their_metadata(name: str, tag: str) -> None:
    model = cnnzoo.create_model(name, weights=tag)
    meta = model.pretrained_cfg
    for key in ("recipe", "command", "data", "data_md5", "test_acc", "classes"):
        assert meta.get(key) not in (None, ""), key
    # chosen on a validation split, or (a run without one, as `fast` trains) its final weights
    if meta["run_val_acc"] is None:
        assert meta["best_epoch"] == meta["epochs"]
    else:
        assert 0.1 < meta["run_val_acc"] <= 1.0
    assert meta["num_classes"] == len(meta["classes"]) == 10
    assert 0.5 < meta["test_acc"] <= 1.0
    assert model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)


@pytest.mark.parametrize(("name", "tag"), SHIPPED)
def test_shipped_accuracy_on_the_shared_archive(name: str, tag: str, capsys) -> None:
    if not REAL_CIFAR10.is_file():
        pytest.skip("the shared CIFAR-10 archive is not here")
    meta = cnnzoo.create_model(name, weights=tag).pretrained_cfg
    if meta["data_md5"] != md5sum(REAL_CIFAR10):
        pytest.skip("the shipped accuracy was measured on another version of the archive")
    code, out, err = run_main(
        ["eval", "--pretrained", name, "--data", str(REAL_CIFAR10), "--format", "json"], capsys
    )
    assert code == 0, err
    acc = json.loads(out)["accuracy"]
    # measured in fp32 when shipped; bf16 evaluation here may move a few of 10,000 predictions
    assert acc == pytest.approx(meta["test_acc"], abs=0.005)


def test_torch_hub_loads_from_a_checkout(tmp_path) -> None:
    code = (
        "import torch, sys\n"
        "m = torch.hub.load(sys.argv[1], 'resnet20', source='local', pretrained=True)\n"
        "print(type(m).__name__, m.pretrained_cfg['recipe'])\n"
        "print(sys.modules['cnnzoo'].__file__)\n"
    )
    # another cnnzoo found first on the path (as another installed version would be): hubconf
    # must load the checkout's own package, not that one
    decoy = tmp_path / "elsewhere" / "cnnzoo"
    decoy.mkdir(parents=True)
    (decoy / "__init__.py").write_text("")
    env = cnnzoo_env({"TORCH_HOME": str(tmp_path)})
    env["PYTHONPATH"] = str(decoy.parent)  # hubconf.py itself must find the checkout's src/
    got = subprocess.run(
        [sys.executable, "-c", code, str(ROOT)], env=env, capture_output=True, text=True
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines()[0].startswith("ResNet ")
    assert Path(got.stdout.splitlines()[1]).resolve().is_relative_to(ROOT / "src")


def test_weights_are_package_data() -> None:
    import tomllib

    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    patterns = patterns["package-data"]["cnnzoo"]
    pkg = ROOT / "src" / "cnnzoo"
    covered = {p for pattern in patterns for p in pkg.glob(pattern)}
    assert W.MANIFEST in covered
    assert set(W.WEIGHTS_DIR.glob("*.safetensors")) <= covered


def test_a_copied_package_finds_its_weights_offline(tmp_path) -> None:
    """The weights are found beside the package wherever it is installed, not only in src/."""
    site = tmp_path / "site"
    shutil.copytree(ROOT / "src" / "cnnzoo", site / "cnnzoo")
    code = "import cnnzoo; m = cnnzoo.create_model('resnet20', pretrained=True); print('ok')"
    env = cnnzoo_env({"PYTHONPATH": str(site)})
    got = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert got.returncode == 0 and got.stdout.strip() == "ok", got.stderr


def test_predict_with_shipped_weights_names_cifar_classes(tmp_path, capsys) -> None:
    from PIL import Image

    img = tmp_path / "x.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    code, out, err = run_main(["predict", "resnet20", "--pretrained", str(img), "--json"], capsys)
    assert code == 0, err
    top = json.loads(out)[0]["top_k"]
    classes = cnnzoo.create_model("resnet20", pretrained=True).pretrained_cfg["classes"]
    assert {t["class"] for t in top} <= set(classes) and "airplane" in classes


@pytest.mark.parametrize("name", [name for name, tag in SHIPPED if tag == W.DEFAULT_TAG])
def test_shipped_weights_exported_again_keep_their_tta_views(name, tmp_path, capsys) -> None:
    """eval --pretrained measures with the views the shipped accuracy was measured with; a
    copy made by `cnnzoo export NAME --pretrained` (the default tag's file) must say the same."""
    out = tmp_path / "copy.safetensors"
    code, _, err = run_main(["export", name, "--pretrained", "-o", str(out)], capsys)
    assert code == 0, err
    shipped = cnnzoo.create_model(name, pretrained=True).pretrained_cfg
    copy = cnnzoo.create_model(name, weights=out).pretrained_cfg
    # (a key an older file lacks reads as eval and predict read it: no grid, all images, 32 px)
    unset = {"tta": False, "tta_shift": 0, "tta_grid": False, "tta_fraction": 1.0, "image_size": 32}
    for key in ("tta", "tta_shift", "tta_grid", "tta_fraction", "image_size", "classes"):
        assert copy[key] == shipped.get(key, unset.get(key)), key


def test_image_size_travels_with_the_weights(tmp_path, capsys) -> None:
    """A 64-px run's exported weights were read back as 32 px (the metadata lacked the size):
    predict resized images to the wrong size."""
    from cnnzoo.inference.predict import Predictor, checkpoint_image_size
    from cnnzoo.inference.weights import pretrained_checkpoint

    ckpt = load_checkpoint(make_checkpoint(tmp_path / "c.pt"))
    ckpt["config"]["image_size"] = 64
    torch.save(ckpt, tmp_path / "c64.pt")
    out = tmp_path / "r20-64.safetensors"
    code, _, err = run_main(["export", str(tmp_path / "c64.pt"), "-o", str(out)], capsys)
    assert code == 0, err
    back = pretrained_checkpoint("resnet20", str(out))
    assert back["pretrained"]["image_size"] == 64
    assert checkpoint_image_size(back) == 64 and Predictor(back).image_size == 64
    # a file written before the size was recorded (the shipped ones) is CIFAR's 32
    assert checkpoint_image_size(pretrained_checkpoint("resnet20")) == 32


def test_a_failed_safetensors_write_is_exit_1_and_keeps_the_old_file(
    ckpt, tmp_path, monkeypatch, capsys
) -> None:
    """A full disk was a UserError (exit 2, "bad input"); it is a write failure (exit 1)."""
    import errno
    import os

    out = tmp_path / "w.safetensors"
    out.write_bytes(b"the user's previous file")

    def full_disk(fd: int) -> None:  # the temp file's fsync, before its rename
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    code, _, err = run_main(["export", str(ckpt), "-o", str(out)], capsys)
    assert code == 1
    line = assert_one_error_line(err)
    assert f"cannot write {out}: No space left on device" in line
    assert out.read_bytes() == b"the user's previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.safetensors"]


@pytest.mark.parametrize("suffix", [".safetensors", ".onnx"])
def test_export_into_an_unwritable_folder_is_bad_input(suffix, ckpt, tmp_path, monkeypatch, capsys):
    """A folder that refuses new files (as a read-only one would, for anyone but root) is the
    user's to fix (exit code 2), found before anything is written, for both formats; only a
    write that fails later is exit code 1."""
    if suffix == ".onnx":
        pytest.importorskip("onnxruntime")

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("cnnzoo.atomic.tempfile.mkstemp", refuse)
    code, _, err = run_main(["export", str(ckpt), "-o", str(tmp_path / f"w{suffix}")], capsys)
    assert code == 2
    assert assert_one_error_line(err) == f"error: cannot write to {tmp_path}: Permission denied"
    assert not list(tmp_path.iterdir())
