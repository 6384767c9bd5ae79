"""``--data PATH`` as an image folder: layout, decode policy, splits, cache, errors, and a run
whose checkpoint names the folder's classes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import cnnzoo.data.folder as folder
from cnnzoo import cli
from cnnzoo.data import load_dataset
from cnnzoo.data.images import load_image
from cnnzoo.errors import UserError
from helpers import assert_one_error_line, run_main

CLASSES = ("apple", "banana", "cherry")  # sorted, as the class indices are
COLOURS = {"apple": (200, 30, 30), "banana": (230, 220, 40), "cherry": (60, 0, 160)}


def make_folder(
    root: Path, per_class: int = 12, splits: tuple[str, ...] = ("train",), seed: int = 0
) -> Path:
    """3 classes of 40×30 images, each class one colour plus noise; every fourth file is a
    JPEG, an RGBA PNG (half transparent) or a grayscale PNG, the rest RGB PNGs."""
    rng = np.random.default_rng(seed)
    for split in splits:
        for c in CLASSES:
            d = root / split / c
            d.mkdir(parents=True)
            for i in range(per_class):
                noise = rng.integers(-40, 40, (30, 40, 3))
                rgb = np.clip(np.array(COLOURS[c]) + noise, 0, 255).astype(np.uint8)
                if i % 4 == 0:
                    Image.fromarray(rgb).save(d / f"{i}.jpg", quality=90)
                elif i % 4 == 1:
                    alpha = np.full((30, 40, 1), 128, np.uint8)
                    Image.fromarray(np.concatenate([rgb, alpha], 2)).save(d / f"{i}.png")
                elif i % 4 == 2:
                    Image.fromarray(rgb[..., 0]).save(d / f"{i}.png")  # mode L
                else:
                    Image.fromarray(rgb).save(d / f"{i}.png")
    return root


def _files(root: Path, split: str) -> list[tuple[Path, int]]:
    return [
        (f, label)
        for label, c in enumerate(CLASSES)
        for f in sorted((root / split / c).iterdir())
        if f.suffix in (".png", ".jpg")
    ]


def test_images_follow_predicts_policy_with_folder_classes(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "fruit", splits=("train", "test"))
    ds = load_dataset(data=root, quiet=True)
    assert ds.classes == list(CLASSES) and ds.num_classes == 3 and ds.name == "fruit"
    assert ds.train_x.shape == (36, 32, 32, 3) and ds.train_x.dtype == torch.uint8
    assert ds.test_x.shape == (36, 32, 32, 3) and ds.val_x is None
    # every image is exactly predict's decode of its file (RGBA on white, grayscale repeated)
    files = _files(root, "train")
    want = torch.stack([load_image(f, 32) for f, _ in files])
    assert torch.equal(ds.train_x, want)
    assert ds.train_y.tolist() == [label for _, label in files]
    gray = ds.train_x[2]  # 2.png of apple: mode L, the three channels equal
    assert torch.equal(gray[..., 0], gray[..., 1]) and torch.equal(gray[..., 1], gray[..., 2])
    # mean and std: the training images' own, per channel, population std
    x = ds.train_x.double() / 255
    assert ds.mean == pytest.approx(x.mean((0, 1, 2)).tolist(), abs=1e-9)
    assert ds.std == pytest.approx(x.std((0, 1, 2), correction=0).tolist(), abs=1e-9)
    assert str(root) in ds.source and "image folder" in ds.source


def test_image_size_resizes_and_is_part_of_the_cache_key(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f", per_class=4, splits=("train", "test"))
    small = load_dataset(data=root, image_size=16, quiet=True)
    assert small.train_x.shape == (12, 16, 16, 3) and small.image_size == 16
    assert load_dataset(data=root, quiet=True).train_x.shape == (12, 32, 32, 3)
    assert len(list((tmp_path / "cache").glob("folder-f-*.safetensors"))) == 2


def test_without_test_folder_a_stratified_split_is_held_out_and_said(tmp_path, capsys) -> None:
    root = make_folder(tmp_path / "f", per_class=20)
    ds = load_dataset(data=root)
    err = capsys.readouterr().err
    assert "no test/ folder" in err and "6 of its 60" in err
    assert ds.test_y.bincount().tolist() == [2, 2, 2] and ds.train_x.shape[0] == 54
    # the same split on every start: `eval` of a run sees the run's test set
    again = load_dataset(data=root, quiet=True)
    assert torch.equal(again.test_x, ds.test_x) and torch.equal(again.train_y, ds.train_y)
    # no image is in both
    flat = lambda x: {bytes(im.numpy().tobytes()) for im in x}  # noqa: E731
    assert not flat(ds.test_x) & flat(ds.train_x)


def test_val_folder_is_the_validation_set(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "f", per_class=8, splits=("train", "val", "test"))
    ds = load_dataset(data=root, quiet=True)
    assert ds.val_x is not None and ds.val_x.shape == (24, 32, 32, 3)
    assert torch.equal(ds.val_x, torch.stack([load_image(f) for f, _ in _files(root, "val")]))
    out = tmp_path / "run"
    code, _, err = run_main(
        ["train", "resnet20", "--data", str(root), "--epochs", "1", "--batch-size", "8",
         "--precision", "fp32", "--threads", "1", "--quiet", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["val"] == 24 and cfg["train_images"] == 24  # all of train/, val/ held apart
    code, _, err = run_main(
        ["train", "resnet20", "--data", str(root), "--val", "5", "--out", str(tmp_path / "r2")],
        capsys,
    )
    assert code == 2 and "val/" in assert_one_error_line(err)
    code, _, err = run_main(
        ["train", "resnet20", "--data", str(root), "--epochs", "1", "--batch-size", "8",
         "--val", "0", "--precision", "fp32", "--threads", "1", "--quiet",
         "--out", str(tmp_path / "r3")],
        capsys,
    )  # fmt: skip
    assert code == 0, err  # --val 0 (the fast recipe's): no validation set at all
    assert json.loads((tmp_path / "r3" / "config.json").read_text())["val"] == 0


def test_unreadable_files_are_skipped_with_a_count(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f", per_class=4, splits=("train", "test"))
    (root / "train" / "banana" / "broken.png").write_bytes(b"\x89PNG not really")
    (root / "train" / "banana" / "notes.txt").write_text("not an image suffix: not counted")
    for start in ("cold", "warm"):  # the count is said again when the cache is read
        ds = load_dataset(data=root)
        err = capsys.readouterr().err
        assert "skipped 1 unreadable image file(s)" in err, start
        assert "broken.png" in err and ds.train_x.shape[0] == 12
    monkeypatch.setattr(folder, "load_image", lambda *a: pytest.fail("decoded again"))
    load_dataset(data=root, quiet=True)  # still cached: nothing changed


def test_a_changed_file_decodes_again(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CNNZOO_CACHE", str(tmp_path / "cache"))
    root = make_folder(tmp_path / "f", per_class=4, splits=("train", "test"))
    first = load_dataset(data=root, quiet=True)
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(root / "train" / "apple" / "3.png")
    second = load_dataset(data=root, quiet=True)
    assert not torch.equal(first.train_x, second.train_x) and second.train_x[3].eq(0).all()


@pytest.mark.parametrize(
    "damage, needle",
    [
        (lambda r: [p.unlink() for p in (r / "train" / "cherry").iterdir()], "holds no images"),
        (lambda r: [(r / "train" / c).rename(r / c) for c in CLASSES], "no class folders"),
        (lambda r: (r / "test" / "durian").mkdir(), "classes that train/ lacks: durian"),
        (
            lambda r: [p.write_bytes(b"junk") for p in (r / "train" / "apple").iterdir()],
            "no readable images",
        ),
        (lambda r: (r / "train").rename(r / "training"), "no train/ folder"),
    ],
    ids=["empty-class", "no-classes", "unknown-test-class", "all-unreadable", "no-train"],
)
def test_bad_folders_are_one_clear_line(damage, needle, tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "f", per_class=4, splits=("train", "test"))
    damage(root)
    with pytest.raises(UserError, match=needle):
        load_dataset(data=root, quiet=True)
    code, _, err = run_main(["train", "resnet20", "--data", str(root), "--epochs", "1"], capsys)
    assert code == 2 and needle in assert_one_error_line(err)


def test_class_folders_directly_in_path_get_a_hint(tmp_path: Path) -> None:
    root = make_folder(tmp_path / "f", per_class=2)
    for c in CLASSES:
        (root / "train" / c).rename(root / c)
    (root / "train").rmdir()
    with pytest.raises(UserError, match=r"class folders directly; move them to .*/train/"):
        load_dataset(data=root, quiet=True)


@pytest.mark.parametrize("data", ["synthetic", "cifar"])
def test_image_size_is_for_image_folders(data, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--image-size 48 applies to image folders"):
        load_dataset(data=data if data == "synthetic" else tmp_path / "c.tar.gz", image_size=48)


def test_a_model_that_needs_32_pixels_refuses_another_size(tmp_path: Path, capsys) -> None:
    root = make_folder(tmp_path / "f", per_class=2, splits=("train", "test"))
    code, _, err = run_main(
        ["train", "vgg11", "--data", str(root), "--image-size", "64", "--out", str(tmp_path / "r")],
        capsys,
    )
    assert code == 2 and "vgg11 does not take 64x64" in assert_one_error_line(err)
    assert not (tmp_path / "r").exists()


def test_train_then_predict_prints_the_folders_classes(tmp_path: Path, capsys) -> None:
    """The acceptance run: the default command, then predict on one of the folder's images."""
    root = make_folder(tmp_path / "fruit", per_class=60)  # enough for the default batch of 128
    out = tmp_path / "run"
    code, _, err = run_main(
        ["train", "resnet20", "--data", str(root), "--epochs", "1", "--out", str(out),
         "--precision", "fp32", "--threads", "1"],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "no test/ folder" in err
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data_source"].startswith(str(root)) and cfg["num_classes"] == 3
    image = root / "train" / "banana" / "3.png"
    code, text, err = run_main(["predict", str(out), str(image), "--top-k", "3"], capsys)
    assert code == 0, err
    lines = text.splitlines()
    assert lines[0] == str(image)
    assert sorted(ln.split()[0] for ln in lines[1:]) == list(CLASSES)
    code, text, err = run_main(["eval", str(out)], capsys)  # the held-out test set again
    assert code == 0 and "(18 images)" in text, err


@pytest.fixture(scope="module")
def run24(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(image folder, run directory) of one epoch at --image-size 24."""
    tmp = tmp_path_factory.mktemp("run24")
    root = make_folder(tmp / "f", per_class=8, splits=("train", "test"))
    out = tmp / "run"
    code = cli.main(
        ["train", "resnet20", "--data", str(root), "--epochs", "1", "--image-size", "24",
         "--batch-size", "8", "--precision", "fp32", "--threads", "1", "--quiet",
         "--out", str(out)]
    )  # fmt: skip
    assert code == 0
    return root, out


def test_a_run_at_another_image_size_predicts_at_that_size(run24, capsys) -> None:
    from cnnzoo.inference.predict import Predictor

    root, out = run24
    pred = Predictor(out / "best.pt")
    assert pred.image_size == 24 and pred.classes == list(CLASSES)
    image = root / "test" / "cherry" / "1.png"
    code, text, err = run_main(["predict", str(out), str(image)], capsys)
    assert code == 0 and "cherry" in text, err


def test_a_run_at_another_image_size_exports_at_that_size(run24, tmp_path, capsys) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, out = run24
    code, text, err = run_main(["export", str(out / "best.pt"), "-o", str(tmp_path / "m.onnx")],
                               capsys)  # fmt: skip
    assert code == 0 and "(batch, 3, 24, 24)" in text, err
    assert "on 24 images (f test split)" in text  # the folder's own test images were checked
    dims = onnx.load(str(tmp_path / "m.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims[1:]] == [3, 24, 24]


def test_eval_on_a_folder_with_other_class_names_is_refused(run24, tmp_path, capsys) -> None:
    """Three classes again, but not the trained ones: the labels would be scored against
    other classes (cherry's images as 'apple'), so eval refuses instead of a wrong number."""
    import shutil

    root, out = run24
    other = tmp_path / "other"
    for split in ("train", "test"):
        for c, renamed in zip(CLASSES, ("plum", "apple", "banana"), strict=True):
            shutil.copytree(root / split / c, other / split / renamed)
    code, _, err = run_main(["eval", str(out / "best.pt"), "--data", str(other)], capsys)
    assert code == 2
    line = assert_one_error_line(err)
    assert "class 2 is 'cherry', the data's 'plum'" in line  # (apple, banana, plum sorted)
    code, text, err = run_main(["eval", str(out / "best.pt"), "--data", str(root)], capsys)
    assert code == 0 and "(24 images)" in text, err


def test_eval_says_when_a_class_has_no_test_images(run24, tmp_path, capsys) -> None:
    """A held-out test split of a lopsided folder (40/2/2 images) leaves the small classes no
    test image: their accuracy is unknown, not 0."""
    _, out = run24
    root = make_folder(tmp_path / "lopsided", per_class=40)
    for c in ("banana", "cherry"):
        for f in sorted((root / "train" / c).iterdir())[2:]:
            f.unlink()
    code, text, err = run_main(["eval", str(out / "best.pt"), "--data", str(root)], capsys)
    assert code == 0, err
    rows = dict(ln.split(maxsplit=1) for ln in text.splitlines()[1:])
    assert rows["banana"] == rows["cherry"] == "no test images"
    assert float(rows["apple"]) >= 0
    code, text, err = run_main(
        ["eval", str(out / "best.pt"), "--data", str(root), "--format", "json"], capsys
    )
    per_class = json.loads(text)["per_class"]
    assert per_class["banana"] is None and per_class["cherry"] is None


def test_eval_names_the_checkpoints_data_path_when_it_is_gone(run24, tmp_path, capsys) -> None:
    # The user typed no --data: the error must say the path is the run's, and how to give one.
    _, out = run24
    ckpt = torch.load(out / "best.pt", weights_only=True)
    gone = tmp_path / "moved-away"
    ckpt["config"]["data"] = str(gone)
    torch.save(ckpt, tmp_path / "best.pt")
    code, _, err = run_main(["eval", str(tmp_path / "best.pt")], capsys)
    assert code == 2
    line = assert_one_error_line(err)
    assert f"the run's data {gone} is gone" in line
    assert "pass --data PATH" in line and "download" not in line
