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
    o.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    o.add_argument("--ema", type=float, default=d.ema, help="weight EMA decay (0: off)")
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
    from cnnzoo.train.config import TrainConfig

    kwargs = {}
    if getattr(args, "model_kwargs", None):
        try:
            kwargs = json.loads(args.model_kwargs)
        except json.JSONDecodeError as err:
            raise UserError(f"--model-kwargs is not JSON: {err}") from None
        if not isinstance(kwargs, dict):
            raise UserError("--model-kwargs must be a JSON object")
    return TrainConfig(
        model=model,
        model_kwargs=kwargs,
        dataset=args.dataset,
        data=args.data,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        no_bn_weight_decay=args.no_bn_weight_decay,
        schedule=args.schedule,
        warmup_epochs=args.warmup_epochs,
        label_smoothing=args.label_smoothing,
        augment=args.augment,
        cutout=args.cutout,
        crop_pad=args.crop_pad,
        alternate_flip=args.alternate_flip,
        ema=args.ema,
        tta=args.tta,
        tta_shift=args.tta_shift,
        val=args.val,
        subset=args.subset,
        seed=args.seed,
        device=args.device,
        precision=args.precision,
        channels_last=args.channels_last,
        compile=args.compile,
        sync_bn=args.sync_bn,
        eval_batch_size=args.eval_batch_size,
        threads=args.threads,
        out=out,
        record_gradflow=getattr(args, "record_gradflow", False),
        tensorboard=getattr(args, "tensorboard", False),
        quiet=args.quiet,
        stop_after=getattr(args, "stop_after", None),
    )


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
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnzoo.train import train
    from cnnzoo.train.recipes import resolve_recipe_args

    resolve_recipe_args(args)
    if args.resume:
        train(config_from_args(args, args.model or "resnet20", None), resume=args.resume)
        return 0
    if not args.model:
        raise UserError("name a model to train (`cnnzoo models` lists them), or pass --resume")
    train(config_from_args(args, args.model, args.out))
    return 0
