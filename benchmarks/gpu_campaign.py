"""The GPU campaign: train the next jobs of ``benchmarks/gpu_jobs.json`` in one lent-GPU call.

A job is done when ``docs/results/accuracy/gpu/<id>/summary.json`` is committed, so every call
starts with the first job not yet done. It starts no job whose estimate no longer fits what is
left of the ``--budget`` (seconds), going on to later, shorter ones, and names each job whose
estimate exceeds the whole budget (no call of this budget can run it). Each finished run's
config, metrics, gradient flow and summary, and the fp16 weights of the small models, go into
one ``campaign.tar.gz`` under ``--out`` (the device tool brings back at most 8 files of
<= 16 MiB), with a log beside it.

On the GPU machine, with the dataset carried as the travel pack (shared/data/cifar10/SOURCE.md):

    python benchmarks/gpu_campaign.py run --pack .gpu-data/cifar10.npz \
        --travel .gpu-data/cifar10_travel.py --out $OUT --budget 480

Back here, file the results where the next call looks for them:

    python benchmarks/gpu_campaign.py ingest path/to/campaign.tar.gz

``run --dry-run`` runs the first jobs for one epoch on 256 generated images on the CPU, so CI
keeps the script working between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "benchmarks" / "gpu_jobs.json"
RESULTS = ROOT / "docs" / "results" / "accuracy" / "gpu"
RUN_FILES = ("config.json", "summary.json", "metrics.jsonl", "gradflow.jsonl")
WEIGHTS_MAX_PARAMS = 3_000_000  # fp16 weights of models up to this size come back (<= 6 MB each)
TAR_LIMIT = 15 * 2**20
DRY_RUN_ARGS = ["--data", "synthetic:256", "--device", "cpu", "--val", "64", "--epochs", "1"]


def pending(jobs: list[dict], results: Path) -> list[dict]:
    return [j for j in jobs if not (results / j["id"] / "summary.json").is_file()]


def train_command(job: dict, data: str, work: Path, dry_run: bool) -> list[str]:
    cmd = [sys.executable, "-m", "cnnzoo", "train", job["model"], *job["args"]]
    cmd += ["--data", data, "--out", str(work / job["id"]), "--quiet"]
    if dry_run:  # later options win in argparse: one epoch of generated data on the CPU
        cmd += [*DRY_RUN_ARGS, "--eval-batch-size", "64", "--batch-size", "32"]
    return cmd


def pack_results(job: dict, run: Path, stage: Path, seconds: float, cmd: list[str]) -> None:
    """Copy one finished run's small files (and small models' fp16 weights) into ``stage``."""
    dest = stage / job["id"]
    dest.mkdir(parents=True)
    for name in RUN_FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    shown = [Path(cmd[0]).name, *cmd[1:]]
    info = {"job": job, "wall_seconds": round(seconds, 1), "command": " ".join(shown)}
    (dest / "job.json").write_text(json.dumps(info, indent=1) + "\n")
    summary = json.loads((run / "summary.json").read_text())
    if summary.get("params", 0) <= WEIGHTS_MAX_PARAMS:
        from cnnzoo.inference.weights import export_safetensors

        export_safetensors(run / "best.pt", dest / "best-fp16.safetensors", half=True)


def run_jobs(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "campaign-log.txt", "a")  # noqa: SIM115 (open for the whole campaign)

    def say(msg: str) -> None:
        print(msg, flush=True)
        log.write(msg + "\n")
        log.flush()

    work = Path(tempfile.mkdtemp(prefix="cnnzoo-campaign-"))
    data = args.data
    if args.dry_run:
        data = "synthetic:256"
    elif args.pack:
        subprocess.run(
            [sys.executable, args.travel, "unpack", args.pack, str(work / "data")], check=True
        )
        data = str(work / "data")
    jobs = pending(json.loads(Path(args.jobs_file).read_text())["jobs"], Path(args.results))
    if not args.dry_run:  # (a dry run trains any job for one epoch)
        for job in (j for j in jobs if j["est_s_h100"] > args.budget):
            say(
                f"never fits: {job['id']} needs ~{job['est_s_h100']} s, more than the whole "
                f"--budget {args.budget:.0f} s; split the job or raise the budget"
            )
        jobs = [j for j in jobs if j["est_s_h100"] <= args.budget]
    if args.jobs:
        jobs = jobs[: args.jobs]
    say(f"{len(jobs)} job(s) pending; budget {args.budget:.0f} s; data {data}")
    stage = work / "stage"
    stage.mkdir()
    # the budget's seconds used by the jobs run so far: 0 until the first starts, so a job
    # estimated at the whole budget runs when it comes first
    spent = 0.0
    for job in jobs:
        left = args.budget - spent
        if not args.dry_run and job["est_s_h100"] > left:
            say(f"skip for now: {job['id']} needs ~{job['est_s_h100']} s, {left:.0f} s left")
            continue
        cmd = train_command(job, data, work, args.dry_run)
        t0 = time.monotonic()
        try:
            done = subprocess.run(cmd, timeout=max(left, 60), cwd=ROOT).returncode == 0
        except subprocess.TimeoutExpired:
            done = False
        seconds = time.monotonic() - t0
        if done:
            pack_results(job, work / job["id"], stage, seconds, cmd)
            summary = json.loads((work / job["id"] / "summary.json").read_text())
            say(f"{job['id']}: test acc {summary['test_acc']:.4f} in {seconds:.1f} s")
        else:
            say(f"{job['id']}: FAILED or cut off after {seconds:.0f} s (not marked done)")
        spent += time.monotonic() - t0  # packing included
    with tarfile.open(out / "campaign.tar.gz", "w:gz") as tar:
        tar.add(stage, arcname="campaign")
    size = (out / "campaign.tar.gz").stat().st_size
    say(f"wrote {out / 'campaign.tar.gz'} ({size / 2**20:.1f} MiB)")
    log.close()
    return 0 if size <= TAR_LIMIT else 1


def ingest(args: argparse.Namespace) -> int:
    """Unpack a campaign's results (checked members only) into ``--results``."""
    from cnnzoo.data.archive import safe_extract

    tmp = Path(tempfile.mkdtemp(prefix="cnnzoo-ingest-"))
    safe_extract(Path(args.archive), tmp)
    results = Path(args.results)
    for job_dir in sorted((tmp / "campaign").iterdir()):
        dest = results / job_dir.name
        if dest.exists():
            print(f"{job_dir.name}: already filed, kept as it was")
            continue
        shutil.copytree(job_dir, dest)
        print(f"{job_dir.name}: filed in {dest}")
    shutil.rmtree(tmp)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="train the next pending jobs")
    r.add_argument("--out", required=True, help="folder for campaign.tar.gz and the log")
    r.add_argument("--budget", type=float, default=480, help="seconds for training (default 480)")
    r.add_argument("--data", default=None, help="CIFAR-10 archive or folder")
    r.add_argument("--pack", help="the travel pack to unpack first (cifar10_travel.py pack)")
    r.add_argument("--travel", help="path to cifar10_travel.py (with --pack)")
    r.add_argument("--jobs", type=int, help="run at most this many pending jobs")
    r.add_argument("--results", default=str(RESULTS), help="where finished jobs are filed")
    r.add_argument("--jobs-file", default=str(JOBS), help="the job list (default: gpu_jobs.json)")
    r.add_argument("--dry-run", action="store_true", help="1 epoch of generated data on the CPU")
    r.set_defaults(func=run_jobs)
    i = sub.add_parser("ingest", help="file a campaign.tar.gz's results")
    i.add_argument("archive")
    i.add_argument("--results", default=str(RESULTS))
    i.set_defaults(func=ingest)
    args = p.parse_args(argv)
    if args.cmd == "run" and not args.dry_run and not (args.data or args.pack):
        p.error("give --data or --pack (or --dry-run)")
    if args.cmd == "run" and args.pack and not args.travel:
        p.error("--pack needs --travel (the cifar10_travel.py that unpacks it)")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
