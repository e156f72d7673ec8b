from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from segdepth.learn.model import (
    PAPER_TABLE_I,
    LocalMeanDivide,
    MedianFilter2d,
    UNet,
    count_parameters,
    paper_config,
    parameter_table,
    predict_proba,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(**kwargs) -> UNet:
    """Two-scale model that runs in milliseconds."""
    args = {"channels": (2, 4, 4), "n_scales": 2, "head_channels": (4, 4)}
    args.update(kwargs)
    return UNet(**args)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("shape", [(2, 1, 16, 16), (1, 1, 32, 48), (3, 1, 64, 8)])
@pytest.mark.parametrize("upsample", ["bilinear", "transpose"])
def test_output_shape_is_logits_on_4x_coarser_grid(shape, upsample):
    model = tiny(upsample=upsample).eval()
    with torch.no_grad():
        out = model(torch.randn(*shape))
    b, _, h, w = shape
    assert out.shape == (b, 11, h // 4, w // 4)
    assert model.output_factor == 4


def test_default_model_has_six_scales_and_runs():
    model = UNet(base_channels=4).eval()
    assert model.required_multiple == 64
    assert model.config["channels"] == [4, 8, 16, 32, 64, 64, 64]
    assert model.config["head_channels"] == [8, 16]
    with torch.no_grad():
        out = model(torch.randn(1, 1, 64, 128))
    assert out.shape == (1, 11, 16, 32)


def test_wrong_size_names_padded_shape():
    model = UNet(base_channels=2)
    with pytest.raises(ValueError, match=r"multiples of 64.*pad to \(1, 1, 64, 128\)"):
        model(torch.zeros(1, 1, 60, 100))
    with pytest.raises(ValueError, match=r"\(batch, 1, H, W\)"):
        model(torch.zeros(1, 2, 64, 64))
    with pytest.raises(ValueError, match=r"\(batch, 1, H, W\)"):
        model(torch.zeros(64, 64))


def test_growth_rules_and_explicit_channels():
    assert UNet(base_channels=8, n_scales=3, channel_growth="hold").config["channels"] == [8, 8, 8, 8]
    assert UNet(base_channels=8, n_scales=3, max_channels=32).config["channels"] == [8, 16, 32, 32]
    assert UNet(base_channels=8, n_scales=3).config["channels"] == [8, 16, 32, 64]
    assert UNet(base_channels=np.int64(8), n_scales=np.int64(1)).config["channels"] == [8, 16]  # numpy ints
    assert type(UNet(base_channels=np.int64(8), n_scales=1).config["base_channels"]) is int
    model = UNet(channels=(3, 5, 7), n_scales=2)
    assert model.config["base_channels"] == 3
    assert model.config["head_channels"] == [6, 12]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"channel_growth": "triple"}, "channel_growth"),
        ({"upsample": "nearest"}, "upsample"),
        ({"channels": (4, 8), "n_scales": 2}, "n_scales \\+ 1 = 3"),
        ({"channels": (4, 8, 8), "n_scales": 2, "base_channels": 16}, "base_channels"),
        ({"head_channels": (4, 4, 4)}, "head_channels"),
        ({"median_size": 0}, "median_size"),
        ({"base_channels": 0}, "base_channels"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**kwargs)


def _numpy_median_filter(x: np.ndarray, size: int) -> np.ndarray:
    before, after = (size - 1) // 2, size // 2
    padded = np.pad(x, ((before, after), (before, after)), mode="edge")
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            out[i, j] = np.median(padded[i : i + size, j : j + size])
    return out


@pytest.mark.parametrize("size", [4, 3, 1])
def test_median_filter_matches_numpy(size):
    rng = np.random.default_rng(1)
    x = rng.permutation(30).reshape(5, 6).astype(np.float64)
    out = MedianFilter2d(size)(torch.from_numpy(x)[None, None])
    assert out.shape == (1, 1, 5, 6)
    np.testing.assert_array_equal(out[0, 0].numpy(), _numpy_median_filter(x, size))


def test_median_filter_size4_window_is_rows_i_minus_1_to_i_plus_2():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 2:6, 2:6] = 1.0  # a 4 x 4 block of ones
    out = MedianFilter2d(4)(x)[0, 0]
    assert out[3, 3] == 1.0  # window rows 2..5: 16 ones
    assert out[2, 3] == 1.0  # rows 1..4: 12 ones of 16
    assert out[1, 3] == 0.5  # rows 0..3: 8 ones -> mean of 8th and 9th value (0 + 1) / 2
    assert out[5, 3] == 0.5  # rows 4..7: 8 ones (symmetric about the block)
    assert out[0, 3] == 0.0  # rows -1..2 (row 0 replicated): 4 ones
    assert out[6, 3] == 0.0


