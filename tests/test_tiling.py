"""Overlap-tile inference: exact stitching, tiling independence, mirrored borders, lazy inputs."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import tifffile
import torch
import zarr
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle
from napari_unet.tiling import (
    TileGrid,
    dihedral_transforms,
    iter_predict_tiles,
    mirror_indices,
    predict_tiled,
    predict_tta,
    predict_whole,
    read_window,
    tile_grid,
    transform,
    untransform,
)


def small_net(**kw) -> UNet:
    torch.manual_seed(0)
    return UNet(depth=3, base_channels=4, **kw)


def whole_image_reference(model: UNet, image: np.ndarray) -> np.ndarray:
    """One forward pass over the mirror-padded image, written independently of tiling.py."""
    image = image[None] if image.ndim == 2 else image
    h, w = image.shape[-2:]
    halo = model.halo
    size = [model.valid_input_size(n + 2 * halo) for n in (h, w)]
    # np.pad reflects repeatedly when the pad is wider than the image.
    padded = np.pad(image, ((0, 0), (halo, size[0] - h - halo), (halo, size[1] - w - halo)), mode="reflect")
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(np.ascontiguousarray(padded[None], dtype=np.float32)))
    return torch.softmax(logits, 1)[0].numpy()[:, :h, :w]


def test_mirror_indices_reflect_without_repeating_the_edge():
    assert mirror_indices(-3, 10, 5).tolist() == [3, 2, 1, 0, 1, 2, 3, 4, 3, 2]
    assert mirror_indices(-2, 4, 1).tolist() == [0, 0, 0, 0]
    # Much larger than the axis: keeps reflecting (np.pad reflect does the same).
    np.testing.assert_array_equal(np.arange(3)[mirror_indices(-7, 17, 3)], np.pad(np.arange(3), 7, mode="reflect")[:17])


def test_copying_an_image_tile_by_tile_gives_it_back():
    image = np.random.default_rng(0).random((2, 37, 53)).astype(np.float32)
    out = np.full_like(image, np.nan)
    grid = TileGrid(shape=(37, 53), stride=(8, 16), window=(28, 36), lead=10, offset=10)
    for tile in grid:
        window = read_window(image, tile.window_origin, grid.window)
        ry, rx = tile.region
        out[:, ry, rx] = window[:, 10 : 10 + ry.stop - ry.start, 10 : 10 + rx.stop - rx.start]
    np.testing.assert_array_equal(out, image)
    assert len(grid) == 5 * 4


def test_tiles_cover_the_output_exactly_once():
    grid = tile_grid(UNet(), (1000, 700), 300)
    count = np.zeros((1000, 700), dtype=int)
    for tile in grid:
        count[tile.region] += 1
    assert (count == 1).all()
    assert all(s % 16 == 0 for s in grid.stride)


def test_whole_image_reference_matches_tiling_module_reference():
    model, image = small_net(), np.random.default_rng(1).random((70, 90)).astype(np.float32)
    np.testing.assert_allclose(predict_whole(model, image), whole_image_reference(model, image), atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(
    h=st.integers(1, 150),
    w=st.integers(1, 150),
    tile=st.integers(12, 120),
    other=st.integers(12, 120),
    seed=st.integers(0, 1000),
)
def test_tiled_equals_whole_image_and_is_independent_of_tile_size(h, w, tile, other, seed):
    model = small_net()
    image = np.random.default_rng(seed).normal(size=(h, w)).astype(np.float32)
    tiled = predict_tiled(model, image, tile_size=tile, device="cpu")
    assert tiled.shape == (2, h, w)
    np.testing.assert_allclose(tiled, predict_whole(model, image), atol=1e-5, rtol=0)
    np.testing.assert_allclose(tiled, predict_tiled(model, image, tile_size=other, device="cpu"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


def test_paper_depth_tiled_equals_whole_image():
    torch.manual_seed(0)
    model = UNet(depth=5, base_channels=2)
    image = np.random.default_rng(2).normal(size=(150, 230)).astype(np.float32)
    np.testing.assert_allclose(
        predict_tiled(model, image, tile_size=48), whole_image_reference(model, image), atol=1e-5, rtol=0
    )


def test_image_smaller_than_a_tile_and_smaller_than_the_halo():
    model = small_net()
    for shape in [(1, 1), (3, 5), (17, 9)]:
        image = np.random.default_rng(3).random(shape).astype(np.float32)
        probs = predict_tiled(model, image, tile_size=64)
        assert probs.shape == (2, *shape)
        np.testing.assert_allclose(probs, whole_image_reference(model, image), atol=1e-5)


def test_multichannel_input():
    model = small_net(in_channels=3, num_classes=3)
    image = np.random.default_rng(4).random((3, 60, 75)).astype(np.float32)
    probs = predict_tiled(model, image, tile_size=24)
    assert probs.shape == (3, 60, 75)
    np.testing.assert_allclose(probs, predict_whole(model, image), atol=1e-5)
    with pytest.raises(ValueError, match="expects 3 channel"):
        predict_tiled(model, image[:2], tile_size=24)
    with pytest.raises(ValueError, match=r"expected an image \(H, W\) or \(C, H, W\)"):
        predict_tiled(model, image[None], tile_size=24)


def test_same_padding_tiles_differ_only_slightly_from_the_whole_image():
    """'same' convolutions zero-pad every tile; a receptive-radius margin keeps the difference small, not zero."""
    model = small_net(padding="same")
    image = np.random.default_rng(5).normal(size=(120, 120)).astype(np.float32)
    whole = predict_whole(model, image)
    tiled = predict_tiled(model, image, tile_size=32)
    difference = np.abs(tiled - whole).max()
    assert 0 < difference < 1e-2
    np.testing.assert_allclose(tiled, predict_tiled(model, image, tile_size=32), atol=0)


def test_lazy_inputs_and_zarr_output(tmp_path):
    model = small_net()
    image = np.random.default_rng(6).random((90, 110)).astype(np.float32)
    expected = predict_tiled(model, image, tile_size=32)

    tifffile.imwrite(tmp_path / "image.tif", image)
    mapped = tifffile.memmap(tmp_path / "image.tif")
    np.testing.assert_allclose(predict_tiled(model, mapped, tile_size=32), expected, atol=1e-6)

    lazy = da.from_array(image, chunks=(40, 40))
    out = zarr.open_array(tmp_path / "probs.zarr", mode="w", shape=(2, 90, 110), chunks=(2, 32, 32), dtype="f4")
    predict_tiled(model, lazy, tile_size=32, out=out)
    np.testing.assert_allclose(out[:], expected, atol=1e-6)
    with pytest.raises(ValueError, match="out must have shape"):
        predict_tiled(model, image, tile_size=32, out=np.zeros((2, 5, 5), np.float32))


def test_tile_iterator_streams_and_stops_between_tiles():
    """The first tile comes after one window read and one forward pass, not after all 16; closing the
    generator stops it there."""
    model = small_net()
    image = np.random.default_rng(7).random((100, 100)).astype(np.float32)
    grid = tile_grid(model, image.shape, 32)
    forwards, windows = [], []
    model.register_forward_hook(lambda module, args, output: forwards.append(args[0].shape[0]))

    def count(window: np.ndarray) -> np.ndarray:
        windows.append(window.shape)
        return window

    stream = iter_predict_tiles(model.eval(), image[None], grid, torch.device("cpu"), preprocess=count)
    first = next(stream)
    assert first.tile.index == 0 and first.probs.shape == (2, *grid.stride) == (2, 28, 28)
    assert forwards == [1] and len(windows) == 1 and len(grid) == 16
    stream.close()  # stopping is not asking for more
    assert forwards == [1] and len(windows) == 1


def test_preprocess_is_applied_per_window():
    model = small_net()
    image = np.random.default_rng(8).random((64, 64)).astype(np.float32)
    np.testing.assert_allclose(
        predict_tiled(model, image * 10 + 3, tile_size=32, preprocess=lambda w: (w - 3) / 10),
        predict_tiled(model, image, tile_size=32),
        atol=1e-5,
    )


def test_automatic_tile_size_fits_the_budget():
    model = UNet()
    grid_small = tile_grid(model, (4096, 4096), 10_000)
    assert grid_small.stride == (4096, 4096)
    from napari_unet.tiling import auto_stride

    small = auto_stride(model, torch.device("cpu"), memory_budget=256 << 20)
    large = auto_stride(model, torch.device("cpu"), memory_budget=2 << 30)
    assert small % 16 == 0 and 16 <= small < large <= 1024


# ----------------------------------------------------------------------------------- test-time augmentation


def symmetric_bundle(seed: int = 0, symmetric: bool = False) -> ModelBundle:
    """A tiny model; `symmetric`: every kernel averaged over the 8 symmetries of the square, random biases,
    which makes the network exactly equivariant to flips and 90-degree rotations."""
    torch.manual_seed(seed)
    net = UNet(depth=3, base_channels=4, dropout=0.0)
    if symmetric:
        with torch.no_grad():
            for module in net.modules():
                if isinstance(module, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                    weight = module.weight.detach().numpy()
                    mean = sum(transform(weight, k, flip).copy() for k, flip in dihedral_transforms()) / 8
                    module.weight.copy_(torch.from_numpy(mean))
                    module.bias.normal_(0.0, 0.1)
    return ModelBundle(net)


def test_dihedral_transforms_invert():
    array = np.arange(2 * 3 * 5).reshape(2, 3, 5)
    seen = set()
    for k, flip in dihedral_transforms():
        moved = transform(array, k, flip)
        seen.add(moved.tobytes() + bytes(moved.shape))
        np.testing.assert_array_equal(untransform(moved, k, flip), array)
    assert len(seen) == 8


def test_tta_equals_plain_prediction_for_an_equivariant_model():
    model = symmetric_bundle(symmetric=True)
    image = np.random.default_rng(0).random((64, 48)).astype(np.float32) * 100
    plain = model.predict(image, device="cpu")
    np.testing.assert_allclose(model.predict(image, device="cpu", tta=True), plain, atol=1e-5)
    np.testing.assert_allclose(model.predict(image, device="cpu", tile_size=32, tta=True), plain, atol=1e-5)


def test_tta_differs_for_a_generic_model_and_is_itself_equivariant():
    model = symmetric_bundle(seed=1)
    image = np.random.default_rng(1).random((48, 48)).astype(np.float32)
    tta = model.predict(image, device="cpu", tta=True)
    assert tta.shape == (2, 48, 48)
    np.testing.assert_allclose(tta.sum(axis=0), 1.0, atol=1e-5)
    assert np.abs(tta - model.predict(image, device="cpu")).max() > 1e-3
    for k, flip in ((1, False), (0, True)):  # a quarter turn and a flip generate the group
        moved = np.ascontiguousarray(transform(image, k, flip))
        np.testing.assert_allclose(untransform(model.predict(moved, device="cpu", tta=True), k, flip), tta, atol=1e-5)


def test_predict_tta_on_a_net_uses_the_given_normalisation():
    model = symmetric_bundle(seed=3)
    image = np.random.default_rng(3).random((2 * 24, 40)).astype(np.float32) * 500
    preprocess = model.preprocessor(image, "YX")
    np.testing.assert_allclose(
        predict_tta(model.net, image, device="cpu", preprocess=preprocess),
        model.predict(image, device="cpu", tta=True),
        atol=1e-6,
    )


def test_non_finite_output_is_an_error_not_background():
    net = small_net().eval()
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = float("nan")
    image = np.random.default_rng(0).random((1, 40, 40), dtype=np.float32)
    with pytest.raises(ValueError, match=r"not a number \(NaN\) near pixel \(y=0, x=0\)"):
        predict_tiled(net, image, tile_size=32)


def test_an_image_of_extreme_values_is_normalised_without_overflow():
    net = small_net().eval()
    rng = np.random.default_rng(0)
    plain = rng.random((40, 40), dtype=np.float32)
    bundle = ModelBundle(net)
    huge = (plain * 2 - 1) * np.float32(3e38)  # spans more than float32 holds: hi - lo overflows
    expected = bundle.predict(plain, diameter=None, tile_size=32)
    np.testing.assert_allclose(bundle.predict(huge, diameter=None, tile_size=32), expected, atol=1e-4)


def test_an_empty_image_is_refused_with_its_shape():
    net = small_net()
    for predict in (predict_tiled, predict_tta):
        with pytest.raises(ValueError, match=r"the image is empty: shape \(0, 10\)"):
            predict(net, np.zeros((0, 10), np.float32), 32, device="cpu")


def test_tta_takes_a_zarr_array_with_channels():
    """TTA flips the plane, which zarr cannot: it is read whole first (as the 8 orientations need it)."""
    net = small_net(in_channels=2)
    image = np.random.default_rng(5).random((2, 40, 36)).astype(np.float32)
    store = zarr.zeros(shape=image.shape, chunks=(1, 20, 20), dtype="float32")
    store[...] = image
    np.testing.assert_array_equal(predict_tta(net, store, 32, device="cpu"), predict_tta(net, image, 32, device="cpu"))


def test_windows_of_values_float32_rounds_reach_the_preprocess_in_float64():
    """int64 counts offset by 2**31 (float32 steps of 256) keep their contrast through the tiles."""
    bundle = ModelBundle(small_net())
    counts = np.random.default_rng(6).integers(0, 4000, (40, 44))
    expected = bundle.predict(counts.astype(np.uint16), diameter=None, tile_size=32, device="cpu")
    for dtype in (np.int64, np.float64):
        offset = (counts + 2**31).astype(dtype)
        got = bundle.predict(offset, diameter=None, tile_size=32, device="cpu")
        np.testing.assert_allclose(got, expected, atol=1e-5)
    window = read_window((counts + 2**31)[None], (-3, -3), (8, 8), np.float64)
    assert window.dtype == np.float64 and window[0, 3, 3] == counts[0, 0] + 2**31
