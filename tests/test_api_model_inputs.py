"""What the Python API takes besides numpy arrays: lists, tuples and torch tensors are converted where they enter
(`tiling.as_array`), and lazy arrays (dask, zarr, memory-mapped) stay lazy, zarr ones with channels included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.channels import ChannelChoice
from napari_unet.model import UNet
from napari_unet.modelfile import ModelBundle
from napari_unet.postprocess import PostprocessConfig
from napari_unet.synthetic import make_cells
from napari_unet.tiling import predict_tiled


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_cells((64, 64), seed=2)[0].astype(np.float32)


def small_bundle(in_channels: int = 1, channels: ChannelChoice | None = None, diameter=None) -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(
        UNet(depth=2, base_channels=4, in_channels=in_channels),
        postprocess=PostprocessConfig(min_size=2),
        channels=channels or ChannelChoice(),
        object_diameter=diameter,
    )


def test_lists_and_torch_tensors_give_what_the_same_numpy_array_gives(image):
    """They crashed deep inside: 'list' object has no attribute 'ndim', or "Cannot interpret 'torch.float32' as
    a data type"."""
    bundle = small_bundle()
    labels, probs, raw = bundle.segment(image), bundle.predict(image), predict_tiled(bundle.net, image)
    for given in (image.tolist(), tuple(map(tuple, image.tolist())), torch.from_numpy(image)):
        np.testing.assert_array_equal(bundle.segment(given), labels)
        np.testing.assert_allclose(bundle.predict(given), probs, atol=1e-6)
        np.testing.assert_allclose(predict_tiled(bundle.net, given), raw, atol=1e-6)
    tracked = torch.from_numpy(image).requires_grad_(True)  # a tensor that needs detaching first
    np.testing.assert_array_equal(bundle.segment(tracked), labels)


def test_a_list_is_estimated_like_the_array(image):
    bundle = small_bundle(diameter=12.0)
    assert bundle.estimate_diameter(image.tolist()) == bundle.estimate_diameter(image)


def test_lazy_arrays_stay_lazy(tmp_path):
    from napari_unet.tiling import as_array

    da = pytest.importorskip("dask.array")
    zarr = pytest.importorskip("zarr")
    stored = zarr.open(str(tmp_path / "a.zarr"), mode="w", shape=(8, 8), dtype="f4")
    memmap = np.memmap(tmp_path / "a.raw", dtype=np.float32, mode="w+", shape=(8, 8))
    for lazy in (stored, da.zeros((8, 8)), memmap):
        assert as_array(lazy) is lazy


@pytest.mark.parametrize("choice", [ChannelChoice(grey=True), ChannelChoice(channels=(0, 2))], ids=["grey", "pick"])
def test_a_zarr_array_with_channels_is_segmented_like_the_array_in_memory(choice, tmp_path):
    """A multi-channel zarr.Array (YXC or CYX) crashed: zarr arrays have no transpose or astype, nor fancy indexing."""
    zarr = pytest.importorskip("zarr")
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    bundle = small_bundle(in_channels=1 if choice.grey else 2, channels=choice)
    expected = bundle.segment(rgb)
    for name, array in (("yxc", rgb), ("cyx", np.moveaxis(rgb, -1, 0))):
        stored = zarr.open(str(tmp_path / f"{name}.zarr"), mode="w", shape=array.shape, dtype=array.dtype, chunks=20)
        stored[:] = array
        np.testing.assert_array_equal(bundle.segment(stored), expected)