def test_median_filter_is_differentiable():
    x = torch.randn(2, 3, 6, 6, requires_grad=True)
    MedianFilter2d(4)(x).sum().backward()
    assert x.grad is not None and torch.count_nonzero(x.grad) > 0


def test_gradient_flows_to_input():
    model = tiny().train()
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    model(x).logsumexp(dim=1).sum().backward()
    assert torch.isfinite(x.grad).all() and torch.count_nonzero(x.grad) > 0
    assert all(p.grad is not None for p in model.parameters())


def _double_conv(i: int, o: int) -> int:
    return 9 * i * o + 9 * o * o + 4 * o  # two bias-free 3x3 convs + two batch norms (weight, bias)


def test_parameter_count_matches_hand_formula():
    # channels (2, 4), head (3, 5), 11 classes, bilinear:
    # inc 1->2: 18 + 36 + 8 = 62; down 2->4: 72 + 144 + 16 = 232; up (4+2)->2: 108 + 36 + 8 = 152
    # head 2->3: 54 + 81 + 12 = 147; 3->5: 135 + 225 + 20 = 380; 1x1 conv 5->11: 55 + 11 = 66
    model = UNet(channels=(2, 4), n_scales=1, head_channels=(3, 5))
    assert count_parameters(model) == 62 + 232 + 152 + 147 + 380 + 66 == 1039
    # transposed conv 4->2 (2x2 kernel + bias) = 34, then (2+2)->2: 72 + 36 + 8 = 116
    model = UNet(channels=(2, 4), n_scales=1, head_channels=(3, 5), upsample="transpose")
    assert count_parameters(model) == 62 + 232 + 34 + 116 + 147 + 380 + 66
    # the same formula for a paper-size model (built on the meta device: no memory)
    cfg = paper_config(16)
    c, (h1, h2) = cfg["channels"], cfg["head_channels"]
    expected = _double_conv(1, c[0])
    expected += sum(_double_conv(a, b) for a, b in zip(c[:-1], c[1:]))
    expected += sum(_double_conv(a + b, b) for a, b in zip(c[1:], c[:-1]))
    expected += _double_conv(c[0], h1) + _double_conv(h1, h2) + 11 * h2 + 11
    with torch.device("meta"):
        assert count_parameters(UNet.from_config(cfg)) == expected


def test_parameter_table_against_paper():
    rows = parameter_table()
    assert [r[0] for r in rows] == [16, 32, 64, 96, 130]
    for base, ours, paper in rows:
        assert paper == PAPER_TABLE_I[base]
        assert abs(ours / paper - 1) < 0.05, (base, ours, paper)
    assert rows[2][1] < rows[1][1]  # like the paper: base 64 is smaller than base 32
    assert np.isnan(parameter_table((8,))[0][2])


def test_config_is_json_and_round_trips():
    model = tiny(upsample="transpose", median_size=3)
    cfg = json.loads(json.dumps(model.config))
    rebuilt = UNet.from_config(cfg)
    assert rebuilt.config == model.config
    assert [(k, v.shape) for k, v in rebuilt.state_dict().items()] == [
        (k, v.shape) for k, v in model.state_dict().items()
    ]
    with pytest.raises(ValueError, match="not a valid UNet configuration"):
        UNet.from_config({**cfg, "dropout": 0.5})


def test_predict_proba_is_a_distribution():
    model = tiny().eval()
    proba = predict_proba(model, torch.randn(2, 1, 16, 16))
    assert proba.shape == (2, 11, 4, 4)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(2, 4, 4))
    assert not proba.requires_grad


def test_format_parameter_table_has_one_row_per_width():
    from segdepth.learn.model import format_parameter_table

    lines = format_parameter_table((16, 64)).splitlines()
    assert len(lines) == 4 and lines[2].startswith("| 16 | 12.04 | 11.75 |") and lines[3].startswith("| 64 |")


@pytest.mark.parametrize("size", [2, 4])
def test_network_median_equals_sorting_with_ties(size):
    """The sorting-network path (power-of-two sizes) gives the sorted-window median, ties included."""
    rng = np.random.default_rng(size)
    x = torch.from_numpy(rng.integers(0, 4, (2, 3, 9, 11)).astype(np.float32))  # many ties
    median = MedianFilter2d(size)
    assert median._network is not None
    before, after = (size - 1) // 2, size // 2
    padded = torch.nn.functional.pad(x, (before, after, before, after), mode="replicate")
    torch.testing.assert_close(median(x), median._sorted_median(padded, x.shape), rtol=0, atol=0)
    np.testing.assert_array_equal(median(x)[1, 2].numpy(), _numpy_median_filter(x[1, 2].numpy(), size))


