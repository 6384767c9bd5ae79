"""``cnnzoo summary``: per-layer shapes, parameters, FLOPs and receptive fields."""

from __future__ import annotations

import json

import pytest
import torch
from torch import Tensor, nn

from cnnzoo.commands.models import model_rows
from cnnzoo.models import count_params, create_model, list_models, summarize
from helpers import run_main


def rows_by_path(model: nn.Module, size: int = 32, depth: int | None = None) -> dict:
    return {r.path: r for r in summarize(model, (1, 3, size, size), depth=depth).rows}


def rf(model: nn.Module, size: int = 32) -> dict[str, tuple | None]:
    """(rf, jump) of each module's output, for square fields (both axes checked equal)."""
    out = {}
    for path, r in rows_by_path(model, size).items():
        out[path] = None if r.rf is None else (r.rf[0], r.jump[0])
        assert r.rf is None or (r.rf[0] == r.rf[1] and r.jump[0] == r.jump[1])
    return out


class Sum(nn.Module):
    """Branches applied to the same input, summed (``cat=True``: concatenated on channels)."""

    def __init__(self, *branches: nn.Module, cat: bool = False) -> None:
        super().__init__()
        self.branches, self.cat = nn.ModuleList(branches), cat

    def forward(self, x: Tensor) -> Tensor:
        ys = [b(x) for b in self.branches]
        return torch.cat(ys, 1) if self.cat else sum(ys[1:], ys[0])


def conv(k: int, stride: int = 1, dilation: int = 1, ch: int = 3) -> nn.Conv2d:
    return nn.Conv2d(ch, ch, k, stride, padding=dilation * (k // 2), dilation=dilation)


# ---- receptive field: hand-computed cases --------------------------------------------------


def test_two_stacked_3x3_convs_see_5x5() -> None:
    fields = rf(nn.Sequential(conv(3), conv(3)))
    assert fields["0"] == (3, 1) and fields["1"] == (5, 1)


def test_pool_between_convs_doubles_the_jump() -> None:
    # conv3: r=3, j=1; 2x2/2 pool: r = 3 + 1·1 = 4, j = 2; conv3: r = 4 + 2·2 = 8
    fields = rf(nn.Sequential(conv(3), nn.MaxPool2d(2, 2), conv(3)))
    assert [fields[p] for p in ("0", "1", "2")] == [(3, 1), (4, 2), (8, 2)]
    # average pooling and a 3x3/2 pool follow the same formula: 3 + 2·1 = 5, then 5 + 2·2 = 9
    fields = rf(nn.Sequential(conv(3), nn.AvgPool2d(3, 2, padding=1), conv(3)))
    assert [fields[p] for p in ("1", "2")] == [(5, 2), (9, 2)]


def test_dilation_and_stride() -> None:
    # 3x3 dilated by 2 spans 5 pixels; then a stride-2 3x3: 5 + 2·1 = 7, jump 2; then 3x3: 7 + 2·2
    fields = rf(nn.Sequential(conv(3, dilation=2), conv(3, stride=2), conv(3)))
    assert [fields[p] for p in ("0", "1", "2")] == [(5, 1), (7, 2), (11, 2)]


def test_non_square_kernel_is_tracked_per_axis() -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, (1, 3), padding=(0, 1)), nn.Conv2d(3, 3, (5, 1), (2, 1)))
    rows = rows_by_path(model)
    assert rows["0"].rf == (1, 3) and rows["0"].jump == (1, 1)
    assert rows["1"].rf == (5, 3) and rows["1"].jump == (2, 1)


@pytest.mark.parametrize("cat", [False, True])
def test_branches_take_the_widest_path(cat: bool) -> None:
    # an Inception-like module: 1x1 | 3x3 | 1x1→5x5; its output sees as far as the 5x5 branch
    block = Sum(conv(1), conv(3), nn.Sequential(conv(1), conv(5)), cat=cat)
    fields = rf(nn.Sequential(conv(3), block))
    assert fields["1.branches.0"] == (3, 1) and fields["1.branches.2"] == (7, 1)
    assert fields["1"] == (7, 1)


