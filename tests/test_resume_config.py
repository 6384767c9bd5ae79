"""What ``--resume`` rebuilds: the configuration the run was asked for, from last.pt or (a run
killed in epoch 1) from config.json, never the values one machine resolved; and what a resume
may change."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import tarfile
from pathlib import Path

import pytest

from cnnzoo.data import cifar
from cnnzoo.train import TrainConfig, load_checkpoint, train
from cnnzoo.train.config import RESUME_OPTIONS, RESUME_WHEN_GIVEN
from cnnzoo.train.setup import resolve_run
from helpers import assert_one_error_line, fake_cifar10, make_fake_cifar_tar, run_main
from test_folder import make_folder


def test_a_run_killed_in_epoch_one_resumes_with_the_config_it_asked_for(tmp_path: Path, capsys):
    """An image folder with its own val/ (config.json: val 24, used) and --device/--precision
    auto (config.json: cpu and the precision chosen) restarts as asked: no --val, auto."""
    root = make_folder(tmp_path / "f", per_class=8, splits=("train", "val", "test"))
    out = tmp_path / "run"
    argv = ["train", "resnet20", "--data", str(root), "--epochs", "1", "--batch-size", "8",
            "--threads", "1", "--quiet", "--out", str(out)]  # fmt: skip
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    used = json.loads((out / "config.json").read_text())
    asked = load_checkpoint(out / "last.pt")["config"]
    # the values used stay where readers (report, compare, the benchmarks) look them up
    assert used["val"] == 24 and used["device"] != "auto" and used["precision"] != "auto"
    assert used["requested"] == asked  # one configuration for both resume paths
    assert (asked["val"], asked["device"], asked["precision"]) == (None, "auto", "auto")

    for name in ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "summary.json"):
        (out / name).unlink()  # as if killed in epoch 1, before its checkpoint
    cfg, resumed = resolve_run(TrainConfig(quiet=True), out)
    assert resumed is not None and resumed.state is None
    assert (cfg.val, cfg.device, cfg.precision) == (None, "auto", "auto")
    code, _, err = run_main(["train", "--resume", str(out), "--quiet"], capsys)
    assert code == 0, err
    assert (out / "summary.json").is_file()
    again = json.loads((out / "config.json").read_text())
    assert again["val"] == 24 and again["requested"]["val"] is None


def test_a_config_json_without_the_requested_part_still_resumes(tmp_path: Path) -> None:
    """config.json from before it kept the asked-for configuration apart: its values are used,
    as resumes then did."""
    out = tmp_path / "r"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"model": "resnet20", "seed": 3, "val": 64}))
    cfg, _ = resolve_run(TrainConfig(quiet=True), out)
    assert (cfg.model, cfg.seed, cfg.val, cfg.out) == ("resnet20", 3, 64, str(out))


def test_resume_takes_only_the_resume_options_and_a_stop_after_ahead(tmp_path: Path, capsys):
    out = tmp_path / "r"
    small = dict(model="resnet20", data="synthetic", subset=128, val=64, batch_size=64)
    train(TrainConfig(**small, precision="fp32", epochs=3, stop_after=1, quiet=True, out=str(out)))
    files = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    # --stop-after at or before the epoch reached would train nothing: refused, nothing written
    code, _, err = run_main(["train", "--resume", str(out), "--stop-after", "1"], capsys)
    assert code == 2
    assert "--stop-after 1: " in assert_one_error_line(err) and "finished epoch 1" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == files

    # the options a resume takes come from the invocation (RESUME_OPTIONS, one list) ...
    given = TrainConfig(stop_after=2, checkpoint_every=0.5, quiet=False, lr=9.0)
    cfg, resumed = resolve_run(given, out)
    assert resumed is not None and resumed.state is not None and resumed.state["epoch"] == 1
    for k in RESUME_OPTIONS:
        assert getattr(cfg, k) == getattr(given, k), k
    assert cfg.lr == 0.1  # ... and the rest from the run
    # ... and are the ones the refusal names
    code, _, err = run_main(["train", "--resume", str(out), "--lr", "0.5"], capsys)
    line = assert_one_error_line(err)
    assert code == 2 and "--lr" in line
    for k in (*RESUME_OPTIONS, *RESUME_WHEN_GIVEN):
        assert "--" + k.replace("_", "-") in line.split("(only ")[1]

    code, _, err = run_main(["train", "--resume", str(out), "--quiet", "--stop-after", "2"], capsys)
    assert code == 0, err
    assert load_checkpoint(out / "last.pt")["epoch"] == 2


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}


@pytest.fixture
def small_cifar(monkeypatch):
    """CIFAR-10 archives of 100 training and 20 test images decode as CIFAR-10."""
    small = dataclasses.replace(cifar.DATASETS["cifar10"], train_images=100, test_images=20)
    monkeypatch.setitem(cifar.DATASETS, "cifar10", small)


def test_a_resume_takes_a_moved_copy_of_its_data_and_refuses_other_data(
    tmp_path, capsys, small_cifar
) -> None:
    """The run records its data as an absolute path; when that is gone, the error says the path
    is the run's (no download hint) and --data points the resume to a copy. Other data (another
    archive md5, or other classes) is refused, and every refusal leaves the run's files as they
    were."""
    for name in ("a", "b", "elsewhere"):
        (tmp_path / name).mkdir()
    first = fake_cifar10(tmp_path / "a" / "cifar-10-python.tar.gz", n_train=100, n_test=20)
    other = make_fake_cifar_tar(tmp_path / "b" / "cifar-10-python.tar.gz", images_per_batch=20)
    out = tmp_path / "run"
    train(TrainConfig(model="resnet20", data=str(first), val=0, batch_size=50, epochs=3,
                      stop_after=1, precision="fp32", quiet=True, out=str(out)))  # fmt: skip
    assert load_checkpoint(out / "last.pt")["config"]["data"] == str(first)
    moved = tmp_path / "elsewhere" / "copy.tar.gz"
    first.rename(moved)
    before = _files(out)

    code, _, err = run_main(["train", "--resume", str(out), "--quiet"], capsys)
    line = assert_one_error_line(err)
    assert code == 2 and f"the run's data {first} is gone; pass --data PATH" in line
    assert "download" not in line
    code, _, err = run_main(
        ["train", "--resume", str(out), "--data", str(other), "--quiet"], capsys
    )
    line = assert_one_error_line(err)
    assert code == 2 and f"{other} is not the data {out} trained on (archive md5" in line
    with tarfile.open(other) as tar:  # an extracted folder has no md5: its classes are checked
        tar.extractall(tmp_path / "x", filter="data")
    code, _, err = run_main(
        ["train", "--resume", str(out), "--data", str(tmp_path / "x"), "--quiet"], capsys
    )
    line = assert_one_error_line(err)
    assert code == 2 and "the checkpoint's class 0 is 'airplane', the data's 'c0'" in line
    assert _files(out) == before

    argv = ["train", "--resume", str(out), "--data", str(moved), "--quiet", "--stop-after", "2"]
    code, _, err = run_main(argv, capsys)
    assert code == 0, err
    state = load_checkpoint(out / "last.pt")
    assert state["epoch"] == 2 and state["config"]["data"] == str(moved)
    # from now on the run names the copy: a plain resume finds it
    code, _, err = run_main(["train", "--resume", str(out), "--quiet"], capsys)
    assert code == 0 and (out / "summary.json").is_file(), err


def test_a_relative_data_path_is_recorded_absolute(
    tmp_path, monkeypatch, capsys, small_cifar
) -> None:
    """Typed relative, it is saved absolute: eval finds the data from another folder, and the
    reuse check of compare/degradation takes either spelling as the same path."""
    from cnnzoo.analysis.compare import check_same_experiment
    from cnnzoo.train.rundir import RunDir

    (tmp_path / "d").mkdir()
    archive = fake_cifar10(tmp_path / "d" / "cifar-10-python.tar.gz", n_train=100, n_test=20)
    monkeypatch.chdir(tmp_path / "d")
    out = tmp_path / "run"
    cfg = TrainConfig(model="resnet20", data="cifar-10-python.tar.gz", val=0, batch_size=50,
                      epochs=1, precision="fp32", quiet=True, out=str(out))  # fmt: skip
    train(cfg)
    assert json.loads((out / "config.json").read_text())["requested"]["data"] == str(archive)
    check_same_experiment(RunDir(out), cfg)  # as typed, from the folder it was typed in
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["eval", str(out / "best.pt"), "--no-tta"], capsys)
    assert code == 0, err


def test_the_reuse_check_takes_a_copy_of_the_archive_as_the_same_data(
    tmp_path, small_cifar
) -> None:
    """compare/degradation reuse a finished run when --data names a copy of the archive it
    trained on (the md5 config.json recorded), and refuse another archive under any path."""
    from cnnzoo.analysis.compare import check_same_experiment
    from cnnzoo.errors import UserError
    from cnnzoo.train.rundir import RunDir

    for name in ("a", "b", "c"):
        (tmp_path / name).mkdir()
    archive = fake_cifar10(tmp_path / "a" / "cifar-10-python.tar.gz", n_train=100, n_test=20)
    out = tmp_path / "run"
    cfg = TrainConfig(model="resnet20", data=str(archive), val=0, batch_size=50, epochs=1,
                      precision="fp32", quiet=True, out=str(out))  # fmt: skip
    train(cfg)
    copy = tmp_path / "b" / "cifar-10-python.tar.gz"
    shutil.copyfile(archive, copy)
    check_same_experiment(RunDir(out), dataclasses.replace(cfg, data=str(copy)))
    check_same_experiment(RunDir(out), dataclasses.replace(cfg, data=str(copy.parent)))
    other = make_fake_cifar_tar(tmp_path / "c" / "cifar-10-python.tar.gz", images_per_batch=20)
    with pytest.raises(UserError, match=re.escape(f"data '{archive}' there, '{other}' asked")):
        check_same_experiment(RunDir(out), dataclasses.replace(cfg, data=str(other)))
    archive.unlink()  # a path that holds nothing now is not the run's data either
    with pytest.raises(UserError, match="another configuration"):
        check_same_experiment(RunDir(out), dataclasses.replace(cfg, data=str(tmp_path / "a")))


def test_metrics_read_for_a_resume_drop_a_torn_last_row(tmp_path: Path) -> None:
    """read_metrics reads as every other JSON-lines reader: a row cut short by a kill during an
    older cnnzoo's in-place write is dropped; damage before the last row is an error."""
    from cnnzoo.errors import UserError
    from cnnzoo.train.rundir import read_metrics

    assert read_metrics(tmp_path) == []
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epoch": 2}\n{"epo')
    assert read_metrics(tmp_path) == [{"epoch": 1}, {"epoch": 2}]
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1}\n{"epo\n{"epoch": 3}\n')
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_metrics(tmp_path)
