"""The built-in portable model ``pytorch_saver.models.Sequential``
(docs/MODELS.md): its layer list, state, forward, errors, and round trips
through ModelContainer."""

from __future__ import annotations

import copy
import json
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from pytorch_saver import (
    InitializationError,
    LayerSpecError,
    ModelContainer,
    ModelObjects,
    PytorchSaverError,
    class_name,
    read_checkpoint,
)
from pytorch_saver._format import write_checkpoint
from pytorch_saver._resolve import resolve
from pytorch_saver.models import Sequential
from support import assert_same_objects
from torch import nn

# The layer types of docs/MODELS.md, in its table's order.
LAYER_TYPES = [
    "Linear",
    "Conv1d",
    "Conv2d",
    "Embedding",
    "LayerNorm",
    "BatchNorm1d",
    "BatchNorm2d",
    "Dropout",
    "Flatten",
    "ReLU",
    "LeakyReLU",
    "GELU",
    "SiLU",
    "Tanh",
    "Sigmoid",
    "Identity",
    "Softmax",
    "MaxPool2d",
    "AvgPool2d",
]

# docs/MODELS.md's example.
CONV_NET: list[dict[str, Any]] = [
    {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
    {"type": "BatchNorm2d", "num_features": 4},
    {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2},
    {"type": "Flatten"},
    {"type": "Linear", "in_features": 64, "out_features": 10},
]

F32, I64 = torch.float32, torch.int64


def raw_metadata(path: str) -> dict[str, Any]:
    with zipfile.ZipFile(path) as zf:
        out: dict[str, Any] = json.loads(zf.read("metadata.json"))
    return out


# building: every type, its module and its state


# (layer, the torch.nn module it is, state as (name, shape, dtype) in order)
BUILDS: list[tuple[dict[str, Any], nn.Module, list[tuple[str, list[int], torch.dtype]]]] = [
    (
        {"type": "Linear", "in_features": 3, "out_features": 5},
        nn.Linear(3, 5),
        [("weight", [5, 3], F32), ("bias", [5], F32)],
    ),
    (
        {"type": "Linear", "in_features": 3, "out_features": 5, "bias": False},
        nn.Linear(3, 5, bias=False),
        [("weight", [5, 3], F32)],
    ),
    (
        {"type": "Conv1d", "in_channels": 4, "out_channels": 6, "kernel_size": 3, "groups": 2},
        nn.Conv1d(4, 6, 3, groups=2),
        [("weight", [6, 2, 3], F32), ("bias", [6], F32)],
    ),
    (
        {
            "type": "Conv1d",
            "in_channels": 2,
            "out_channels": 3,
            "kernel_size": [4],
            "stride": [1],
            "padding": "same",
            "dilation": [2],
            "bias": False,
            "padding_mode": "zeros",
        },
        nn.Conv1d(2, 3, 4, padding="same", dilation=2, bias=False),
        [("weight", [3, 2, 4], F32)],
    ),
    (
        {"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "padding": 1},
        nn.Conv2d(1, 4, 3, padding=1),
        [("weight", [4, 1, 3, 3], F32), ("bias", [4], F32)],
    ),
    (
        {
            "type": "Conv2d",
            "in_channels": 6,
            "out_channels": 9,
            "kernel_size": [3, 5],
            "stride": [2, 1],
            "padding": "valid",
            "dilation": [1, 2],
            "groups": 3,
        },
        nn.Conv2d(6, 9, (3, 5), stride=(2, 1), padding="valid", dilation=(1, 2), groups=3),
        [("weight", [9, 2, 3, 5], F32), ("bias", [9], F32)],
    ),
    (
        {"type": "Embedding", "num_embeddings": 7, "embedding_dim": 3},
        nn.Embedding(7, 3),
        [("weight", [7, 3], F32)],
    ),
    (
        {"type": "Embedding", "num_embeddings": 7, "embedding_dim": 3, "padding_idx": -7},
        nn.Embedding(7, 3, padding_idx=-7),
        [("weight", [7, 3], F32)],
    ),
    (
        {"type": "LayerNorm", "normalized_shape": 5},
        nn.LayerNorm(5),
        [("weight", [5], F32), ("bias", [5], F32)],
    ),
    (
        {"type": "LayerNorm", "normalized_shape": [2, 5], "eps": 1e-3, "bias": False},
        nn.LayerNorm([2, 5], eps=1e-3, bias=False),
        [("weight", [2, 5], F32)],
    ),
    (
        {"type": "LayerNorm", "normalized_shape": [5], "elementwise_affine": False},
        nn.LayerNorm([5], elementwise_affine=False),
        [],
    ),
    (
        {"type": "BatchNorm1d", "num_features": 3},
        nn.BatchNorm1d(3),
        [
            ("weight", [3], F32),
            ("bias", [3], F32),
            ("running_mean", [3], F32),
            ("running_var", [3], F32),
            ("num_batches_tracked", [], I64),
        ],
    ),
    (
        {"type": "BatchNorm1d", "num_features": 3, "affine": False, "momentum": None},
        nn.BatchNorm1d(3, affine=False, momentum=None),
        [
            ("running_mean", [3], F32),
            ("running_var", [3], F32),
            ("num_batches_tracked", [], I64),
        ],
    ),
    (
        {"type": "BatchNorm2d", "num_features": 4, "eps": 1e-3, "momentum": 0.3},
        nn.BatchNorm2d(4, eps=1e-3, momentum=0.3),
        [
            ("weight", [4], F32),
            ("bias", [4], F32),
            ("running_mean", [4], F32),
            ("running_var", [4], F32),
            ("num_batches_tracked", [], I64),
        ],
    ),
    (
        {"type": "BatchNorm2d", "num_features": 4, "track_running_stats": False},
        nn.BatchNorm2d(4, track_running_stats=False),
        [("weight", [4], F32), ("bias", [4], F32)],
    ),
    ({"type": "Dropout"}, nn.Dropout(), []),
    ({"type": "Dropout", "p": 0, "inplace": True}, nn.Dropout(0, inplace=True), []),
    ({"type": "Flatten"}, nn.Flatten(), []),
    ({"type": "Flatten", "start_dim": 0, "end_dim": -2}, nn.Flatten(0, -2), []),
    ({"type": "ReLU"}, nn.ReLU(), []),
    ({"type": "ReLU", "inplace": True}, nn.ReLU(inplace=True), []),
    ({"type": "LeakyReLU", "negative_slope": -2}, nn.LeakyReLU(-2), []),
    ({"type": "GELU"}, nn.GELU(), []),
    ({"type": "GELU", "approximate": "tanh"}, nn.GELU(approximate="tanh"), []),
    ({"type": "SiLU"}, nn.SiLU(), []),
    ({"type": "Tanh"}, nn.Tanh(), []),
    ({"type": "Sigmoid"}, nn.Sigmoid(), []),
    ({"type": "Identity"}, nn.Identity(), []),
    ({"type": "Softmax", "dim": -1}, nn.Softmax(dim=-1), []),
    ({"type": "MaxPool2d", "kernel_size": 2}, nn.MaxPool2d(2), []),
    (
        {
            "type": "MaxPool2d",
            "kernel_size": [3, 2],
            "stride": [1, 2],
            "padding": [1, 0],
            "dilation": [1, 1],
            "ceil_mode": True,
            "return_indices": False,
        },
        nn.MaxPool2d((3, 2), stride=(1, 2), padding=(1, 0), dilation=(1, 1), ceil_mode=True),
        [],
    ),
    ({"type": "AvgPool2d", "kernel_size": 2}, nn.AvgPool2d(2), []),
    (
        {
            "type": "AvgPool2d",
            "kernel_size": 3,
            "stride": 2,
            "padding": 1,
            "ceil_mode": True,
            "count_include_pad": False,
            "divisor_override": 4,
        },
        nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False, divisor_override=4),
        [],
    ),
]


def test_every_type_of_the_spec_is_covered() -> None:
    assert sorted({layer["type"] for layer, _, _ in BUILDS}) == sorted(LAYER_TYPES)


@pytest.mark.parametrize(
    ("layer", "reference", "state"), BUILDS, ids=[repr(case[0]) for case in BUILDS]
)
def test_each_layer_builds_its_torch_module_and_state(
    layer: dict[str, Any],
    reference: nn.Module,
    state: list[tuple[str, list[int], torch.dtype]],
) -> None:
    # Behind a layer without state, so the layer is index 1.
    model = Sequential([{"type": "Identity"}, layer])
    assert isinstance(model, nn.Sequential)
    module = model[1]
    assert type(module) is type(reference)
    assert repr(module) == repr(reference)
    got = [(name, list(t.shape), t.dtype) for name, t in model.state_dict().items()]
    assert got == [(f"1.{name}", shape, dtype) for name, shape, dtype in state]
    assert [name for name, _ in model.named_parameters()] == [
        f"1.{name}" for name, _, _ in state if name in ("weight", "bias")
    ]
    assert list(model.state_dict()) == [f"1.{k}" for k in reference.state_dict()]


def test_the_spec_example_keeps_the_indices_of_layers_without_state() -> None:
    model = Sequential(CONV_NET)
    assert list(model.state_dict()) == [
        "0.weight",
        "0.bias",
        "1.weight",
        "1.bias",
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
        "5.weight",
        "5.bias",
    ]
    assert model.state_dict()["1.num_batches_tracked"].dtype == torch.int64
    assert model.state_dict()["1.num_batches_tracked"].dim() == 0
    assert int(model.state_dict()["1.num_batches_tracked"]) == 0
    assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_parameters_are_weight_and_bias_in_layer_order_without_buffers() -> None:
    model = Sequential(
        [
            {"type": "Embedding", "num_embeddings": 5, "embedding_dim": 4},
            {"type": "LayerNorm", "normalized_shape": 4},
            {"type": "BatchNorm1d", "num_features": 4},
            {"type": "Linear", "in_features": 4, "out_features": 2},
        ]
    )
    names = ["0.weight", "1.weight", "1.bias", "2.weight", "2.bias", "3.weight", "3.bias"]
    assert [name for name, _ in model.named_parameters()] == names
    state = model.state_dict()
    assert [p.data_ptr() for p in model.parameters()] == [state[n].data_ptr() for n in names]
    assert [name for name, _ in model.named_buffers()] == [
        "2.running_mean",
        "2.running_var",
        "2.num_batches_tracked",
    ]


def test_initialisation_is_pytorchs_default() -> None:
    model = Sequential(
        [
            {"type": "Embedding", "num_embeddings": 50, "embedding_dim": 40, "padding_idx": -1},
            {"type": "LayerNorm", "normalized_shape": 40},
            {"type": "BatchNorm1d", "num_features": 40},
            {"type": "Conv1d", "in_channels": 40, "out_channels": 4, "kernel_size": 5, "groups": 2},
            {"type": "Linear", "in_features": 12, "out_features": 3},
        ]
    )
    state = model.state_dict()
    assert torch.equal(state["0.weight"][49], torch.zeros(40))
    assert state["0.weight"][:49].std() > 0.5  # normal(0, 1), not uniform in +-1/sqrt(fan_in)
    for norm in ("1", "2"):
        assert torch.equal(state[f"{norm}.weight"], torch.ones(40))
        assert torch.equal(state[f"{norm}.bias"], torch.zeros(40))
    assert torch.equal(state["2.running_mean"], torch.zeros(40))
    assert torch.equal(state["2.running_var"], torch.ones(40))
    conv_bound = 1 / (20 * 5) ** 0.5
    assert state["3.weight"].abs().max() <= conv_bound
    assert state["3.bias"].abs().max() <= conv_bound
    assert state["4.weight"].abs().max() <= 1 / 12**0.5


def test_tensors_are_float32_whatever_the_default_dtype() -> None:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        model = Sequential(CONV_NET)
    finally:
        torch.set_default_dtype(previous)
    assert {t.dtype for k, t in model.state_dict().items() if "num_batches" not in k} == {F32}


def test_null_is_none_where_pytorchs_default_is_none_and_a_cumulative_momentum() -> None:
    model = Sequential(
        [
            {"type": "MaxPool2d", "kernel_size": [2, 3], "stride": None},
            {"type": "Embedding", "num_embeddings": 3, "embedding_dim": 2, "padding_idx": None},
            {"type": "BatchNorm1d", "num_features": 2, "momentum": None},
            {"type": "AvgPool2d", "kernel_size": 2, "divisor_override": None},
        ]
    )
    assert model[0].stride == (2, 3) and model[0].padding == 0
    assert model[1].padding_idx is None
    assert model[2].momentum is None and model[2].eps == 1e-5
    assert model[3].divisor_override is None
    assert Sequential([{"type": "BatchNorm1d", "num_features": 2}])[0].momentum == 0.1


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        # PyTorch would read None differently from the default: no bias.
        (
            {"type": "Linear", "in_features": 2, "out_features": 2, "bias": None},
            'layer 0 (Linear): argument "bias" must be a bool (true or false), got null',
        ),
        (
            {"type": "BatchNorm1d", "num_features": 2, "eps": None},
            'layer 0 (BatchNorm1d): argument "eps" must be a number, got null',
        ),
        (
            {"type": "Linear", "in_features": None, "out_features": 2},
            'layer 0 (Linear): argument "in_features" must be an int, got null',
        ),
        (
            {"type": "Linear", "in_features": 2**63, "out_features": 2},
            'layer 0 (Linear): argument "in_features" must be an int, got 9223372036854775808',
        ),
    ],
)
def test_null_elsewhere_and_ints_beyond_64_bits_are_refused(
    layer: dict[str, Any], message: str
) -> None:
    with pytest.raises(LayerSpecError) as info:
        Sequential([layer])
    assert str(info.value) == message


