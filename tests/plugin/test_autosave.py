"""Autosaved annotations keep the image's calibration: restored, or opened on their own, they lie over it."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unet.io import write_tiff
from napari_unet.metadata import PixelSize, StackSpacing, read_pixel_size, read_spacing
from napari_unet.plugin import _autosave, _start_from
from napari_unet.plugin._finetune import FineTuneWidget

pytestmark = pytest.mark.viewer


def test_annotations_are_saved_with_the_pixel_size_given_else_the_image_file_s(tmp_path):
    """`save_annotations` writes the pixel size it is given (the image layer's), else the image file's, and the
    file's Z step in that unit; annotations of an image without a file keep the one given."""
    labels = np.zeros((3, 16, 16), np.uint16)
    labels[:, 4:9, 4:9] = 1
    image = tmp_path / "data" / "stack.tif"
    image.parent.mkdir()
    size, spacing = PixelSize(0.5, 0.5, "um"), StackSpacing(z=2.0)
    write_tiff(image, np.ones((3, 16, 16), np.uint16), "ZYX", pixel_size=size, spacing=spacing)
    root = tmp_path / "autosave"

    saved = _autosave.save_annotations(labels, root, image, "stack")
    assert read_pixel_size(saved) == size and read_spacing(saved, size) == spacing
    nm = PixelSize(250.0, 250.0, "nm")
    saved = _autosave.save_annotations(labels, root, image, "stack", pixel_size=nm)
    assert read_pixel_size(saved) == nm and read_spacing(saved, nm) == StackSpacing(z=2000.0)
    np.testing.assert_array_equal(_autosave.load_annotations(saved), labels)
    unsaved = _autosave.save_annotations(labels, root, None, "new image", pixel_size=size)
    assert unsaved.parent == root / "annotations"
    assert read_pixel_size(unsaved) == size and read_spacing(unsaved, size) == StackSpacing()
    plain = tmp_path / "data" / "plain.tif"
    write_tiff(plain, np.ones((16, 16), np.uint16), "YX")
    assert read_pixel_size(_autosave.save_annotations(labels[0], root, plain, "plain")) is None


def test_restored_and_reopened_annotations_lie_over_the_calibrated_image(make_napari_viewer_proxy, tmp_path):
    """Annotations of a calibrated stack, autosaved by the Fine-tune dock, come back at the image's scale: restored
    over the image, and opened alone (their file, through the plugin's reader)."""
    labels = np.zeros((3, 16, 16), np.int32)
    labels[1, 4:9, 4:9] = 7
    path = tmp_path / "data" / "stack.tif"
    path.parent.mkdir()
    image = np.arange(3 * 16 * 16, dtype=np.uint16).reshape(3, 16, 16)
    write_tiff(path, image, "ZYX", pixel_size=PixelSize(0.5, 0.5), spacing=StackSpacing(z=2.0))
    viewer = make_napari_viewer_proxy()
    (image_layer,) = viewer.open(path, plugin="napari-unet-2015")
    assert tuple(image_layer.scale) == (2.0, 0.5, 0.5)
    widget = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    widget.autosave.save_annotations(labels, image_layer)
    saved = widget.autosave.annotations_path
    assert saved == path.with_name("stack.tif.unet-labels.tif")

    viewer.layers.clear()
    (alone,) = viewer.open(saved, plugin="napari-unet-2015")
    assert alone.name == "stack annotations" and tuple(alone.scale) == (2.0, 0.5, 0.5)
    assert tuple(str(u) for u in alone.units) == ("micrometer",) * 3
    np.testing.assert_array_equal(alone.data, labels)

    viewer.layers.clear()
    (reopened,) = viewer.open(path, plugin="napari-unet-2015")
    other = tmp_path / "data" / "other.tif"  # another field of view, opened after: the image picker follows it
    write_tiff(other, image[::-1].copy(), "ZYX", pixel_size=PixelSize(0.5, 0.5), spacing=StackSpacing(z=2.0))
    viewer.open(other, plugin="napari-unet-2015")
    restored = widget.autosave.restore()
    assert tuple(restored.scale) == (2.0, 0.5, 0.5)
    np.testing.assert_array_equal(restored.data, labels)
    # the annotations come back with their image: training them on the other one saved them as its annotations
    assert widget.labels_combo.value.name == restored.name == "stack annotations"  # (the proxy viewer wraps layers)
    assert widget.image_combo.value.name == reopened.name == "stack"


def test_files_opened_as_a_stack_never_autosave_over_the_first_files_annotations(make_napari_viewer_proxy, tmp_path):
    """Files opened as a stack (File > Open Files as Stack…) have the first file as their source: the stack's
    annotations were written beside it, over that image's own, and offered back for it (a stack for a 2-D image).
    They go to the autosave folder now, by the layer's name."""
    from napari_unet.plugin._autosave_row import AutosaveRow
    from napari_unet.plugin._reader import PLUGIN
    from napari_unet.synthetic import make_cells

    image, labels = make_cells((64, 64), seed=3)
    files = []
    for name in ("t0.tif", "t1.tif"):
        write_tiff(tmp_path / name, (image * 1000).astype(np.uint16), "YX")
        files.append(str(tmp_path / name))
    viewer = make_napari_viewer_proxy()
    dock = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    row = AutosaveRow(dock, viewer, tmp_path / "autosave", restored=lambda _layer, _image: None)
    (single,) = viewer.open(files[0], plugin=PLUGIN)
    row.save_annotations(labels.astype(np.int32), single)
    sidecar = tmp_path / "t0.tif.unet-labels.tif"
    assert row.annotations_path == sidecar
    (stack,) = viewer.open(files, stack=True, plugin=PLUGIN)
    row.save_annotations(np.zeros(stack.data.shape, np.int32), stack)
    assert row.annotations_path != sidecar and row.annotations_path.is_relative_to(tmp_path / "autosave")
    np.testing.assert_array_equal(_autosave.load_annotations(sidecar), labels)


def test_a_time_series_opened_by_the_reader_autosaves_its_annotations_as_one(make_napari_viewer_proxy, tmp_path):
    import tifffile

    from napari_unet.io import read_image
    from napari_unet.plugin._reader import PLUGIN

    path = tmp_path / "series.tif"
    tifffile.imwrite(path, np.zeros((3, 32, 32), np.uint16), imagej=True, metadata={"axes": "TYX", "finterval": 2.0})
    viewer = make_napari_viewer_proxy()
    (layer,) = viewer.open(path, plugin=PLUGIN)
    dock = FineTuneWidget(viewer, autosave_root=tmp_path / "autosave", start_from=_start_from.START_NEW)
    labels = np.zeros((3, 32, 32), np.int32)
    labels[1, 4:10, 4:10] = 1
    dock.autosave.save_annotations(labels, layer)
    assert read_image(dock.autosave.annotations_path)[1] == "TYX"  # not ZYX
