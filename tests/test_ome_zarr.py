"""OME-Zarr labels out: read back by `read_input` with their axes and by `read_pixel_size` with their scale."""

from __future__ import annotations

import numpy as np

from napari_unet.metadata import PixelSize, read_pixel_size
from napari_unet.ome_zarr import read_zarr, write_ome_zarr
from napari_unet.pipeline import read_input


def test_stack_round_trip_with_and_without_pixel_size(tmp_path):
    labels = np.random.default_rng(0).integers(0, 9, (3, 40, 50)).astype(np.int32)
    path = write_ome_zarr(tmp_path / "movie_labels.ome.zarr", labels, "TYX", PixelSize(0.5, 0.25, "um"), chunk=16)
    back, axes = read_input(path)
    assert axes == "TYX" and back.dtype == np.int32
    np.testing.assert_array_equal(np.asarray(back), labels)
    assert read_pixel_size(path) == PixelSize(0.5, 0.25, "um")
    plain = write_ome_zarr(tmp_path / "plain.ome.zarr", labels[0], "YX")
    assert read_input(plain)[1] == "YX" and read_pixel_size(plain) is None
    write_ome_zarr(path, labels[:1], "TYX")  # an existing store is replaced
    assert read_input(path)[0].shape == (1, 40, 50)
    assert read_zarr(path, "ZYX")[1] == "ZYX"  # given axes win over the store's
