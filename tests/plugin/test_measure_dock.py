"""Measure dock: features on the Labels layer (hover read-out), the table, Save CSV, ImageJ ROIs out and in;
the reader's pixel size sets the layer scale and the measurements' units."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from napari_unet.measure import measure
from napari_unet.metadata import PixelSize, tiff_calibration
from napari_unet.plugin._measure import MeasureWidget
from napari_unet.plugin._reader import PLUGIN

pytestmark = pytest.mark.viewer


def test_measure_fills_features_table_and_csv(make_napari_viewer, cells, tmp_path):
    pandas = pytest.importorskip("pandas")
    image, labels = cells
    channels = np.stack([image, 1 - image]).astype(np.float32)
    calibration, metadata = tiff_calibration(PixelSize(0.25, 0.25, "um"), imagej=True)
    tifffile.imwrite(tmp_path / "two.tif", channels, imagej=True, metadata={"axes": "CYX", **metadata}, **calibration)
    viewer = make_napari_viewer()
    first, _second = viewer.open(tmp_path / "two.tif", plugin=PLUGIN)
    assert tuple(first.scale) == (0.25, 0.25)  # the file's pixel size sets the layer scale
    labels_layer = viewer.add_labels(labels.astype(np.int32), name="cells labels", scale=(0.25, 0.25))
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measure")
    widget.labels_combo.value = labels_layer
    widget.image_combo.value = first
    tables = widget.measure()
    expected = measure(labels, channels, PixelSize(0.25, 0.25, "um"))
    features = labels_layer.features
    np.testing.assert_array_equal(features["label"], expected["label"])
    np.testing.assert_allclose(features["area_um2"], expected["area_um2"])
    np.testing.assert_allclose(features["intensity_mean_c1"], expected["intensity_mean_c1"], rtol=1e-6)
    assert widget.table.rowCount() == len(expected["label"]) and len(tables) == 1
    header = [widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())]
    assert header[:3] == ["label", "area", "centroid_y"]

    y, x = np.argwhere(labels == expected["label"][0])[0]  # a pixel of the first object: the hover read-out
    status = labels_layer.get_status((y * 0.25, x * 0.25), world=True)
    read_out = status["coordinates"] if isinstance(status, dict) else str(status)
    assert f"label: {expected['label'][0]}, area: {int(expected['area'][0])}" in read_out and "area_um2" in read_out

    frame = pandas.read_csv(widget.save_csv(tmp_path / "m.csv"))
    assert list(frame.columns[:3]) == ["layer", "label", "area"] and len(frame) == len(expected["label"])


def test_rois_export_and_import_from_the_dock(make_napari_viewer, cells, tmp_path):
    pytest.importorskip("roifile")
    image, labels = cells
    viewer = make_napari_viewer()
    image_layer = viewer.add_image(image)
    labels_layer = viewer.add_labels(labels.astype(np.int32))
    widget = MeasureWidget(viewer)
    widget.labels_combo.value = labels_layer
    widget.image_combo.value = image_layer
    count = widget.export_rois(tmp_path / "RoiSet.zip")
    assert count == len(np.unique(labels)) - 1
    imported = widget.import_rois(tmp_path / "RoiSet.zip")
    assert imported in viewer.layers and imported.data.shape == labels.shape
    for value in np.unique(labels[labels > 0]):
        a, b = labels == value, imported.data == value
        assert (a & b).sum() / (a | b).sum() >= 0.95


def test_imported_rois_and_segmented_labels_lie_over_their_image_and_measure_in_its_units(
    make_napari_viewer_proxy, qtbot, cells, tmp_path, tiny_bundle
):
    """ROIs imported for a translated image came at the origin; the Segment dock's labels, measured alone, were
    in pixel units although their image was opened with its pixel size."""
    pytest.importorskip("roifile")
    from napari_unet.plugin._segment import SegmentWidget
    from napari_unet.plugin._state import session_for

    image, labels = cells
    calibration, metadata = tiff_calibration(PixelSize(0.5, 0.5, "um"), imagej=True)
    tifffile.imwrite(tmp_path / "cells.tif", image, imagej=True, metadata={"axes": "YX", **metadata}, **calibration)
    viewer = make_napari_viewer_proxy()
    (image_layer,) = viewer.open(tmp_path / "cells.tif", plugin=PLUGIN)
    image_layer.translate = (30.0, 40.0)
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measure")
    drawn = viewer.add_labels(labels.astype(np.int32), name="drawn", scale=(0.5, 0.5), translate=(30.0, 40.0))
    widget.labels_combo.value = drawn
    widget.export_rois(tmp_path / "RoiSet.zip")
    widget.image_combo.value = image_layer
    imported = widget.import_rois(tmp_path / "RoiSet.zip")
    assert tuple(imported.scale) == (0.5, 0.5) and tuple(imported.translate) == (30.0, 40.0)
    widget.labels_combo.value = imported
    widget.image_combo.value = None
    widget.measure()
    assert "physical units: um" in widget.status.text()

    segment = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(segment, name="Segment")
    session_for(viewer).set_model(tiny_bundle)
    segment.image_combo.value = image_layer
    with qtbot.waitSignal(segment.segmented, timeout=60_000):
        segment.run()
    widget.reset_choices()
    widget.labels_combo.value = segment.labels_layer
    widget.image_combo.value = None
    widget.measure()
    assert "physical units: um" in widget.status.text(), widget.status.text()
    assert "area_um2" in segment.labels_layer.features


def test_a_save_or_export_that_cannot_be_written_is_a_notification(
    make_napari_viewer_proxy, cells, tmp_path, monkeypatch
):
    """A folder chosen as the file (or a read-only place) raised IsADirectoryError out of the dock's slots."""
    pytest.importorskip("roifile")
    import napari_unet.plugin._measure as dock

    errors = []
    monkeypatch.setattr(dock, "show_error", errors.append)
    _, labels = cells
    viewer = make_napari_viewer_proxy()
    layer = viewer.add_labels(labels.astype(np.int32))
    widget = MeasureWidget(viewer)
    widget.labels_combo.value = layer
    widget.measure()
    (tmp_path / "taken.zip").mkdir()
    (tmp_path / "taken.csv").mkdir()
    monkeypatch.setattr(dock.QFileDialog, "getSaveFileName", lambda *a: (str(tmp_path / "taken.csv"), ""))
    widget._ask_csv()
    monkeypatch.setattr(dock.QFileDialog, "getSaveFileName", lambda *a: (str(tmp_path / "taken.zip"), ""))
    widget._ask_roi_export()
    assert [e.split(":")[0] for e in errors] == ["Cannot save the measurements", "Cannot export ROIs"], errors


