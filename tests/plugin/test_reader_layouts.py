"""napari's reader on files that do not say their axes, compressed files, and File > Open Files as Stack: lazily;
autosaved annotations in memory, to be painted on."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.plugin._reader import get_image_reader, read_images, stack_layers

pytestmark = pytest.mark.viewer


def test_a_5d_file_without_axes_opens_as_t_z_c_y_x_and_says_so(tmp_path, monkeypatch):
    """A plain tifffile save of (2, 2, 5, 16, 16) was refused with "pass axes explicitly", which napari gives no
    way to do (a 4-D one opens as T, Z, Y, X)."""
    import napari.utils.notifications as notifications

    shown = []
    monkeypatch.setattr(notifications, "show_info", shown.append)
    data = np.arange(2 * 2 * 5 * 16 * 16, dtype=np.uint16).reshape(2, 2, 5, 16, 16)
    tifffile.imwrite(tmp_path / "tzc.tif", data)
    ((image, kwargs, kind),) = get_image_reader(str(tmp_path / "tzc.tif"))(str(tmp_path / "tzc.tif"))
    assert kind == "image" and kwargs["channel_axis"] == 2 and len(kwargs["name"]) == 5
    assert kwargs["metadata"][0]["napari_unet"]["axes"] == "TZYX"
    np.testing.assert_array_equal(np.asarray(image), data)
    assert shown == [
        "tzc.tif: its axes are not in the file; opened as T, Z, C, Y, X (time, depth, channels, height, width). "
        "If that is not what its axes hold, save the file with ImageJ or OME axes (e.g. TCZYX)"
    ]


def test_compressed_files_open_lazily_and_an_h_w_1_file_as_one_plane(tmp_path):
    """A compressed TIFF was decoded whole on napari's main thread; an (H, W, 1) mask opened as H planes."""
    import dask.array as da

    data = np.arange(3 * 20 * 30, dtype=np.uint16).reshape(3, 20, 30)
    tifffile.imwrite(tmp_path / "z.tif", data, compression="zlib", imagej=True, metadata={"axes": "ZYX"})
    ((image, kwargs, _),) = read_images(str(tmp_path / "z.tif"))
    assert isinstance(image, da.Array) and kwargs["metadata"]["napari_unet"]["axes"] == "ZYX"
    np.testing.assert_array_equal(np.asarray(image), data)

    tifffile.imwrite(tmp_path / "mask.tif", (data[0] > 300).astype(np.uint8)[..., None])
    ((image, kwargs, _),) = read_images(str(tmp_path / "mask.tif"))
    assert image.shape == (20, 30) and kwargs["metadata"]["napari_unet"]["axes"] == "YX"


class CountedReads:
    """An array whose reads are counted: `np.asarray` (and `copy`) read it all, a slice reads its part."""

    def __init__(self, values: np.ndarray, reads: list[str], name: str):
        self.values, self.reads, self.name = values, reads, name
        self.shape, self.dtype, self.ndim = values.shape, values.dtype, values.ndim

    def __array__(self, dtype=None, copy=None):
        self.reads.append(self.name)
        return self.values if dtype is None else self.values.astype(dtype)

    def copy(self):
        self.reads.append(self.name)
        return self.values.copy()

    def __getitem__(self, index):
        self.reads.append(self.name)
        return self.values[index]


def test_open_files_as_stack_reads_a_plane_only_when_it_is_used(tmp_path):
    """Open Files as Stack read every file into memory (np.stack); napari's own reader stacks lazily."""
    import dask.array as da

    rng = np.random.default_rng(0)
    planes = [rng.integers(0, 60_000, (20, 30), dtype=np.uint16) for _ in range(3)]
    reads: list[str] = []
    layers = [
        (CountedReads(p, reads, f"p{i}.tif"), {"name": f"p{i}", "metadata": {}}, "image") for i, p in enumerate(planes)
    ]
    data, _, kind = stack_layers(layers, [f"p{i}.tif" for i in range(3)])
    assert isinstance(data, da.Array) and data.shape == (3, 20, 30) and kind == "image"
    assert reads == [], "nothing is read when the stack is opened"
    np.testing.assert_array_equal(np.asarray(data[1, 5:9]), planes[1][5:9])
    assert set(reads) == {"p1.tif"}

    paths = []  # real files: memory-mapped and compressed ones stack alike, to the values of an eager stack
    for i, plane in enumerate(planes):
        paths.append(str(tmp_path / f"plane{i}.tif"))
        tifffile.imwrite(paths[-1], plane, compression="zlib" if i == 1 else None)
    ((stacked, kwargs, _),) = read_images(paths)
    assert isinstance(stacked, da.Array) and kwargs["metadata"]["napari_unet"]["axes"] == "ZYX"
    np.testing.assert_array_equal(np.asarray(stacked), np.stack(planes))


def test_opened_annotation_files_can_be_painted_on(make_napari_viewer_proxy, tmp_path):
    """An opened `*.unet-labels.tif` was a read-only memory map of its file: painting on it raised "assignment
    destination is read-only". The file itself is left as it was."""
    from napari_unet.io import write_tiff
    from napari_unet.plugin._autosave import load_annotations, sidecar_path
    from napari_unet.plugin._reader import PLUGIN

    viewer = make_napari_viewer_proxy()
    for name, shape, axes, where in (
        ("cells.tif", (16, 16), "YX", (8, 8)),
        ("stack.tif", (3, 16, 16), "ZYX", (1, 8, 8)),
    ):
        path = sidecar_path(tmp_path / name)
        write_tiff(path, np.zeros(shape, np.uint16), axes)
        (layer,) = viewer.open(path, plugin=PLUGIN)
        layer.selected_label = 5
        layer.paint(where, 5)
        assert layer.data[where] == 5 and load_annotations(path).max() == 0
