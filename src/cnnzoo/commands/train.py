"""``cnnzoo train MODEL [options]`` and ``cnnzoo train --resume RUN_DIR``."""

from __future__ import annotations

import argparse
import json

from cnnzoo.errors import UserError


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options shared by every command that trains (train, compare, degradation)."""
    from cnnzoo.train.config import PRECISIONS, SCHEDULES, TrainConfig

    d = TrainConfig()
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=("cifar10", "cifar100"), default=d.dataset)
    g.add_argument(
        "--data",
        help="archive, extracted folder, or 'synthetic[:N]' (generated, N training images) "
        "(default: $CNNZOO_DATA, else ~/.cache/cnnzoo; downloads if missing)",
    )
    g.add_argument("--val", type=int, help="validation images held out (default 10%%; 0: none)")
    g.add_argument("--subset", type=int, help="train on the first N training images")
    g.add_argument("--no-augment", dest="augment", action="store_false")
    g.add_argument("--cutout", type=int, default=d.cutout, metavar="PX")
    g.add_argument(
        "--crop-pad", type=int, default=d.crop_pad, metavar="PX", help="random-crop padding"
    )
    g.add_argument(
        "--crop-reflect",
        action=argparse.BooleanOptionalAction,
        default=d.crop_reflect,
        help="pad random crops by reflection instead of with zeros",
    )
    g.add_argument(
        "--alternate-flip",
        action=argparse.BooleanOptionalAction,
        default=d.alternate_flip,
        help="flip each image in every other epoch (random in the first) instead of at random",
    )
    o = p.add_argument_group("optimisation")
    o.add_argument("--epochs", type=int, default=d.epochs)
    o.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
    o.add_argument("--lr", type=float, default=d.lr)
    o.add_argument("--momentum", type=float, default=d.momentum)
    o.add_argument("--nesterov", action="store_true")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay)
    o.add_argument("--no-bn-weight-decay", action="store_true")
    o.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    o.add_argument("--warmup-epochs", type=float, default=d.warmup_epochs)
    o.add_argument(
        "--warmup-start",
        type=float,
        default=d.warmup_start,
        metavar="FRAC",
        help="the warm-up starts at FRAC × lr (default 0)",
    )
    o.add_argument(
        "--final-lr",
        type=float,
        default=d.final_lr,
        metavar="FRAC",
        help="linear/cosine schedules end at FRAC × lr (default 0)",
    )
    o.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    o.add_argument("--ema", type=float, default=d.ema, help="weight EMA decay (0: off)")
    o.add_argument(
        "--lookahead",
        action=argparse.BooleanOptionalAction,
        default=d.lookahead,
        help="airbench94's lookahead: from epoch 4, every 5 steps, an EMA of the weights "
        "(decay 0.95^5 × (step/total)^3) copied back into them",
    )
    o.add_argument(
        "--whiten-bias-epochs",
        type=int,
        default=d.whiten_bias_epochs,
        metavar="N",
        help="train a whitening stem's bias (fastnet) for N epochs, then freeze it",
    )
    o.add_argument("--tta", action="store_true", help="evaluate with flip test-time augmentation")
    o.add_argument(
        "--tta-shift",
        type=int,
        default=d.tta_shift,
        metavar="PX",
        help="test-time augmentation also over views translated by ±PX pixels (0: off)",
    )
    o.add_argument("--seed", type=int, default=d.seed)
    r = p.add_argument_group("runtime")
    r.add_argument("--device", default=d.device)
    r.add_argument("--precision", choices=PRECISIONS, default=d.precision)
    r.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    r.add_argument("--compile", action="store_true")
    r.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across ranks")
    r.add_argument("--threads", type=int)
    r.add_argument("--eval-batch-size", type=int, default=d.eval_batch_size)
    r.add_argument("--quiet", action="store_true")


def config_from_args(args: argparse.Namespace, model: str, out: str | None):
    """A ``TrainConfig`` from parsed options: every field whose option this parser has (the
    names match), the rest at their defaults."""
    from dataclasses import fields

    from cnnzoo.train.config import TrainConfig

    kwargs = {}
    if getattr(args, "model_kwargs", None):
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as err:
            raise UserError(f"--model-kwargs is not JSON: {err}") from None
        if not isinstance(kwargs, dict):
            raise UserError("--model-kwargs must be a JSON object")
    special = {"model": model, "model_kwargs": kwargs, "out": out}
    given = {
        f.name: getattr(args, f.name)
        for f in fields(TrainConfig)
        if f.name not in special and hasattr(args, f.name)
    }
    return TrainConfig(**special, **given)


def seeded_config_factory(args: argparse.Namespace):
    """``make(model, seed, run_dir) -> TrainConfig`` from the command's training options: what
    compare and degradation use to train every (model, seed) the same way."""

    def make(model: str, seed: int, run_dir) -> object:
        cfg = config_from_args(args, model, str(run_dir))
        cfg.seed = seed
        return cfg.validate()

    return make


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train a model on CIFAR-10/100 (or synthetic data)")
    p.add_argument("model", nargs="?", help="registered model name (`cnnzoo models`)")
    p.add_argument("--out", help="run directory (default runs/<model>-<timestamp>)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--model-kwargs", help='JSON keyword arguments, e.g. \'{"shortcut": "B"}\'')
    p.add_argument(
        "--record-gradflow",
        action="store_true",
        help="store per-epoch conv gradient norms in the run directory",
    )
    p.add_argument("--tensorboard", action="store_true")
    p.add_argument(
        "--stop-after",
        type=int,
        metavar="EPOCH",
        help="stop after this epoch; the schedule still spans --epochs (resume later)",
    )
    p.add_argument(
        "--recipe",
        metavar="NAME",
        help="start from a named recipe, e.g. 'fast' (fastnet's speed run); explicit options win",
    )
    add_train_options(p)
    from cnnzoo.train.recipes import defer_defaults

    defer_defaults(p)  # options a recipe sets default to "unset" until run() resolves them
    defaults = {a.dest: p.get_default(a.dest) for a in p._actions if a.dest != "help"}
    p.set_defaults(func=run, _defaults=defaults)


# What a resumed run takes from the command line; everything else comes from its checkpoint.
RESUME_OPTIONS = {"resume", "stop_after", "quiet", "func", "command"}


def _refuse_options_on_resume(args: argparse.Namespace) -> None:
    """``--resume`` continues the saved configuration: an option that would be ignored is an
    error, not a silent surprise."""
    given = [
        k
        for k, default in args._defaults.items()
        if k not in RESUME_OPTIONS and not k.startswith("_") and getattr(args, k) != default
    ]
    if given:
        names = ", ".join("MODEL" if k == "model" else "--" + k.replace("_", "-") for k in given)
        raise UserError(
            f"--resume continues the run with its saved configuration; it does not take {names} "
            "(only --stop-after and --quiet); start a new run to change them"
        )


def run(args: argparse.Namespace) -> int:
    from cnnzoo.train import train
    from cnnzoo.train.recipes import resolve_recipe_args

    if args.resume:
        _refuse_options_on_resume(args)
    resolve_recipe_args(args)
    if args.resume:
        train(config_from_args(args, args.model or "resnet20", None), resume=args.resume)
        return 0
    if not args.model:
        raise UserError("name a model to train (`cnnzoo models` lists them), or pass --resume")
    train(config_from_args(args, args.model, args.out))
    return 0