def test_the_csv_holds_the_table_of_the_layer_measured_and_a_failed_measure_leaves_nothing_to_save(
    make_napari_viewer_proxy, cells, tmp_path, monkeypatch
):
    """Save CSV wrote the last table under the name of whatever Labels layer was chosen since, and after a Measure
    that failed (labels of another size) the status still counted the old objects and Save CSV stayed on."""
    pandas = pytest.importorskip("pandas")
    import napari_unet.plugin._measure as dock

    errors = []
    monkeypatch.setattr(dock, "show_error", errors.append)
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    image_layer = viewer.add_image(image, name="cells")
    measured = viewer.add_labels(labels.astype(np.int32), name="cells labels")
    drawn = viewer.add_labels(np.zeros_like(labels, dtype=np.int32), name="drawn")
    small = viewer.add_labels(np.ones((50, 60), np.int32), name="small")
    widget = MeasureWidget(viewer)
    widget.labels_combo.value = measured
    widget.image_combo.value = image_layer
    count = len(widget.measure()[0][1]["label"])

    widget.labels_combo.value = drawn  # chosen, not measured: the table is still the measured layer's
    frame = pandas.read_csv(widget.save_csv(tmp_path / "m.csv"))
    assert set(frame["layer"]) == {"cells labels"} and len(frame) == count

    widget.labels_combo.value = small
    assert widget.measure() is None and "(50, 60)" in errors[-1], errors
    assert not widget.save_button.isEnabled() and "Cannot measure" in widget.status.text(), widget.status.text()
    with pytest.raises(ValueError, match="nothing measured"):
        widget.save_csv(tmp_path / "stale.csv")