def test_a_slice_is_a_plain_sequential() -> None:
    model = Sequential(CONV_NET)
    part = model[1:3]
    assert type(part) is nn.Sequential
    assert list(part.state_dict())[0] == "1.weight"
    assert part[0] is model[1]
    assert model[-1] is model[5]


def test_the_layer_list_is_kept_as_given_and_copied() -> None:
    layers = copy.deepcopy(CONV_NET)
    model = Sequential(layers)
    layers[0]["out_channels"] = 8
    layers.append({"type": "ReLU"})
    assert model.layer_specs == CONV_NET
    model.layer_specs[0]["kernel_size"] = 5
    assert model.layer_specs == CONV_NET


def test_recorded_and_resolved_by_its_name() -> None:
    assert class_name(Sequential) == "pytorch_saver.models.Sequential"
    assert resolve("pytorch_saver.models.Sequential", "model") is Sequential


# forward, against plain torch.nn.Sequential


def reference_of(model: Sequential, modules: list[nn.Module]) -> nn.Sequential:
    plain = nn.Sequential(*modules)
    plain.load_state_dict(model.state_dict())
    return plain


NETS: list[tuple[list[dict[str, Any]], list[nn.Module], torch.Tensor]] = [
    (
        CONV_NET,
        [
            nn.Conv2d(1, 4, 3, padding=1),
            nn.BatchNorm2d(4),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(64, 10),
        ],
        torch.randn(6, 1, 8, 8, generator=torch.Generator().manual_seed(1)),
    ),
    (
        [
            {
                "type": "Conv1d",
                "in_channels": 4,
                "out_channels": 6,
                "kernel_size": 4,
                "padding": "same",
                "dilation": 2,
                "groups": 2,
            },
            {"type": "BatchNorm1d", "num_features": 6, "momentum": None},
            {"type": "GELU", "approximate": "tanh"},
            {"type": "Dropout", "p": 0.25},
            {"type": "Flatten"},
            {"type": "Linear", "in_features": 42, "out_features": 5},
            {"type": "LeakyReLU", "negative_slope": 0.2},
            {"type": "Softmax", "dim": 1},
        ],
        [
            nn.Conv1d(4, 6, 4, padding="same", dilation=2, groups=2),
            nn.BatchNorm1d(6, momentum=None),
            nn.GELU(approximate="tanh"),
            nn.Dropout(0.25),
            nn.Flatten(),
            nn.Linear(42, 5),
            nn.LeakyReLU(0.2),
            nn.Softmax(dim=1),
        ],
        torch.randn(5, 4, 7, generator=torch.Generator().manual_seed(2)),
    ),
    (
        [
            {"type": "Embedding", "num_embeddings": 10, "embedding_dim": 6, "padding_idx": 0},
            {"type": "LayerNorm", "normalized_shape": [6], "eps": 1e-4},
            {"type": "SiLU"},
            {"type": "BatchNorm1d", "num_features": 3, "affine": False},
            {"type": "Linear", "in_features": 6, "out_features": 4, "bias": False},
            {"type": "Tanh"},
            {"type": "Identity"},
            {"type": "Sigmoid"},
        ],
        [
            nn.Embedding(10, 6, padding_idx=0),
            nn.LayerNorm([6], eps=1e-4),
            nn.SiLU(),
            nn.BatchNorm1d(3, affine=False),
            nn.Linear(6, 4, bias=False),
            nn.Tanh(),
            nn.Identity(),
            nn.Sigmoid(),
        ],
        torch.randint(0, 10, (4, 3), generator=torch.Generator().manual_seed(3)),
    ),
    (
        [
            {"type": "MaxPool2d", "kernel_size": 3, "stride": 1, "padding": 1, "dilation": 1},
            {"type": "BatchNorm2d", "num_features": 2, "track_running_stats": False},
            {
                "type": "AvgPool2d",
                "kernel_size": [3, 2],
                "stride": [2, 1],
                "padding": [1, 0],
                "ceil_mode": True,
                "count_include_pad": False,
                "divisor_override": 5,
            },
            {"type": "MaxPool2d", "kernel_size": 2, "dilation": 2, "ceil_mode": True},
            {"type": "Flatten", "start_dim": 2},
            {"type": "LayerNorm", "normalized_shape": 6, "elementwise_affine": False},
        ],
        [
            nn.MaxPool2d(3, 1, 1),
            nn.BatchNorm2d(2, track_running_stats=False),
            nn.AvgPool2d(
                (3, 2), (2, 1), (1, 0), ceil_mode=True, count_include_pad=False, divisor_override=5
            ),
            nn.MaxPool2d(2, dilation=2, ceil_mode=True),
            nn.Flatten(2),
            nn.LayerNorm(6, elementwise_affine=False),
        ],
        torch.randn(3, 2, 9, 8, generator=torch.Generator().manual_seed(4)),
    ),
]


