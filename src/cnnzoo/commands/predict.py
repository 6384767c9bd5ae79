"""``cnnzoo predict CHECKPOINT IMAGE... [--top-k 5] [--json]``: classify image files."""

from __future__ import annotations

import argparse
import json
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        help="classify image files with a checkpoint",
        description="Classify image files (any size and mode Pillow reads). Each image is "
        "converted to RGB (transparency composited on white), its shorter side resized to 32 "
        "pixels (or the run's --image-size), centre-cropped and normalised as in training. A "
        "file that cannot be read gets one error line; the others are still classified; the "
        "exit code is then 2.",
    )
    p.add_argument(
        "checkpoint",
        help="a .pt file, or a run directory (uses its best.pt); with --pretrained a model name",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of text")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass")
    p.add_argument("--device", default="cpu", help="cpu (default), cuda, auto, ...")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="CHECKPOINT names a model: use its shipped CIFAR-10 weights (`cnnzoo predict "
        "resnet20 --pretrained cat.jpg`)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cnnzoo.inference.predict import Predictor, check_options, predict_files

    check_options(args.top_k, args.batch_size)  # before the model is loaded
    source = args.checkpoint
    if args.pretrained:
        from cnnzoo.inference.weights import pretrained_checkpoint

        source = pretrained_checkpoint(args.checkpoint)
    predictor = Predictor(source, device=args.device)
    failed = 0
    rows = []
    for pred in predict_files(predictor, args.images, args.top_k, args.batch_size):
        if pred.error is not None:
            failed += 1
            print(f"error: {pred.file}: {pred.error}", file=sys.stderr)
        if args.json:
            rows.append(pred.to_dict())
        elif pred.top_k is not None:
            print(pred.file)
            for name, prob in pred.top_k:
                print(f"  {name:<16} {prob:.4f}")
            sys.stdout.flush()
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
    return 2 if failed else 0