def test_labels_of_another_size_than_an_rgb_image_are_refused_with_both_sizes(
    make_napari_viewer_proxy, cells, monkeypatch
):
    """A stack of labels over a 2-D RGB picture was refused with made-up axes: 'the image (axes ZCYX, shape
    (3, H, W))'."""
    import napari_unet.plugin._measure as dock

    errors = []
    monkeypatch.setattr(dock, "show_error", errors.append)
    image, labels = cells
    viewer = make_napari_viewer_proxy()
    photo = viewer.add_image(np.stack([image] * 3, axis=-1), name="photo", rgb=True)
    stack = viewer.add_labels(np.stack([labels] * 3).astype(np.int32), name="stack")
    widget = MeasureWidget(viewer)
    widget.labels_combo.value = stack
    widget.image_combo.value = photo
    assert widget.measure() is None
    height, width = labels.shape
    assert f"{height} x {width}" in errors[-1] and "ZCYX" not in errors[-1], errors[-1]


def test_a_segmentation_is_measured_with_the_intensities_of_its_image_without_choosing(
    make_napari_viewer_proxy, qtbot, cells, tiny_bundle
):
    """The labels picker stayed on the first Labels layer when a segmentation was added, and the image picker on
    "(no intensities)": a first Measure had no intensity columns. Now a Labels layer added is the one to measure and
    the image it was made from is preselected."""
    from napari_unet.plugin._segment import SegmentWidget
    from napari_unet.plugin._state import session_for

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    viewer.add_image(np.zeros_like(image), name="other")  # of the same size: the name tells which image it is
    image_layer = viewer.add_image(image, name="cells")
    viewer.add_labels(labels.astype(np.int32), name="drawn")
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measure")
    assert widget.labels_combo.value.name == "drawn" and widget.image_combo.value is None  # two images: unknown
    segment = SegmentWidget(viewer, default_model=None)
    viewer.window.add_dock_widget(segment, name="Segment")
    session_for(viewer).set_model(tiny_bundle)
    segment.image_combo.value = image_layer
    with qtbot.waitSignal(segment.segmented, timeout=60_000):
        segment.run()
    assert widget.labels_combo.value == segment.labels_layer and widget.image_combo.value == image_layer
    widget.measure()
    assert "intensity_mean" in segment.labels_layer.features
    assert "intensities of 'cells'" in widget.status.text(), widget.status.text()

    segment.labels_layer.name = "renamed"  # the layer's metadata still names its image
    widget.labels_combo.value = viewer.layers["drawn"]
    assert widget.image_combo.value is None
    widget.labels_combo.value = viewer.layers["renamed"]
    assert widget.image_combo.value == image_layer


def test_the_users_choices_of_labels_and_image_are_kept(make_napari_viewer_proxy, cells):
    """Labels or an image the user chose (no image included) stay chosen when layers are added."""
    from napari_unet.plugin._layers import preview_metadata

    image, labels = cells
    viewer = make_napari_viewer_proxy()
    image_layer = viewer.add_image(image, name="cells")
    drawn = viewer.add_labels(labels.astype(np.int32), name="drawn")
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measure")
    assert widget.image_combo.value == image_layer  # the only image of the labels' size
    viewer.add_labels(np.zeros_like(labels, dtype=np.int32), name="painted")
    assert widget.labels_combo.value.name == "painted" and widget.image_combo.value == image_layer
    preview = preview_metadata(image_layer)  # the Augmentation preview's labels: shown, not measured
    viewer.add_labels(labels.astype(np.int32), name="augmented labels", metadata=preview)
    assert widget.labels_combo.value.name == "painted"
    widget.image_combo.value = None  # the user wants no intensities
    widget.labels_combo.value = drawn
    viewer.add_labels(labels.astype(np.int32), name="cells labels")
    assert widget.labels_combo.value == drawn and widget.image_combo.value is None
    widget.labels_combo.value = viewer.layers["cells labels"]
    assert widget.image_combo.value is None
    widget.measure()
    assert "no intensities" in widget.status.text() and "intensity_mean" not in viewer.layers["cells labels"].features
    viewer.add_image(np.zeros((40, 50), np.float32), name="small")
    assert widget.image_combo.value is None