@pytest.mark.parametrize(("layers", "modules", "x"), NETS, ids=["conv2d", "conv1d", "emb", "pool"])
def test_forward_is_that_of_plain_torch_modules(
    layers: list[dict[str, Any]], modules: list[nn.Module], x: torch.Tensor
) -> None:
    model = Sequential(layers)
    plain = reference_of(model, modules)
    model.eval()
    plain.eval()
    assert torch.equal(model(x), plain(x))
    model.train()
    plain.train()
    for step in range(3):
        torch.manual_seed(step)  # the same Dropout masks
        out = model(x)
        torch.manual_seed(step)
        assert torch.equal(out, plain(x))
    assert_same_state(model, plain)
    model.eval()
    plain.eval()
    assert torch.equal(model(x), plain(x))


def assert_same_state(a: nn.Module, b: nn.Module | dict[str, torch.Tensor]) -> None:
    sa, sb = a.state_dict(), b if isinstance(b, dict) else b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].dtype == sb[key].dtype and torch.equal(sa[key], sb[key]), key


def test_batch_norm_running_stats_in_train_and_eval() -> None:
    model = Sequential([{"type": "BatchNorm1d", "num_features": 3, "momentum": 0.5}])
    cumulative = Sequential([{"type": "BatchNorm1d", "num_features": 3, "momentum": None}])
    gen = torch.Generator().manual_seed(5)
    xs = [torch.randn(8, 3, generator=gen) * 2 + 1 for _ in range(3)]
    for x in xs:
        model(x)
        cumulative(x)
    state = model.state_dict()
    assert int(state["0.num_batches_tracked"]) == 3
    mean, var = torch.zeros(3), torch.ones(3)
    for x in xs:  # factor momentum, unbiased batch variance
        mean = 0.5 * mean + 0.5 * x.mean(0)
        var = 0.5 * var + 0.5 * x.var(0, unbiased=True)
    torch.testing.assert_close(state["0.running_mean"], mean)
    torch.testing.assert_close(state["0.running_var"], var)
    # momentum null: factor 1 / num_batches_tracked, a cumulative average
    assert int(cumulative.state_dict()["0.num_batches_tracked"]) == 3
    torch.testing.assert_close(
        cumulative.state_dict()["0.running_mean"], torch.stack([x.mean(0) for x in xs]).mean(0)
    )
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, generator=gen)
    expected = (x - state["0.running_mean"]) / torch.sqrt(state["0.running_var"] + 1e-5)
    torch.testing.assert_close(model(x), expected)
    assert_same_state(model, before)


