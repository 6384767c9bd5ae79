"""``cnnzoo train MODEL [options]`` and ``cnnzoo train --resume RUN_DIR``."""

from __future__ import annotations

import argparse
import json

from cnnzoo.errors import UserError


def add_train_options(p: argparse.ArgumentParser, train_only: bool = False) -> None:
    """The options of every ``TrainConfig`` field that declares one (``cnnzoo.train.config.opt``):
    the same for every command that trains (train, compare, degradation); ``train_only`` adds
    those of a single run (--stop-after, --record-gradflow, --tensorboard)."""
    from dataclasses import MISSING, fields

    from cnnzoo.train.config import TrainConfig

    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in fields(TrainConfig):
        cli = dict(f.metadata.get("cli", {}))
        if not cli or (cli.pop("train_only", False) and not train_only):
            continue
        group = cli.pop("group")
        if group not in groups:
            groups[group] = p.add_argument_group(group)
        flag = cli.pop("flag", "--" + f.name.replace("_", "-"))
        default = f.default if f.default is not MISSING else None
        if isinstance(default, bool) and "action" not in cli:
            cli["action"] = argparse.BooleanOptionalAction
        elif "action" not in cli and "type" not in cli:
            cli["type"] = type(default)
        groups[group].add_argument(flag, dest=f.name, default=default, **cli)


def config_from_args(args: argparse.Namespace, model: str, out: str | None):
    """A ``TrainConfig`` from parsed options: every field whose option this parser has (the
    names match), the rest at their defaults."""
    from dataclasses import fields

    from cnnzoo.train.config import TrainConfig

    kwargs = {}
    if isinstance(getattr(args, "model_kwargs", None), dict):  # a recipe's (fast-muon's)
        kwargs = dict(args.model_kwargs)
    elif getattr(args, "model_kwargs", None):
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
    from cnnzoo.train.recipes import RECIPES, defer_defaults

    p.add_argument(
        "--recipe",
        metavar="NAME",
        help=f"start from a named recipe ({', '.join(RECIPES)}); explicit options win",
    )
    add_train_options(p, train_only=True)

    defer_defaults(p)  # options a recipe sets default to "unset" until run() resolves them
    defaults = {a.dest: p.get_default(a.dest) for a in p._actions if a.dest != "help"}
    p.set_defaults(func=run, _defaults=defaults)


def _flag(name: str) -> str:
    return "MODEL" if name == "model" else "--" + name.replace("_", "-")


def _refuse_options_on_resume(args: argparse.Namespace) -> None:
    """``--resume`` continues the saved configuration: an option that would be ignored is an
    error, not a silent surprise. A resumed run takes only ``RESUME_OPTIONS`` and
    ``RESUME_WHEN_GIVEN`` from the command line; everything else comes from its checkpoint."""
    from cnnzoo.train.config import RESUME_OPTIONS, RESUME_WHEN_GIVEN

    takes = (*RESUME_OPTIONS, *RESUME_WHEN_GIVEN)
    accepted = {"resume", "func", "command", *takes}
    given = [
        k
        for k, default in args._defaults.items()
        if k not in accepted and not k.startswith("_") and getattr(args, k) != default
    ]
    if given:
        names = ", ".join(_flag(k) for k in given)
        *rest, last = [_flag(k) for k in takes]
        raise UserError(
            f"--resume continues the run with its saved configuration; it does not take {names} "
            f"(only {', '.join(rest)} and {last}); start a new run to change them"
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
