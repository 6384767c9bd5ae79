"""``cnnzoo degradation [--depths 20 32 44 56] [--budget cpu|paper] [training options]``.

He et al. 2015, Figure 6: plain-d and resnet-d trained with one recipe; writes degradation.png
(training and held-out error per epoch, plain left, residual right) and summary.md/.csv/.json.
Finished runs in ``--out/runs`` are reused and unfinished ones resumed, so the study can be
stopped and continued (a run there of another configuration is an error); each budget has its own
default ``--out``. Preset values apply unless the flag is given explicitly.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# every key of a preset in cnnzoo.analysis.degradation.PRESETS: its flag, when not given, takes
# the preset's value (a test checks the two lists agree, so no preset value is silently ignored)
PRESET_KEYS = (
    "subset",
    "val",
    "epochs",
    "schedule",
    "warmup_epochs",
    "lr",
    "weight_decay",
    "batch_size",
    "zero_init_residual",
)
DEFAULT_BUDGET = "cpu"


def default_out(budget: str) -> str:
    """One folder per budget, so that the runs of one are never taken for another's."""
    return "runs/degradation" if budget == DEFAULT_BUDGET else f"runs/degradation-{budget}"


def add_parser(sub: argparse._SubParsersAction) -> None:
    from cnnzoo.analysis.degradation import DEFAULT_DEPTHS, PRESETS
    from cnnzoo.commands.train import add_train_options
    from cnnzoo.train.recipes import defer_defaults

    p = sub.add_parser("degradation", help="He et al. Figure 6: plain vs residual, by depth")
    p.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS))
    p.add_argument(
        "--budget",
        choices=tuple(PRESETS),
        default=DEFAULT_BUDGET,
        help="cpu: 10k images, 12 epochs, 71 min measured on 2 CPU cores (default); paper: the "
        "paper's 64k iterations, lr 0.1 /10 at 32k and 48k (for a GPU)",
    )
    p.add_argument(
        "--out",
        help=f"output folder (default: {default_out(DEFAULT_BUDGET)}, or "
        f"{default_out('BUDGET')} for another --budget)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan and time estimate only")
    p.add_argument(
        "--zero-init-residual",
        action=argparse.BooleanOptionalAction,
        help="start each residual branch's last BN scale at 0 (Goyal et al. 2017), ResNets only "
        "(default: on for --budget cpu, off for paper)",
    )
    add_train_options(p)
    defer_defaults(p, PRESET_KEYS)  # the --budget preset fills what is not given
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnzoo.analysis import degradation as dg
    from cnnzoo.commands.train import seeded_config_factory
    from cnnzoo.errors import UserError
    from cnnzoo.models import model_info, split_depth
    from cnnzoo.train.recipes import resolve_presets
    from cnnzoo.train.runtime import is_main_process

    if not args.depths or any(d < 1 for d in args.depths):
        raise UserError("--depths must be positive integers")
    depths = sorted(set(args.depths))
    for name in dg.model_names(depths):
        model_info(name)  # e.g. depth 50 has no 6n+2 CIFAR net: fail before training
    resolve_presets(args, dg.PRESETS[args.budget])
    out = Path(args.out or default_out(args.budget))
    est = dg.estimate_seconds(depths, args.epochs, args.subset, args.val)
    plan = (
        f"degradation study: {', '.join(dg.model_names(depths))}; {args.epochs} epochs, "
        f"{args.subset or 'all'} training images, {args.val} validation images, "
        f"{args.warmup_epochs:g}-epoch warm-up, {args.schedule} schedule, lr {args.lr}, "
        f"weight decay {args.weight_decay}"
        f"{', zero-init residual branches' if args.zero_init_residual else ''}; "
        f"estimated {est / 60:.0f} min on the reference 2-core CPU (CIFAR-10 sizes) -> {out}"
    )
    print(plan, file=sys.stderr)
    if args.dry_run:
        return 0

    base_config = seeded_config_factory(args)

    def make_config(model: str, seed: int, run_dir: Path):
        cfg = base_config(model, seed, run_dir)
        if args.zero_init_residual and split_depth(model)[0] == "resnet":
            # the study's switch is for the ResNets' branches: a plain twin has none (ResNet
            # refuses it there), so it keeps the standard init and the pair stays comparable
            cfg.model_kwargs = {**cfg.model_kwargs, "zero_init_residual": True}
        return cfg

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    runs = dg.run_study(depths, out, args.seed, make_config, log)
    if not is_main_process():  # under torchrun: rank 0 alone writes the study
        return 0
    meta = {
        "budget": args.budget,
        "depths": depths,
        **{k: getattr(args, k) for k in PRESET_KEYS},
        "estimated_seconds_reference_cpu": est,
    }
    result = dg.write_study(out, runs, meta)
    print((out / "summary.md").read_text())
    for path in result["files"]:
        log(f"wrote {path}")
    return 0