def test_dropout_is_the_identity_in_eval_mode() -> None:
    model = Sequential([{"type": "Dropout", "p": 0.9}]).eval()
    x = torch.randn(100)
    assert torch.equal(model(x), x)
    model.train()
    assert not torch.equal(model(x), x)


@pytest.mark.parametrize(
    ("layers", "shape"),
    [
        ([{"type": "BatchNorm1d", "num_features": 3}], [2, 3, 4, 5]),
        ([{"type": "BatchNorm2d", "num_features": 3}], [2, 3, 4]),
    ],
)
def test_batch_norm_of_another_rank_is_an_error_as_in_pytorch(
    layers: list[dict[str, Any]], shape: list[int]
) -> None:
    with pytest.raises(ValueError, match="expected"):
        Sequential(layers)(torch.randn(shape))


# errors

GOOD_PREFIX: list[dict[str, Any]] = [
    {"type": "ReLU"},
    {"type": "Linear", "in_features": 2, "out_features": 2},
]

LINEAR = {"type": "Linear", "in_features": 3, "out_features": 4}
CONV1 = {"type": "Conv1d", "in_channels": 2, "out_channels": 4, "kernel_size": 3}
CONV2 = {"type": "Conv2d", "in_channels": 2, "out_channels": 4, "kernel_size": 3}
EMB = {"type": "Embedding", "num_embeddings": 5, "embedding_dim": 2}
LN = {"type": "LayerNorm", "normalized_shape": 4}
BN1 = {"type": "BatchNorm1d", "num_features": 4}
BN2 = {"type": "BatchNorm2d", "num_features": 4}
MAX = {"type": "MaxPool2d", "kernel_size": 2}
AVG = {"type": "AvgPool2d", "kernel_size": 2}