def test_the_not_annotated_value_is_background(make_napari_viewer):
    """uint16 labels keep 65535 for "not annotated" (as training reads them): it is no object to measure, as for
    `napari-unet measure`; -1 of signed labels neither."""
    viewer = make_napari_viewer()
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measure")
    for dtype, reserved in ((np.uint16, 65535), (np.int32, -1)):
        labels = np.zeros((40, 40), dtype)
        labels[2:8, 2:8], labels[20:30, 20:30], labels[10:14, 30:36] = 1, reserved, 2
        widget.labels_combo.value = viewer.add_labels(labels, name=f"sparse {np.dtype(dtype).name}")
        ((_, table),) = widget.measure()
        assert list(table["label"]) == [1, 2]


@pytest.mark.parametrize("planes", [3, 2])
def test_the_channel_layers_of_a_z_stack_are_measured_plane_by_plane(make_napari_viewer_proxy, tmp_path, planes):
    """A ZCYX file opens as one layer per channel, (Z, Y, X) each: stacked, they were taken for ZCYX when they are
    CZYX, so 3 planes were refused ('does not match the labels') and 2 planes gave another plane's channel."""
    from napari_unet.io import write_tiff

    image = np.random.default_rng(0).integers(0, 1000, (planes, 2, 32, 32)).astype(np.uint16)
    image[:, 1] += 5000
    write_tiff(tmp_path / "zc.tif", image, "ZCYX")
    viewer = make_napari_viewer_proxy()
    layers = viewer.open(tmp_path / "zc.tif", plugin=PLUGIN)
    labels = np.zeros((planes, 32, 32), np.int32)
    labels[:, 4:12, 4:12] = 1
    labels_layer = viewer.add_labels(labels, name="zc labels")
    widget = MeasureWidget(viewer)
    widget.labels_combo.value = labels_layer
    widget.image_combo.value = layers[0]
    tables = widget.measure()
    assert tables is not None and len(tables) == planes, widget.status.text()
    for plane, (_, table) in enumerate(tables):
        expected = measure(labels[plane], image[plane], None)
        for column in ("intensity_mean_c0", "intensity_mean_c1"):
            assert table[column][0] == pytest.approx(expected[column][0]), (plane, column)


def test_a_binary_mask_is_measured_and_exported_as_its_connected_components(make_napari_viewer, tmp_path):
    """A 0/255 mask with two blobs was one object (its centroid between them), and Export ROIs kept only the
    larger blob, without a word; `napari-unet measure` and `rois` take its components, with a note."""
    viewer = make_napari_viewer()
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measure")
    mask = np.zeros((30, 40), np.uint8)
    mask[2:5, 2:5], mask[10:15, 10:15] = 255, 255
    widget.labels_combo.value = viewer.add_labels(mask, name="mask")
    ((_, table),) = widget.measure()
    assert table["label"].tolist() == [1, 2] and table["area"].tolist() == [9, 25]
    assert table["centroid_y"].tolist() == [3, 12] and "binary mask" in widget.status.text()
    pytest.importorskip("roifile")
    widget.status.setText("")
    assert widget.export_rois(tmp_path / "mask.zip") == 2 and "binary mask" in widget.status.text()
    back = widget.import_rois(tmp_path / "mask.zip").data
    assert int((back > 0).sum()) == 34


def test_a_plane_of_only_the_not_annotated_value_is_neither_measured_nor_exported(make_napari_viewer, tmp_path):
    """The dock's ROI export decided "not annotated" plane by plane: a plane whose only nonzero value is 65535
    gave an ROI '65535'."""
    roifile = pytest.importorskip("roifile")
    viewer = make_napari_viewer()
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Measure")
    stack = np.zeros((2, 20, 20), np.uint16)
    stack[0, 2:6, 2:6], stack[0, 10:20, 10:20], stack[1, 10:20, 10:20] = 3, 65535, 65535
    widget.labels_combo.value = viewer.add_labels(stack, name="sparse")
    assert [table["label"].tolist() for _, table in widget.measure()] == [[3], []]
    assert widget.export_rois(tmp_path / "sparse.zip") == 1
    assert [roi.name for roi in roifile.roiread(tmp_path / "sparse.zip")] == ["3"]
