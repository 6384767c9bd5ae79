"""Data-parallel training on PyTorch's own stack: torchrun + DistributedDataParallel over gloo.

Everything runs on the CPU with 2 processes: the sharded loader, a 2-rank run under torchrun
(one set of run files, metrics over all ranks), the equivalence of 2 ranks × 32 with 1 rank × 64,
a rank that dies or hangs, and ``--resume`` under torchrun.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from cnnzoo.data import Augment, TensorLoader
from cnnzoo.data.synthetic import make_synthetic
from helpers import cnnzoo_env

WORKER = Path(__file__).with_name("dist_worker.py")
RUN_FILES = {"config.json", "metrics.jsonl", "metrics.csv", "last.pt", "best.pt", "summary.json"}
# a small, quick 2-rank run: 640 training images, global batch 64 (32 per rank), 10 steps
SMALL = ["--data", "synthetic", "--subset", "640", "--val", "100", "--batch-size", "64"]
SMALL += ["--precision", "fp32", "--eval-batch-size", "250", "--device", "cpu"]  # gloo, also where
# a GPU is present (two ranks on one GPU would be refused, see the test below)


def _torchrun(args: list[str], cwd: Path, timeout: float = 120, **env: str):
    """``torchrun --standalone --nproc_per_node=2 ARGS``; a hang fails the test via timeout.
    The workers import this checkout's cnnzoo (``cnnzoo_env``), whatever the cwd."""
    full_env = {**cnnzoo_env(), "OMP_NUM_THREADS": "1", **env}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return subprocess.run(
        cmd + args, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout
    )


def _ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


# ---- the sharded loader (no processes) ------------------------------------------------------


def _loader(x, y, batch, rank=0, world=1, train=True):
    return TensorLoader(
        x,
        y,
        batch,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        train=train,
        augment=Augment(pad=4, flip=True, cutout=8) if train else None,
        seed=3,
        rank=rank,
        world_size=world,
        channels_last=False,
    )


def test_two_rank_shards_are_the_single_rank_batches():
    """Rank r's batch i holds epoch positions r, r+2, r+4, ... of the single-rank batch i of twice
    the size: the same images with the same augmentation, none seen twice."""
    data = make_synthetic(n_train=200, n_test=10)
    x, y = data.train_x, data.train_y
    for epoch in (1, 2):
        shards = [_loader(x, y, 32, rank=r, world=2) for r in (0, 1)]
        whole = _loader(x, y, 64)
        for ld in (*shards, whole):
            ld.set_epoch(epoch)
        assert len(shards[0]) == len(shards[1]) == len(whole) == 3
        for (x0, y0), (x1, y1), (xw, yw) in zip(*shards, whole, strict=True):
            assert torch.equal(torch.stack([x0, x1], 1).flatten(0, 1), xw)
            assert torch.equal(torch.stack([y0, y1], 1).flatten(0, 1), yw)


def test_uneven_shards_are_padded_and_eval_counts_each_image_once():
    data = make_synthetic(n_train=101, n_test=10)
    x, y = data.train_x, data.train_y
    idx = [_loader(x, y, 10, rank=r, world=2)._indices() for r in (0, 1)]
    assert len(idx[0]) == len(idx[1]) == 51  # padded to a multiple of the world size
    assert set(torch.cat(idx).tolist()) == set(range(101))
    ev = [_loader(x, y, 10, rank=r, world=2, train=False)._indices() for r in (0, 1)]
    assert sorted(torch.cat(ev).tolist()) == list(range(101))  # disjoint, unpadded


# ---- equivalence: 2 ranks × 32 == 1 rank × 64 ------------------------------------------------


def _tiny_net() -> nn.Module:
    """A BN-free convnet (SyncBatchNorm is GPU-only in PyTorch; per-rank BN would differ)."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(8 * 16, 10),
    )


def _steps(model: nn.Module, loader: TensorLoader, n_steps: int):
    """Take ``n_steps`` SGD steps (momentum, weight decay); yield after each."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    loss_fn = nn.CrossEntropyLoss()
    loader.set_epoch(1)
    for step, (xb, yb) in zip(range(n_steps), loader, strict=False):
        opt.zero_grad()
        loss_fn(model(xb), yb).backward()
        opt.step()
        yield step


