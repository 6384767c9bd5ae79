"""The model zoo: every registered model builds, runs forward and backward, and the
architectures match the papers and the reference notebook exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnzoo
from cnnzoo import count_flops, count_params, create_model, list_models, model_info
from cnnzoo.models.inception import InceptionModule
from helpers import run_main

ALL = list_models()

EXACT_PARAMS = {
    "vgg16": 33_646_666,
    "resnet18": 11_173_962,
    "resnet34": 21_282_122,
    "resnet50": 23_520_842,
    "plain18": 11_000_138,
    "plain34": 21_108_298,
}
# He et al. 2015, Table 6 (millions of parameters, as printed there)
PAPER_TABLE6 = {
    "resnet20": 0.27,
    "resnet32": 0.46,
    "resnet44": 0.66,
    "resnet56": 0.85,
    "resnet110": 1.7,
}
REQUIRED = [
    "vgg11",
    "vgg13",
    "vgg16",
    "vgg19",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "plain18",
    "plain34",
    "googlenet",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "plain110",
]


def test_required_models_are_registered() -> None:
    assert set(REQUIRED) <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    model = create_model(name).eval()
    with torch.no_grad():
        assert model(x).shape == (2, 10)
    model = create_model(name, num_classes=100).train()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 100)
    assert torch.isfinite(out).all()
    out.logsumexp(1).mean().backward()
    for pname, p in model.named_parameters():
        if not p.requires_grad:  # frozen by design (e.g. FastNet's whitening stem)
            assert p.grad is None
            continue
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"


@pytest.mark.parametrize(("name", "params"), EXACT_PARAMS.items())
def test_exact_parameter_counts(name: str, params: int) -> None:
    assert count_params(create_model(name)) == params


@pytest.mark.parametrize(("name", "millions"), PAPER_TABLE6.items())
def test_cifar_resnets_match_paper_table6(name: str, millions: float) -> None:
    n = count_params(create_model(name))
    digits = 1 if millions >= 1 else 2
    assert round(n / 1e6, digits) == millions
    # option A shortcuts carry no parameters: the plain twin has exactly as many
    assert count_params(create_model(name.replace("resnet", "plain"))) == n


def test_option_b_adds_projection_parameters() -> None:
    a = count_params(create_model("resnet20"))
    b = count_params(create_model("resnet20", shortcut="B"))
    # two projections: 16->32 and 32->64 (1x1 conv + BN)
    assert b - a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_depth_metadata_counts_weight_layers() -> None:
    for name in ("resnet20", "plain56", "resnet18", "vgg16", "resnet50"):
        model = create_model(name)
        # weight layers on the main path: convs that are not shortcut projections, plus linear
        convs = [
            n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and "shortcut" not in n
        ]
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        assert len(convs) + len(linears) == model_info(name).depth, name


def test_inception_module_channel_arithmetic() -> None:
    m = InceptionModule(64, 16, 24, 32, 8, 16, 16)
    assert m(torch.randn(2, 64, 32, 32)).shape == (2, 80, 32, 32)
    assert m.out_channels == 16 + 32 + 16 + 16
    # each branch contributes its share of the channels, in order
    x = torch.randn(1, 64, 8, 8)
    widths = [b(x).shape[1] for b in (m.branch1, m.branch2, m.branch3, m.branch4)]
    assert widths == [16, 32, 16, 16]


def test_googlenet_uses_table1_widths() -> None:
    model = create_model("googlenet").train()
    modules = [m for m in model.modules() if isinstance(m, InceptionModule)]
    assert [m.out_channels for m in modules] == [256, 480, 512, 512, 512, 528, 832, 832, 1024]
    assert isinstance(model(torch.randn(2, 3, 32, 32)), torch.Tensor)  # no auxiliary tuple


def _zero_residual_branches(model: nn.Module) -> None:
    """Make every block's residual branch output exactly zero (last BN weight and bias 0)."""
    from cnnzoo.models.resnet import BasicBlock, Bottleneck

    for m in model.modules():
        last_bn = (
            m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
        )
        if last_bn is not None:
            nn.init.zeros_(last_bn.weight)
            nn.init.zeros_(last_bn.bias)