def test_residual_block_with_strided_shortcut() -> None:
    # main path 3x3/2 → 3x3: 3, then 3 + 2·2 = 7 (jump 2); 1x1/2 shortcut: 1 (jump 2); max is 7
    block = Sum(nn.Sequential(conv(3, stride=2), conv(3)), conv(1, stride=2))
    fields = rf(block)
    assert fields["branches.0"] == (7, 2) and fields["branches.1"] == (1, 2)
    assert fields[""] == (7, 2)


def test_option_a_shortcut_subsamples_without_widening() -> None:
    # resnet20's first downsampling block: its parameter-free shortcut keeps every 2nd pixel
    rows = rows_by_path(create_model("resnet20"))
    before = rows["stages.0"]
    short = rows["stages.1.0.shortcut"]
    assert short.type == "PadShortcut"
    assert short.rf == before.rf and short.jump == (2, 2)
    # the block's output is its residual branch: r + 2·1 (3x3/2) + 2·2 (3x3), jump 2
    assert rows["stages.1.0"].rf[0] == before.rf[0] + 2 + 4


def test_global_pools_cover_the_whole_map() -> None:
    for pool in (nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1), nn.AvgPool2d(8)):
        fields = rf(nn.Sequential(conv(3), pool), size=8)
        assert fields["1"] == (3 + 7, 8), pool
    # an adaptive pool whose windows are uneven (8 → 3) has no single receptive field
    assert rf(nn.Sequential(conv(3), nn.AdaptiveAvgPool2d(3)), size=8)["1"] is None


def test_unknown_resizing_op_makes_the_field_unknown_downstream() -> None:
    fields = rf(nn.Sequential(conv(3), nn.Upsample(scale_factor=2), conv(3)))
    assert fields["0"] == (3, 1) and fields["1"] is None and fields["2"] is None


def test_tracked_field_matches_the_gradient_support() -> None:
    """Independent check: with positive weights and linear layers, the input pixels a centre
    output depends on (nonzero gradient) span exactly the receptive field."""
    torch.manual_seed(0)
    model = nn.Sequential(
        conv(3),
        nn.AvgPool2d(2, 2),
        Sum(conv(1, stride=2), nn.Sequential(conv(3, stride=2), conv(3, dilation=2)), cat=True),
        nn.Conv2d(6, 3, 3, padding=1),
    )
    for p in model.parameters():
        p.data.uniform_(0.1, 1.0)
    size = 96
    r, j = rf(model, size)["3"]
    x = torch.ones(1, 3, size, size, requires_grad=True)
    y = model(x)
    y[0, 0, y.shape[2] // 2, y.shape[3] // 2].backward()
    rows = x.grad[0].abs().sum(0).sum(1).nonzero().flatten()
    # conv3: 3; pool 2/2: 4, j 2; 3x3/2: 8, j 4; 3x3 dilated 2: 8 + 2·2·4 = 24; conv3: 24 + 2·4
    assert (r, j) == (32, 4)
    assert int(rows.max() - rows.min()) + 1 == r


# ---- the zoo: totals equal `cnnzoo models`, the vgg16 3x3 story ---------------------------


@pytest.mark.parametrize("name", list_models())
def test_totals_match_models_command(name: str) -> None:
    model = create_model(name)
    expected = model_rows(name)[0]
    for depth in (None, 1, 2):
        summary = summarize(model, depth=depth)
        assert (summary.params, summary.flops) == (expected["params"], expected["flops"])
        # the rows add up to the totals at every depth
        assert sum(r.params for r in summary.rows) == summary.params
        assert sum(r.flops for r in summary.rows) == summary.flops


def test_depth_folds_descendants_into_their_ancestor() -> None:
    model = create_model("resnet18")
    full = summarize(model).rows
    folded = rows_by_path(model, depth=2)
    assert max(r.depth for r in folded.values()) == 2
    stage = folded["stages.1"]
    inside = [r for r in full if r.path.startswith("stages.1.")]
    assert stage.params == count_params(model.stages[1]) == sum(r.params for r in inside)
    assert stage.flops == sum(r.flops for r in inside) > 0
    # folding changes values, not the folded module's own output
    full_row = next(r for r in full if r.path == "stages.1")
    assert (stage.output_shape, stage.rf) == (full_row.output_shape, full_row.rf)
    only = summarize(model, depth=0).rows
    assert len(only) == 1 and only[0].params == count_params(model)


def test_vgg16_shows_two_3x3_convs_see_what_one_5x5_would() -> None:
    rows = rows_by_path(create_model("vgg16"))
    first, second = rows["features.0"], rows["features.3"]
    assert (first.type, second.type) == ("Conv2d", "Conv2d")
    assert first.rf == (3, 3) and second.rf == (5, 5)
    # two 64→64 3x3 convs hold fewer parameters than one 64→64 5x5 (25·64·64 + 64 = 102,464)
    assert second.params == 9 * 64 * 64 + 64 == 36_928 and 2 * 36_928 < 102_464
    assert second.output_shape == (1, 64, 32, 32)


def test_functional_ops_in_forward_belong_to_the_model_row() -> None:
    # FastNet's frozen stem is F.conv2d in FastNet.forward: 2x2 no padding, 3→24 on 32×32 → 31×31
    rows = rows_by_path(create_model("fastnet"))
    root = rows[""]
    assert root.params == 24  # the stem bias (the stem weight is a buffer)
    assert root.flops == 2 * 24 * 3 * 2 * 2 * 31 * 31
    assert rows["layers.0.0"].rf == (2 + 2, 2 + 2)  # after the 2x2 stem, a 3x3 conv


def test_summary_restores_mode_and_leaves_no_hooks() -> None:
    model = create_model("resnet20")
    model.train()
    summarize(model)
    assert model.training
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


# ---- the command ------------------------------------------------------------------------


def test_cli_table_vgg16(capsys) -> None:
    code, out, _ = run_main(["summary", "vgg16"], capsys)
    assert code == 0
    expected = model_rows("vgg16")[0]
    total = out.strip().splitlines()[-1].split()
    assert total == ["total", f"{expected['params']:,}", f"{expected['flops']:,}"]
    line = next(x for x in out.splitlines() if x.split()[:1] == ["features.3"])
    assert line.split() == ["features.3", "Conv2d", "1x64x32x32", "36,928", "75,497,472", "5", "1"]
    # columns are aligned: between the rules, every row ends where the header does
    lines = out.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("layer"))
    end = next(i for i in range(start + 2, len(lines)) if set(lines[i]) == {"-"})
    assert end - start - 2 == len(summarize(create_model("vgg16")).rows)
    assert {len(x) for x in lines[start : end + 1]} == {len(lines[start])}