def _ddp_worker(rank: int, world: int, port: int, out: str, n_steps: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        data = make_synthetic(n_train=200, n_test=10)
        model = nn.parallel.DistributedDataParallel(_tiny_net())
        loader = _loader(data.train_x, data.train_y, 64 // world, rank, world)
        for step in _steps(model, loader, n_steps):
            if rank == 0:
                torch.save(model.module.state_dict(), f"{out}.{step + 1}")
        dist.barrier()  # tear down together: a rank leaving gloo early can abort its peer
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_match_one_rank_with_the_global_batch(tmp_path):
    """One (and a second, with momentum) SGD step of DDP over 2 gloo ranks × batch 32 gives the
    weights of 1 process × batch 64: DDP averages the ranks' gradients."""
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(out), 2), nprocs=2, join=True)
    data = make_synthetic(n_train=200, n_test=10)
    torch.set_num_threads(1)
    single = _tiny_net()
    before = {k: v.clone() for k, v in single.state_dict().items()}
    for step in _steps(single, _loader(data.train_x, data.train_y, 64), 2):
        got = torch.load(f"{out}.{step + 1}", weights_only=True)
        for k, v in single.state_dict().items():
            assert not torch.equal(v, before[k])  # the step did move the weights
            assert (got[k] - v).abs().max().item() < 1e-5, (step, k)


# ---- torchrun -m cnnzoo train ---------------------------------------------------------------


def test_torchrun_two_ranks_writes_one_run(tmp_path):
    proc = _ok(
        _torchrun(
            ["-m", "cnnzoo", "train", "resnet20", *SMALL, "--epochs", "1", "--out", "R"], tmp_path
        )
    )
    run = tmp_path / "R"
    assert {p.name for p in run.iterdir()} == RUN_FILES  # one set, no stray temp files
    assert proc.stdout.count("training resnet20") == 1  # only rank 0 logs
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2 and cfg["device"] == "cpu"
    assert cfg["batch_size"] == 64 and cfg["steps_per_epoch"] == 10  # global batch: 640 / 64
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1
    # img/s is over both ranks: it covers all 640 images, not one rank's 320
    assert rows[0]["images"] == 640
    assert rows[0]["img_per_s"] * rows[0]["seconds"] == pytest.approx(640, rel=1e-6)
    summary = json.loads((run / "summary.json").read_text())
    assert 0.0 <= summary["test_acc"] <= 1.0
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and ckpt["step"] == 10
    assert not any(k.startswith("module.") for k in ckpt["model"])  # unwrapped from DDP


@pytest.mark.slow
def test_compare_under_torchrun_writes_its_figures_once(tmp_path):
    argv = ["-m", "cnnzoo", "compare", "resnet20", "plain20", *SMALL, "--epochs", "1"]
    proc = _ok(_torchrun([*argv, "--out", "C"], tmp_path))
    assert proc.stdout.count("| model |") == 1  # rank 0 alone prints (and writes) the table
    assert (tmp_path / "C" / "summary.md").is_file()
    refused = _torchrun(argv, tmp_path)  # without --out each rank would name its own folder
    assert refused.returncode != 0 and "give --out" in refused.stderr


@pytest.mark.slow
def test_sync_bn_on_cpu_is_a_clear_error(tmp_path):
    proc = _torchrun(
        ["-m", "cnnzoo", "train", "resnet20", *SMALL, "--sync-bn", "--out", "R"], tmp_path
    )
    assert proc.returncode != 0
    assert "--sync-bn needs CUDA" in proc.stderr
    assert not (tmp_path / "R" / "last.pt").exists()


def _faulty_run(tmp_path, fault: str, dist_timeout: int) -> subprocess.CompletedProcess:
    """A 1-epoch run under torchrun whose rank 1 has ``fault`` (tests/dist_worker.py); the job
    must fail, and leave no summary."""
    proc = _torchrun(
        [str(WORKER), "train", "resnet20", *SMALL, "--epochs", "1", "--out", "R"],
        tmp_path,
        timeout=90,
        CNNZOO_TEST_FAULT=fault,
        CNNZOO_DIST_TIMEOUT=str(dist_timeout),
    )
    assert proc.returncode != 0
    assert not (tmp_path / "R" / "summary.json").exists()
    return proc


def test_a_rank_that_dies_ends_the_job(tmp_path):
    proc = _faulty_run(tmp_path, "die", dist_timeout=10)
    assert "exitcode  : 3" in proc.stderr  # torchrun names the rank that failed


@pytest.mark.slow
def test_a_rank_that_diverges_stops_every_rank_together(tmp_path):
    proc = _faulty_run(tmp_path, "diverge", dist_timeout=60)
    # both ranks saw the summed loss and stopped with the same line, none killed in a wait
    assert proc.stderr.count("error: training diverged") == 2, proc.stderr[-3000:]