def without(layer: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in layer.items() if k != key}


# (bad layer, what the message says after "layer 2 (Type): ")
LAYER_ERRORS: list[tuple[dict[str, Any], str]] = [
    # unknown type
    ({"type": "Conv3d"}, 'unknown type "Conv3d"; the known types are ' + ", ".join(LAYER_TYPES)),
    ({"type": "linear", "in_features": 1}, 'unknown type "linear"'),
    # an argument the type does not take
    ({**LINEAR, "device": "cpu"}, 'unexpected argument "device"'),
    ({**LINEAR, "dtype": "float64"}, 'unexpected argument "dtype"'),
    ({**CONV2, "output_padding": 0}, 'unexpected argument "output_padding"'),
    ({**EMB, "max_norm": 1.0}, 'unexpected argument "max_norm"'),
    ({**EMB, "sparse": False}, 'unexpected argument "sparse"'),
    ({**BN2, "bias": False}, 'unexpected argument "bias"'),
    ({**AVG, "dilation": 1}, 'unexpected argument "dilation"'),
    ({"type": "Dropout", "P": 0.5}, 'unexpected argument "P"'),
    ({"type": "Identity", "anything": 1}, 'unexpected argument "anything"'),
    ({"type": "Tanh", "inplace": False}, 'unexpected argument "inplace" (Tanh takes no arguments)'),
    ({"type": "Sigmoid", "dim": 1}, 'unexpected argument "dim"'),
    ({"type": "GELU", "inplace": False}, 'unexpected argument "inplace"'),
    # a required argument missing (null is missing)
    (without(LINEAR, "in_features"), 'argument "in_features" is required'),
    ({**LINEAR, "out_features": None}, 'argument "out_features" must be an int, got null'),
    (without(CONV1, "kernel_size"), 'argument "kernel_size" is required'),
    (without(CONV2, "in_channels"), 'argument "in_channels" is required'),
    (without(EMB, "embedding_dim"), 'argument "embedding_dim" is required'),
    (without(LN, "normalized_shape"), 'argument "normalized_shape" is required'),
    (without(BN1, "num_features"), 'argument "num_features" is required'),
    ({"type": "Softmax"}, 'argument "dim" is required'),
    ({"type": "Softmax", "dim": None}, 'argument "dim" must be an int, got null'),
    (without(MAX, "kernel_size"), 'argument "kernel_size" is required'),
    (without(AVG, "kernel_size"), 'argument "kernel_size" is required'),
    # a value of the wrong kind
    ({**CONV2, "kernel_size": "3"}, 'argument "kernel_size" must be an int or 2 ints, got "3"'),
    ({**LINEAR, "in_features": True}, 'argument "in_features" must be an int, got true'),
    ({**LINEAR, "in_features": 3.0}, 'argument "in_features" must be an int, got 3.0'),
    ({**LINEAR, "bias": 1}, 'argument "bias" must be a bool (true or false), got 1'),
    ({**LINEAR, "bias": "true"}, 'argument "bias" must be a bool'),
    (
        {**CONV1, "kernel_size": [3, 3]},
        'argument "kernel_size" must be an int or 1 int, got [3, 3]',
    ),
    ({**CONV2, "kernel_size": [3]}, 'argument "kernel_size" must be an int or 2 ints, got [3]'),
    ({**CONV2, "stride": [1, 1.0]}, 'argument "stride" must be an int or 2 ints, got [1, 1.0]'),
    ({**CONV2, "dilation": [1, True]}, 'argument "dilation" must be an int or 2 ints'),
    (
        {**CONV2, "padding": "full"},
        'argument "padding" must be an int or 2 ints or "valid" or "same"',
    ),
    (
        {**CONV2, "padding_mode": "reflect"},
        'argument "padding_mode" must be "zeros", got "reflect"',
    ),
    ({**CONV2, "groups": 1.0}, 'argument "groups" must be an int'),
    ({**EMB, "padding_idx": 1.0}, 'argument "padding_idx" must be an int'),
    ({**LN, "normalized_shape": []}, 'argument "normalized_shape" must be an int or a non-empty'),
    ({**LN, "normalized_shape": [4, 2.0]}, 'argument "normalized_shape" must be an int or a'),
    ({**LN, "eps": "1e-5"}, 'argument "eps" must be a number, got "1e-5"'),
    ({**LN, "elementwise_affine": 0}, 'argument "elementwise_affine" must be a bool'),
    ({**BN1, "momentum": True}, 'argument "momentum" must be a number, got true'),
    ({**BN1, "eps": float("nan")}, 'argument "eps" must be a number, got NaN'),
    ({**BN2, "track_running_stats": "no"}, 'argument "track_running_stats" must be'),
    ({"type": "Dropout", "p": float("inf")}, 'argument "p" must be a number, got Infinity'),
    ({"type": "Dropout", "p": 10**400}, 'argument "p" must be in [0, 1], got 1000'),
    ({"type": "Dropout", "inplace": "false"}, 'argument "inplace" must be a bool'),
    ({"type": "Flatten", "start_dim": 1.5}, 'argument "start_dim" must be an int, got 1.5'),
    ({"type": "Flatten", "end_dim": False}, 'argument "end_dim" must be an int, got false'),
    ({"type": "ReLU", "inplace": 0}, 'argument "inplace" must be a bool'),
    ({"type": "LeakyReLU", "negative_slope": "0.1"}, 'argument "negative_slope" must be a number'),
    (
        {"type": "GELU", "approximate": "exact"},
        'argument "approximate" must be "none" or "tanh", got "exact"',
    ),
    (
        {"type": "GELU", "approximate": True},
        'argument "approximate" must be "none" or "tanh", got true',
    ),
    ({"type": "SiLU", "inplace": []}, 'argument "inplace" must be a bool'),
    ({"type": "Softmax", "dim": "1"}, 'argument "dim" must be an int, got "1"'),
    ({**MAX, "kernel_size": [2, 2, 2]}, 'argument "kernel_size" must be an int or 2 ints'),
    ({**MAX, "return_indices": True}, 'argument "return_indices" must be false, got true'),
    ({**MAX, "return_indices": 0}, 'argument "return_indices" must be false, got 0'),
    ({**MAX, "ceil_mode": "yes"}, 'argument "ceil_mode" must be a bool'),
    ({**AVG, "count_include_pad": 1}, 'argument "count_include_pad" must be a bool'),
    ({**AVG, "divisor_override": 2.0}, 'argument "divisor_override" must be an int'),
    # out of range
    ({**LINEAR, "in_features": 0}, 'argument "in_features" must be >= 1, got 0'),
    ({**LINEAR, "out_features": -4}, 'argument "out_features" must be >= 1, got -4'),
    ({**CONV1, "in_channels": 0}, 'argument "in_channels" must be >= 1, got 0'),
    ({**CONV1, "kernel_size": [0]}, 'argument "kernel_size" must be >= 1, got [0]'),
    ({**CONV2, "kernel_size": [3, 0]}, 'argument "kernel_size" must be >= 1, got [3, 0]'),
    ({**CONV2, "stride": 0}, 'argument "stride" must be >= 1, got 0'),
    ({**CONV2, "dilation": [1, 0]}, 'argument "dilation" must be >= 1, got [1, 0]'),
    ({**CONV2, "padding": -1}, 'argument "padding" must be >= 0, got -1'),
    ({**CONV2, "groups": 0}, 'argument "groups" must be >= 1, got 0'),
    ({**CONV2, "groups": 4}, 'argument "in_channels" must be divisible by groups (4), got 2'),
    (
        {**CONV2, "out_channels": 3, "groups": 2},
        'argument "out_channels" must be divisible by groups (2), got 3',
    ),
    ({**CONV2, "padding": "same", "stride": 2}, 'argument "padding" "same" needs stride 1'),
    ({**CONV1, "padding": "same", "stride": [2]}, 'argument "padding" "same" needs stride 1'),
    ({**EMB, "num_embeddings": 0}, 'argument "num_embeddings" must be >= 1, got 0'),
    ({**EMB, "embedding_dim": 0}, 'argument "embedding_dim" must be >= 1, got 0'),
    ({**EMB, "padding_idx": 5}, 'argument "padding_idx" must be in [-5, 5), got 5'),
    ({**EMB, "padding_idx": -6}, 'argument "padding_idx" must be in [-5, 5), got -6'),
    ({**LN, "normalized_shape": 0}, 'argument "normalized_shape" must be >= 1, got 0'),
    ({**LN, "normalized_shape": [4, 0]}, 'argument "normalized_shape" must be >= 1, got [4, 0]'),
    ({**LN, "eps": 0}, 'argument "eps" must be > 0, got 0'),
    ({**BN1, "eps": -1e-5}, 'argument "eps" must be > 0, got -1e-05'),
    ({**BN1, "num_features": 0}, 'argument "num_features" must be >= 1, got 0'),
    ({**BN2, "momentum": -0.1}, 'argument "momentum" must be in [0, 1], got -0.1'),
    ({**BN2, "momentum": 1.5}, 'argument "momentum" must be in [0, 1], got 1.5'),
    ({"type": "Dropout", "p": -0.1}, 'argument "p" must be in [0, 1], got -0.1'),
    ({"type": "Dropout", "p": 1.01}, 'argument "p" must be in [0, 1], got 1.01'),
    ({**MAX, "kernel_size": 0}, 'argument "kernel_size" must be >= 1, got 0'),
    ({**MAX, "stride": [1, 0]}, 'argument "stride" must be >= 1, got [1, 0]'),
    ({**MAX, "padding": [0, -1]}, 'argument "padding" must be >= 0, got [0, -1]'),
    ({**MAX, "dilation": 0}, 'argument "dilation" must be >= 1, got 0'),
    ({**AVG, "kernel_size": [0, 2]}, 'argument "kernel_size" must be >= 1, got [0, 2]'),
    ({**AVG, "stride": 0}, 'argument "stride" must be >= 1, got 0'),
    ({**AVG, "padding": -1}, 'argument "padding" must be >= 0, got -1'),
    ({**AVG, "divisor_override": 0}, 'argument "divisor_override" must be >= 1, got 0'),
]