def test_median_network_sorts_every_binary_input():
    """0-1 principle: the unpruned 4 x 4 network (column sort + merges) sorts all 2**16 binary inputs."""
    from segdepth.learn.model import _oddeven_merge, _oddeven_sort

    column = list(_oddeven_sort(0, 3))
    merges = [*_oddeven_merge(0, 7, 1), *_oddeven_merge(8, 15, 1), *_oddeven_merge(0, 15, 1)]
    bits = (np.arange(2**16)[:, None] >> np.arange(16)) & 1
    wires = [bits[:, i].copy() for i in range(16)]
    for group in range(4):
        for a, b in column:
            a, b = 4 * group + a, 4 * group + b
            wires[a], wires[b] = np.minimum(wires[a], wires[b]), np.maximum(wires[a], wires[b])
    for a, b in merges:
        wires[a], wires[b] = np.minimum(wires[a], wires[b]), np.maximum(wires[a], wires[b])
    out = np.stack(wires, axis=1)
    assert np.all(np.diff(out, axis=1) >= 0)


def test_network_median_gradient_reaches_the_two_middle_values():
    x = torch.randn(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    MedianFilter2d(4)(x)[0, 0, 1, 1].backward()  # window: the whole 4 x 4 input, no padding
    values = x.detach().flatten().sort().values
    middle = (x.detach() == values[7]) | (x.detach() == values[8])
    assert torch.all(x.grad[middle] == 0.5) and torch.all(x.grad[~middle] == 0)


@pytest.mark.parametrize("factor, head", [(1, []), (2, [4]), (4, [4, 8])])
def test_output_factor_sets_the_head(factor, head):
    model = tiny(output_factor=factor, head_channels=head).eval()
    assert model.output_factor == factor and model.config["output_factor"] == factor
    with torch.no_grad():
        out = model(torch.randn(2, 1, 16, 32))
    assert out.shape == (2, 11, 16 // factor, 32 // factor)
    assert UNet.from_config(model.config).output_factor == factor
    assert UNet(base_channels=4, output_factor=1).config["head_channels"] == []


def test_output_factor_validation():
    with pytest.raises(ValueError, match="output_factor must be 1, 2 or 4"):
        tiny(output_factor=3)
    with pytest.raises(ValueError, match=r"log2\(output_factor\) = 0 entries"):
        tiny(output_factor=1, head_channels=[4])


def test_old_configs_without_output_factor_load_as_the_paper_layout():
    config = dict(tiny().config)
    del config["output_factor"]
    assert UNet.from_config(config).output_factor == 4


def test_local_mean_divide_removes_slow_intensity_and_keeps_lattice():
    """A lattice on a slowly varying illumination: the layer returns the lattice contrast on a flat level 1."""
    from scipy.ndimage import gaussian_filter

    y, x = np.mgrid[0:96, 0:96].astype(np.float64)
    lattice = 1 + 0.1 * np.cos(2 * np.pi * x / 4) * np.cos(2 * np.pi * y / 4)  # period 4 px
    ramp = 0.5 + x / 96  # illumination 0.5 -> 1.5 across the field
    layer = LocalMeanDivide(3.0)
    out = layer(torch.from_numpy(ramp * lattice)[None, None].float())[0, 0].double().numpy()
    inner = out[12:-12, 12:-12]  # away from the replicated border
    assert abs(inner.mean() - 1) < 0.01
    assert np.abs(inner - lattice[12:-12, 12:-12]).max() < 0.03  # the ramp is gone, the lattice is not
    # scale invariance, and the local mean equals scipy's Gaussian (same truncation at 3 sigma, nearest border)
    image = torch.rand(1, 1, 40, 40) + 0.5
    assert torch.allclose(layer(3.7 * image), layer(image), atol=1e-5)
    ref = gaussian_filter(image[0, 0].double().numpy(), 3.0, mode="nearest", truncate=3.0)
    np.testing.assert_allclose(layer.local_mean(image)[0, 0].numpy(), ref, rtol=1e-5)
    with pytest.raises(ValueError, match="sigma must be a finite number of pixels > 0"):
        LocalMeanDivide(0)


def test_flatten_sigma_adds_a_layer_without_weights_and_round_trips():
    plain, flat = tiny(), tiny(flatten_sigma=2.5)
    assert "flatten_sigma" not in plain.config  # cards of models without the layer are unchanged
    assert flat.config["flatten_sigma"] == 2.5
    assert flat.state_dict().keys() == plain.state_dict().keys()
    flat.load_state_dict(plain.state_dict())
    x = torch.rand(1, 1, 16, 16) + 0.5
    plain.eval(), flat.eval()
    assert torch.allclose(flat(3 * x), flat(x), atol=1e-5)  # what reaches the encoder is x / local mean
    assert torch.allclose(flat(x), plain(flat.flatten(x)), atol=1e-6)
    again = UNet.from_config(json.loads(json.dumps(flat.config)))
    assert again.config == flat.config and again.flatten is not None