@pytest.mark.slow
def test_a_rank_that_hangs_times_out_with_a_clear_message(tmp_path):
    proc = _faulty_run(tmp_path, "hang", dist_timeout=5)
    assert "lost contact with another rank" in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra, steps",
    [
        ([], 20),
        # epoch 2 pruned: 448 of the 640 images, 7 steps per rank; the choice is made from the
        # losses both ranks recorded in epoch 1, which last.pt must hold merged
        pytest.param(["--prune", "0.5", "--prune-full-last", "0"], 17, marks=pytest.mark.slow),
    ],
    ids=["plain", "prune"],
)
def test_resume_under_torchrun_after_a_crash_matches_an_uninterrupted_run(tmp_path, extra, steps):
    args = ["train", "resnet20", *SMALL, "--epochs", "2", *extra]
    # rank 1 dies in epoch 2, after epoch 1's checkpoint: the job fails, last.pt is epoch 1
    crashed = _torchrun(
        [str(WORKER), *args, "--out", "A"],
        tmp_path,
        CNNZOO_TEST_FAULT="die",
        CNNZOO_TEST_FAULT_EPOCH="2",
        CNNZOO_DIST_TIMEOUT="10",
    )
    assert crashed.returncode != 0
    assert torch.load(tmp_path / "A" / "last.pt", weights_only=True)["epoch"] == 1
    if extra:  # every training image has the loss one rank or the other recorded
        epoch1 = torch.load(tmp_path / "A" / "last.pt", weights_only=True)["prune"]
        assert bool((epoch1["losses"] > 0).all())
    rows = _resume_then_compare_with_uninterrupted(tmp_path, args, steps)
    assert [r["epoch"] for r in rows[0]] == [1, 2]
    assert (tmp_path / "A" / "summary.json").is_file()


def _resume_then_compare_with_uninterrupted(
    tmp_path, args: list[str], steps: int = 20
) -> list[list[dict]]:
    """Resume run A under torchrun, train B = the same run uninterrupted, check their final
    weights agree; returns both runs' metrics rows."""
    _ok(_torchrun(["-m", "cnnzoo", "train", "--resume", "A"], tmp_path))
    _ok(_torchrun(["-m", "cnnzoo", *args, "--out", "B"], tmp_path))
    a, b = (torch.load(tmp_path / r / "last.pt", weights_only=True) for r in "AB")
    assert a["epoch"] == b["epoch"] == 2 and a["step"] == b["step"] == steps
    for k, v in b["model"].items():
        assert torch.allclose(a["model"][k].float(), v.float(), atol=1e-5), k
    return [
        [json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for r in "AB"
    ]


def test_more_ranks_than_gpus_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun --nproc_per_node=2 on a one-GPU machine: rank 1 has no GPU of its own."""
    from cnnzoo.errors import UserError
    from cnnzoo.train.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    for name in ("auto", "cuda"):
        with pytest.raises(UserError, match=r"nproc_per_node=1.*--device cpu"):
            resolve_device(name)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step(tmp_path):
    """Rank 1 alone gets SIGTERM in epoch 2: both ranks stop after the same step, rank 0 writes
    that mid-epoch position once, and a resume under torchrun ends as an uninterrupted run."""
    args = ["train", "resnet20", *SMALL, "--epochs", "2"]
    stopped = _torchrun(
        [str(WORKER), *args, "--out", "A"],
        tmp_path,
        CNNZOO_TEST_FAULT="sigterm",
        CNNZOO_TEST_FAULT_EPOCH="2",
        CNNZOO_DIST_TIMEOUT="30",
    )
    assert stopped.returncode != 0  # torchrun reports its workers' exit code 143 as a failure
    assert "exitcode  : 143" in stopped.stderr, stopped.stderr[-3000:]
    line = "interrupted at epoch 2 step 2; resume with: cnnzoo train --resume A"
    assert stopped.stderr.count(line) == 1, stopped.stderr[-3000:]  # rank 0 alone says it
    last = torch.load(tmp_path / "A" / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["step"] == 12 and last["in_epoch"]["step"] == 2
    assert last["in_epoch"]["totals"][2].item() == 2 * 64  # both ranks' images, summed
    assert not list((tmp_path / "A").glob(".*.tmp"))
    rows = _resume_then_compare_with_uninterrupted(tmp_path, args)
    assert [r["epoch"] for r in rows[0]] == [1, 2]
    for got, want in zip(*rows, strict=True):
        assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-9)
        assert got["train_acc"] == want["train_acc"] and got["val_acc"] == want["val_acc"]
