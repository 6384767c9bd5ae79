"""``cnnzoo export CHECKPOINT -o model.onnx [--opset N]``: ONNX export, checked with
onnxruntime; ``-o model.safetensors``: the weights with their metadata, for
``create_model(name, weights=...)``."""

from __future__ import annotations

import argparse
import sys

from cnnzoo.inference.export_defaults import DEFAULT_ATOL, DEFAULT_OPSET


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a checkpoint to ONNX (needs `pip install 'cnnzoo[onnx]'`) or safetensors",
        description="An output ending in .safetensors gets the weights with their metadata "
        "(model, kwargs, classes, mean/std, image size), loadable with "
        "create_model(name, weights=FILE). "
        "Otherwise export to ONNX with a dynamic batch dimension; input 'input' (N,3,S,S) "
        "float32 normalised as in training (S: the run's image size, 32 for CIFAR), output "
        "'logits'. The file is checked with "
        "onnxruntime against PyTorch on random and real test images and is written only if "
        "the maximum absolute difference is within --atol (exit code 1 otherwise).",
    )
    p.add_argument(
        "checkpoint",
        help="a .pt file, or a run directory (uses its best.pt); with --pretrained a model name",
    )
    p.add_argument(
        "-o", "--output", required=True, metavar="FILE", help="the .onnx or .safetensors file"
    )
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="CHECKPOINT names a model: export its shipped CIFAR-10 weights (`cnnzoo export "
        "resnet20 --pretrained -o resnet20.onnx`)",
    )
    p.add_argument("--half", action="store_true", help="safetensors: store floats as fp16")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"default {DEFAULT_OPSET}")
    p.add_argument(
        "--include-normalization",
        action="store_true",
        help="the graph takes RGB in [0, 1] and normalises with the checkpoint's mean/std",
    )
    p.add_argument(
        "--atol", type=float, default=DEFAULT_ATOL, help=f"tolerance (default {DEFAULT_ATOL:g})"
    )
    p.add_argument("--data", help="dataset location for the real-image check (default: as trained)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    source = args.checkpoint
    if args.pretrained:
        from cnnzoo.inference.weights import pretrained_checkpoint

        source = pretrained_checkpoint(args.checkpoint)
    if args.output.endswith(".safetensors"):
        from cnnzoo.inference.weights import export_safetensors

        path, sha = export_safetensors(source, args.output, half=args.half)
        print(f"wrote {path} ({'fp16' if args.half else 'fp32'}, sha256 {sha})")
        return 0
    from cnnzoo.inference.export import ExportMismatch, export_onnx

    try:
        r = export_onnx(
            source,
            args.output,
            opset=args.opset,
            include_normalization=args.include_normalization,
            atol=args.atol,
            data=args.data,
        )
    except ExportMismatch as err:
        print(f"error: export check failed: {err}", file=sys.stderr)
        return 1
    inp = (
        "RGB in [0, 1], normalised inside the graph"
        if r.include_normalization
        else "normalised (pixel/255 - mean) / std"
    )
    mean = ", ".join(f"{v:.4f}" for v in r.mean)
    std = ", ".join(f"{v:.4f}" for v in r.std)
    print(f"exported {r.model} to {r.path} (opset {r.opset}, dynamic batch)")
    shape = f"(batch, 3, {r.image_size}, {r.image_size})"
    print(f"  input 'input' float32 {shape}: {inp}; mean ({mean}), std ({std})")
    print(f"  output 'logits' (batch, {len(r.classes)})")
    real = (
        f"{r.real_diff:.3g} on {r.real_count} images ({r.real_note})"
        if r.real_diff is not None
        else f"- ({r.real_note})"
    )
    print(
        f"onnxruntime vs PyTorch max abs diff: {r.random_diff:.3g} on random inputs "
        f"(batches of 1 and 8), {real}; tolerance {r.atol:g}: ok"
    )
    return 0