@pytest.mark.parametrize(
    ("layer", "message"),
    LAYER_ERRORS,
    ids=[f"{i}-{m[:40]}" for i, (_, m) in enumerate(LAYER_ERRORS)],
)
def test_a_layer_breaking_a_rule_is_refused_naming_index_and_type(
    layer: dict[str, Any], message: str
) -> None:
    # A valid Linear comes first: nothing is built, so torch's generator is
    # untouched, when a later layer is refused.
    rng = torch.get_rng_state()
    with pytest.raises(LayerSpecError) as info:
        Sequential([*GOOD_PREFIX, layer])
    assert torch.equal(torch.get_rng_state(), rng)
    assert str(info.value).startswith(f"layer 2 ({layer['type']}): {message}")
    assert isinstance(info.value, ValueError) and isinstance(info.value, PytorchSaverError)


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (3, 'layer 2: must be an object with a string "type", got 3'),
        ("ReLU", 'layer 2: must be an object with a string "type", got "ReLU"'),
        ([{"type": "ReLU"}], 'layer 2: must be an object with a string "type"'),
        (None, 'layer 2: must be an object with a string "type", got null'),
        ({}, 'layer 2: has no "type"'),
        ({"in_features": 3}, 'layer 2: has no "type"'),
        ({"type": None}, 'layer 2: has no "type"'),
        ({"type": 3}, 'layer 2: "type" must be a string, got 3'),
        ({"type": ["ReLU"]}, 'layer 2: "type" must be a string, got ["ReLU"]'),
    ],
)
def test_a_layer_without_a_type_is_refused_naming_its_index(layer: Any, message: str) -> None:
    with pytest.raises(LayerSpecError) as info:
        Sequential([*GOOD_PREFIX, layer])
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, 'Sequential: kwarg "layers" is required'),
        ({"layers": None}, 'Sequential: kwarg "layers" is required'),
        ({"layers": []}, 'kwarg "layers" must be a non-empty array of layer objects, got []'),
        ({"layers": {"type": "ReLU"}}, 'kwarg "layers" must be a non-empty array'),
        ({"layers": "ReLU"}, 'kwarg "layers" must be a non-empty array'),
        ({"layers": 3}, 'kwarg "layers" must be a non-empty array'),
        ({"layers": [LINEAR], "n_layers": 3}, 'unexpected kwarg "n_layers"'),
        ({"n_layers": 3}, 'unexpected kwarg "n_layers"'),
    ],
)
def test_bad_kwargs_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(LayerSpecError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Sequential(**kwargs)


def test_the_first_broken_rule_is_reported_and_the_list_is_checked_whole() -> None:
    with pytest.raises(LayerSpecError, match=r"^layer 3 \(Softmax\)"):
        Sequential([LINEAR, {"type": "ReLU"}, LINEAR, {"type": "Softmax"}, {"type": "Bad"}])


def test_a_tuple_of_layers_and_tuples_of_ints_are_arrays() -> None:
    model = Sequential(({**CONV2, "kernel_size": (3, 1), "stride": (1, 1)},))
    assert model[0].kernel_size == (3, 1)


# through ModelContainer


def image_batches(n: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(99)
    return [
        (torch.randn(8, 1, 8, 8, generator=gen), torch.randn(8, 10, generator=gen))
        for _ in range(n)
    ]


def train(objs: ModelObjects, data: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
    assert objs.optimizer is not None
    objs.model.train()
    for x, y in data:
        objs.optimizer.zero_grad()
        loss = (objs.model(x) - y).square().mean()
        loss.backward()
        objs.optimizer.step()


def test_initialize_train_save_and_load_with_no_classes(tmp_path: Path) -> None:
    layers = copy.deepcopy(CONV_NET)
    layers[3]["stride"] = None  # recorded as given, null included
    layers[3]["kernel_size"] = [2, 2]
    container = ModelContainer()
    objs = container.initialize(Sequential, {"layers": layers}, torch.optim.Adam, {"lr": 1e-2})
    assert isinstance(objs.model, Sequential)
    train(objs, image_batches(3))
    assert int(objs.model.state_dict()["1.num_batches_tracked"]) == 3
    path = container.save(tmp_path, "conv", epoch=3)
    raw = raw_metadata(path)
    assert raw["model_kwargs"] == {"layers": layers}
    assert raw["__pytorch_saver__"]["model"]["class"] == "pytorch_saver.models.Sequential"

    metadata, loaded = ModelContainer().load(path)  # README form: no classes
    assert type(loaded.model) is Sequential
    assert type(loaded.optimizer) is torch.optim.Adam
    assert metadata["model_kwargs"] == {"layers": layers}
    assert loaded.model.layer_specs == layers
    assert_same_objects(objs, loaded)
    # Both go on the same way.
    more = image_batches(5)[3:]
    train(objs, more)
    train(loaded, more)
    assert_same_objects(objs, loaded)

    inference = container.save_inference(tmp_path, "conv")
    _, served = ModelContainer().load(inference)
    assert served.optimizer is None
    objs.model.eval()
    served.model.eval()
    x = image_batches(1)[0][0]
    assert torch.equal(served.model(x), objs.model(x))


def test_initialize_with_a_bad_layer_list_raises_initialization_error() -> None:
    container = ModelContainer()
    bad = [*CONV_NET[:2], {**CONV_NET[2], "inplace": 1}]
    with pytest.raises(InitializationError) as info:
        container.initialize(Sequential, {"layers": bad}, torch.optim.Adam, {"lr": 1e-3})
    assert isinstance(info.value.__cause__, LayerSpecError)
    assert 'layer 2 (ReLU): argument "inplace" must be a bool' in str(info.value)
    assert container.model is None
    with pytest.raises(InitializationError) as info:
        container.initialize(Sequential, {})
    assert isinstance(info.value.__cause__, LayerSpecError)


def test_loading_a_file_with_a_bad_layer_list_raises_initialization_error(tmp_path: Path) -> None:
    container = ModelContainer()
    container.initialize(Sequential, {"layers": CONV_NET})
    path = container.save_inference(tmp_path)
    ckpt = read_checkpoint(path)
    metadata = json.loads(json.dumps(ckpt.metadata))
    metadata["model_kwargs"]["layers"][0]["kernel_size"] = "3"
    bad = write_checkpoint(str(tmp_path), "bad", metadata, ckpt.model, None)
    with pytest.raises(InitializationError) as info:
        ModelContainer().load(bad)
    assert isinstance(info.value.__cause__, LayerSpecError)
    assert 'layer 0 (Conv2d): argument "kernel_size" must be an int or 2 ints, got "3"' in str(
        info.value
    )


def test_the_recorded_kwargs_are_those_the_model_was_built_from(tmp_path: Path) -> None:
    # The caller's list changes after initialize: the file still describes
    # the model that exists, so that it rebuilds in any language.
    layers = copy.deepcopy(CONV_NET)
    optim_kwargs: dict[str, Any] = {"lr": 0.01, "betas": [0.9, 0.99]}
    container = ModelContainer()
    container.initialize(Sequential, {"layers": layers}, torch.optim.Adam, optim_kwargs)
    layers[0]["out_channels"] = 16
    layers.append({"type": "ReLU"})
    optim_kwargs["betas"][1] = 0.5
    raw = raw_metadata(container.save(tmp_path, "snapshot"))
    assert raw["model_kwargs"] == {"layers": CONV_NET}
    assert raw["optim_kwargs"] == {"lr": 0.01, "betas": [0.9, 0.99]}
    _, loaded = ModelContainer().load(container.save_inference(tmp_path, "snapshot"))
    assert loaded.model.layer_specs == CONV_NET