@pytest.mark.parametrize("depth", [18, 20, 56])
def test_plain_nets_have_no_skip_path(depth: int) -> None:
    """With every residual branch silenced, a ResNet still passes its input through the skips;
    a plain net's output no longer depends on the input at all."""
    x = torch.randn(4, 3, 32, 32)
    outputs = {}
    for kind in ("resnet", "plain"):
        torch.manual_seed(0)
        model = create_model(f"{kind}{depth}").eval()
        _zero_residual_branches(model)
        with torch.no_grad():
            outputs[kind] = model(x)
    plain, res = outputs["plain"], outputs["resnet"]
    assert torch.allclose(plain, plain[:1].expand_as(plain)), "plain output varies with input"
    assert not torch.allclose(res, res[:1].expand_as(res)), "resnet lost its skip path"


def test_resnet_and_plain_differ_only_in_the_skip() -> None:
    res, plain = create_model("resnet20"), create_model("plain20")
    assert [n for n, _ in res.named_parameters()] == [n for n, _ in plain.named_parameters()]
    r18 = {n for n, _ in create_model("resnet18").named_parameters()}
    p18 = {n for n, _ in create_model("plain18").named_parameters()}
    assert p18 < r18 and all("shortcut" in n for n in r18 - p18)


@pytest.mark.parametrize("name", ["resnet20", "vgg11", "googlenet"])
def test_same_seed_same_weights(name: str) -> None:
    def build(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return create_model(name).state_dict()

    a, b, c = build(1), build(1), build(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


def test_flops_are_twice_the_macs() -> None:
    """Count multiply-accumulates of every conv and linear by hand and compare."""
    model = create_model("resnet20").eval()
    macs = 0

    def hook(m: nn.Module, _inp, out: torch.Tensor) -> None:
        nonlocal macs
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            macs += out.numel() * k
        elif isinstance(m, nn.Linear):
            macs += out.numel() * m.in_features

    hooks = [
        m.register_forward_hook(hook)
        for m in model.modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert count_flops(model) == 2 * macs
    assert model.training is False


def test_unknown_model_suggests_close_names() -> None:
    with pytest.raises(cnnzoo.UnknownModelError) as err:
        create_model("resnet2")
    assert "resnet20" in str(err.value)
    with pytest.raises(KeyError):  # also a KeyError, as a registry lookup
        create_model("nope")


def test_unknown_keyword_names_the_model() -> None:
    with pytest.raises(ValueError, match="vgg16"):
        create_model("vgg16", shortcut="A")


def test_list_models_glob() -> None:
    assert list_models("plain*") == [
        "plain18",
        "plain20",
        "plain32",
        "plain34",
        "plain44",
        "plain56",
        "plain110",
    ]
    assert list_models("nothing*") == []


def test_zero_init_residual_is_off_by_default() -> None:
    model = create_model("resnet20")
    assert all(m.weight.eq(1).all() for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    model = create_model("resnet20", zero_init_residual=True)
    assert model.stages[0][0].bn2.weight.eq(0).all()


@pytest.mark.parametrize("name", ["plain20", "plain18"])
def test_zero_init_residual_refuses_a_plain_net(name: str, capsys) -> None:
    """A plain block has no shortcut: a zeroed last BN scale would make the network a constant
    (ReLU(0) = 0 after every block) that trains silently to chance."""
    with pytest.raises(ValueError, match="zero_init_residual needs skip connections"):
        create_model(name, zero_init_residual=True)
    create_model(name, zero_init_residual=False)  # the default stays buildable
    argv = ["train", name, "--model-kwargs", '{"zero_init_residual": true}', "--data", "synthetic"]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and err.startswith("error: --model-kwargs: zero_init_residual needs")
    assert err.count("\n") == 1