def test_cli_json_resnet18(capsys) -> None:
    code, out, _ = run_main(["summary", "resnet18", "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    expected = model_rows("resnet18")[0]
    assert data["totals"] == {"params": expected["params"], "flops": expected["flops"]}
    assert sum(r["params"] for r in data["rows"]) == expected["params"]
    by_path = {r["path"]: r for r in data["rows"]}
    assert by_path["stem.0"]["rf"] == [3, 3] and by_path["fc"]["rf"] is None
    assert by_path[""]["output_shape"] == [1, 10]


def test_cli_depth_input_size_num_classes(capsys) -> None:
    argv = ["summary", "resnet20", "--depth", "1", "--input-size", "64", "--num-classes", "100"]
    code, out, _ = run_main([*argv, "--format", "json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert {r["depth"] for r in data["rows"]} == {0, 1}
    assert data["input_size"] == [1, 3, 64, 64]
    by_path = {r["path"]: r for r in data["rows"]}
    assert by_path["stages"]["output_shape"] == [1, 64, 16, 16]
    assert by_path["fc"]["output_shape"] == [1, 100]
    model = create_model("resnet20", num_classes=100)
    assert data["totals"]["params"] == count_params(model)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["summary", "vgg61"], "unknown model 'vgg61'"),
        (["summary", "vgg16", "--input-size", "16"], "vgg16 cannot run on a 16x16 input"),
        (["summary", "vgg16", "--depth", "-1"], "--depth: must be at least 0"),
        (["summary", "vgg16", "--input-size", "x"], "--input-size: expected an integer"),
    ],
)
def test_cli_bad_input_is_one_error_line(argv: list[str], needle: str, capsys) -> None:
    code, out, err = run_main(argv, capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and needle in err and err.count("\n") == 1
