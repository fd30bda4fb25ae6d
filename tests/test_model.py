"""The network: the paper's shapes, the derived size arithmetic, one contract every configuration passes."""

from __future__ import annotations

import pytest
import torch

from napari_unet.model import UNet, UNetConfig, center_crop


def test_paper_defaults():
    model = UNet()
    assert model.output_shape((572, 572)) == (388, 388)
    assert model.count_conv_layers() == 23
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(31.03e6, rel=1e-3)
    assert model.halo == 92
    assert model.step == 16


def test_valid_sizes_follow_16k_plus_124_for_the_paper_net():
    model = UNet()
    valid = [n for n in range(100, 700) if model._output_size(n) is not None]
    assert valid == list(range(188, 700, 16))  # 16k + 124; below 188 the bottom map vanishes
    assert all(n - model.output_shape((n, n))[0] == 184 for n in valid)


@pytest.mark.parametrize(
    ("depth", "size", "expected"),
    [(1, 64, 60), (2, 64, 48), (3, 92, 52), (4, 188, 100), (5, 572, 388), (6, 572, 196)],
)
def test_output_shape_for_several_depths_matches_a_forward_pass(depth, size, expected):
    model = UNet(depth=depth, base_channels=2)
    assert model.output_shape((size, size)) == (expected, expected)
    with torch.no_grad():
        assert model(torch.zeros(1, 1, size, size)).shape[-2:] == (expected, expected)
    assert (size - expected) // 2 == model.halo


def test_invalid_tile_names_the_nearest_valid_sizes():
    with pytest.raises(
        ValueError, match=r"tile 500x500 is not valid for a depth-5.*nearest valid input sizes: 492, 508"
    ):
        UNet().output_shape((500, 500))
    with pytest.raises(ValueError, match="nearest valid"):
        UNet(depth=3, base_channels=2)(torch.zeros(1, 1, 91, 92))


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expected input \(N, 3, H, W\)"):
        UNet(in_channels=3, depth=2, base_channels=2)(torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize(
    "config",
    [
        UNetConfig(depth=3, base_channels=4),
        UNetConfig(depth=2, base_channels=4, in_channels=3, num_classes=3),
        UNetConfig(depth=3, base_channels=4, padding="same"),
        UNetConfig(depth=3, base_channels=4, batch_norm=True),
        UNetConfig(depth=4, base_channels=2, convs_per_level=3, dropout=0.0),
    ],
    ids=["valid", "multichannel", "same", "batchnorm", "three-convs"],
)
def test_every_configuration_runs_forward_and_backward(config):
    model = UNet(config)
    n = model.valid_input_size(3 * model.receptive_radius)
    x = torch.randn(2, config.in_channels, n, n, requires_grad=True)
    logits = model(x)
    assert logits.shape == (2, config.num_classes, *model.output_shape((n, n)))
    logits.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert UNet(UNetConfig.from_dict(model.config.to_dict())).config == config


def test_same_padding_keeps_the_size_and_needs_multiples_of_the_step():
    model = UNet(depth=3, base_channels=2, padding="same")
    assert model.output_shape((64, 96)) == (64, 96)
    assert model.halo == 0 and model.receptive_radius == 20
    with pytest.raises(ValueError, match="nearest valid input sizes: 60, 64"):
        model.output_shape((62, 64))


def test_he_initialisation_has_the_paper_spread():
    model = UNet(depth=2, base_channels=64)
    conv = model.decoder.blocks[0][2]  # 3x3 conv on 64 channels: N = 3 * 3 * 64
    assert conv.weight.std().item() == pytest.approx((2 / 576) ** 0.5, rel=0.05)


def test_flops_of_the_paper_net():
    # 3x3 convs dominate: sum over layers of 2 * out_pixels * 9 * c_in * c_out; checked against a hand count of the
    # first layer alone.
    model = UNet()
    first = 2 * 570 * 570 * 9 * 1 * 64
    assert model.flops((572, 572)) > first
    assert model.flops((572, 572)) == pytest.approx(300.86e9, rel=1e-3)
    assert all(p.device.type == "cpu" for p in model.parameters())


def test_config_rejects_nonsense():
    with pytest.raises(ValueError, match="padding"):
        UNetConfig(padding="reflect")
    with pytest.raises(ValueError, match="unknown UNetConfig keys"):
        UNetConfig.from_dict({"depht": 3})
    with pytest.raises(ValueError, match="num_classes"):
        UNetConfig(num_classes=1)


def test_center_crop():
    x = torch.arange(36.0).reshape(1, 1, 6, 6)
    assert center_crop(x, (2, 2)).flatten().tolist() == [14.0, 15.0, 20.0, 21.0]
    with pytest.raises(ValueError, match="even"):
        center_crop(x, (3, 3))
