"""Per-object measurements: the table equals regionprops computed directly, and the CSV opens in pandas."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.measure import regionprops

from napari_unet.measure import measure, write_csv
from napari_unet.metadata import PixelSize
from napari_unet.synthetic import make_cells


@pytest.fixture(scope="module")
def cells():
    image, labels = make_cells((96, 112), seed=3)
    return (image * 1000).astype(np.uint16), labels.astype(np.int32)


def test_measurements_equal_regionprops(cells):
    image, labels = cells
    table = measure(labels, image)
    props = regionprops(labels, image)
    assert len(props) == len(table["label"]) > 3
    for i, region in enumerate(props):
        assert table["label"][i] == region.label
        assert table["area"][i] == region.area
        assert (table["centroid_y"][i], table["centroid_x"][i]) == pytest.approx(region.centroid)
        assert (table["bbox_y0"][i], table["bbox_x0"][i], table["bbox_y1"][i], table["bbox_x1"][i]) == region.bbox
        assert table["perimeter"][i] == pytest.approx(region.perimeter)
        assert table["eccentricity"][i] == pytest.approx(region.eccentricity)
        assert table["solidity"][i] == pytest.approx(region.solidity)
        assert table["intensity_mean"][i] == pytest.approx(region.intensity_mean)
        assert table["intensity_min"][i] == region.intensity_min
        assert table["intensity_max"][i] == region.intensity_max


def test_hand_computed_rectangle_and_physical_units():
    labels = np.zeros((10, 12), np.int32)
    labels[2:6, 3:11] = 5  # 4 x 8 rectangle
    image = np.zeros((2, 10, 12), np.float32)
    image[0, labels == 5] = 2.0
    image[1, 2:4, 3:11], image[1, 4:6, 3:11] = 1.0, 3.0
    table = measure(labels, image, PixelSize(0.5, 0.5, "µm"))
    assert table["label"].tolist() == [5]
    assert table["area"][0] == 32
    assert (table["centroid_y"][0], table["centroid_x"][0]) == (3.5, 6.5)
    assert table["intensity_mean_c0"][0] == 2.0 and table["intensity_mean_c1"][0] == 2.0
    assert (table["intensity_min_c1"][0], table["intensity_max_c1"][0]) == (1.0, 3.0)
    assert table["area_um2"][0] == 8.0
    assert (table["centroid_y_um"][0], table["centroid_x_um"][0]) == (1.75, 3.25)
    assert table["perimeter_um"][0] == pytest.approx(table["perimeter"][0] * 0.5)


def test_anisotropic_pixels_have_no_physical_perimeter():
    labels = np.zeros((8, 8), np.int32)
    labels[2:5, 2:6] = 1
    table = measure(labels, pixel_size=PixelSize(2.0, 0.5, "nm"))
    assert table["area_nm2"][0] == 12.0
    assert "perimeter_nm" not in table and "intensity_mean" not in table


def test_csv_opens_in_pandas_with_documented_columns(cells, tmp_path):
    pandas = pytest.importorskip("pandas")
    image, labels = cells
    first = measure(labels, image, PixelSize(0.65, 0.65, "um"))
    second = measure(labels[:48], image[:48])
    path = write_csv([({"image": "a.tif"}, first), ({"image": "b.tif"}, second)], tmp_path / "t.csv")
    frame = pandas.read_csv(path)
    assert list(frame.columns[:5]) == ["image", "label", "area", "centroid_y", "centroid_x"]
    assert {"perimeter", "eccentricity", "solidity", "intensity_mean", "area_um2", "perimeter_um"} <= set(frame.columns)
    assert len(frame) == len(first["label"]) + len(second["label"])
    a = frame[frame["image"] == "a.tif"]
    np.testing.assert_allclose(a["area_um2"], first["area_um2"])
    np.testing.assert_array_equal(a["label"], first["label"])
    assert frame[frame["image"] == "b.tif"]["area_um2"].isna().all()


def test_the_header_does_not_depend_on_the_order_of_the_files(cells, tmp_path):
    """A single image then a stack put `plane` last; a stack first put it second: always image, plane, label."""
    _, labels = cells
    table = measure(labels)
    single, plane = ({"image": "a.tif"}, table), ({"image": "z.tif", "plane": 0}, table)
    headers = [
        write_csv(order, tmp_path / f"{n}.csv").read_text().splitlines()[0]
        for n, order in enumerate([[single, plane], [plane, single]])
    ]
    assert headers[0] == headers[1] and headers[0].startswith("image,plane,label,area,")


def test_bad_input_is_explained():
    with pytest.raises(ValueError, match="2-D integer"):
        measure(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        measure(np.zeros((4, 4), np.int32), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="positive"):
        PixelSize(0.0, 1.0)


def test_ids_of_billions_are_measured_under_their_own_ids():
    labels = make_cells((64, 64), seed=3)[1].astype(np.uint64)
    big = np.where(labels > 0, labels + 3 * 10**9, 0).astype(np.uint32)
    plain, huge = measure(labels), measure(big)
    assert huge["label"].tolist() == (plain["label"] + 3 * 10**9).tolist()
    np.testing.assert_array_equal(huge["area"], plain["area"])


def test_not_annotated_pixels_are_background_and_huge_ids_are_measured(tmp_path):
    """As `napari-unet measure` reads labels: -1 (or the uint16 maximum) is background; ids of 3e9 next to -1
    are renumbered for scikit-image (it allocated by the largest id: a MemoryError)."""
    from napari_unet.roi import labels_to_rois

    _, labels = make_cells((96, 96), seed=3)
    plain = measure(labels)
    sparse = np.where(labels > 0, labels.astype(np.int64) + 3_000_000_000, -1)
    table = measure(sparse)
    np.testing.assert_array_equal(table["label"], plain["label"] + 3_000_000_000)
    np.testing.assert_array_equal(table["area"], plain["area"])
    assert len(labels_to_rois(sparse)) == len(plain["label"])
    marked = labels.astype(np.uint16)
    marked[labels == 0] = 65535
    np.testing.assert_array_equal(measure(marked)["area"], plain["area"])
    with pytest.raises(ValueError, match="found the value -3"):
        measure(np.full((4, 4), -3))


def volume_with_split_tops() -> np.ndarray:
    """A ZYX instance volume, objects 41 and 42; the top plane holds their tops, each in two separate pieces."""
    labels = np.zeros((3, 30, 30), np.uint16)
    labels[:2, 2:10, 2:10], labels[:2, 15:25, 15:25] = 41, 42
    labels[2, 2:5, 2:5], labels[2, 7:10, 7:10] = 41, 41
    labels[2, 15:20, 15:20], labels[2, 22:25, 24:28] = 42, 42
    return labels


def test_a_stack_is_instance_labels_or_a_mask_as_a_whole_not_plane_by_plane():
    """An object in two pieces in one plane of a 3-D volume (its top) made that plane a mask (ids replaced by
    1, 2); with every object of the plane split, the whole file was refused as an image."""
    from napari_unet.measure import instance_labels

    labels = volume_with_split_tops()
    objects, was_mask = instance_labels(labels, "the volume")
    assert not was_mask
    np.testing.assert_array_equal(objects, labels)
    one_split = labels.copy()
    one_split[2, 2:10, 2:10] = 0  # the top plane holds only 42, in two pieces
    assert instance_labels(one_split)[1] is False

    mask = np.where(labels > 0, 255, 0).astype(np.uint8)  # the same stack as a 0/255 mask: components, per plane
    objects, was_mask = instance_labels(mask)
    assert was_mask and [int(plane.max()) for plane in objects] == [2, 2, 4]
    image = np.random.default_rng(0).integers(0, 4, (3, 30, 30)).astype(np.uint16)
    with pytest.raises(ValueError, match="the noise .*3 planes.*is it an image"):
        instance_labels(image, "the noise")


@pytest.mark.parametrize("top", [(41, 42), (42,)])
def test_measure_and_rois_keep_the_ids_of_a_volume_with_split_tops(top, tmp_path, capsys):
    """The top plane with 41 and 42 each in two pieces was refused ("is it an image?"); with 42 alone, in two
    pieces, its ids became 1 and 2, with a "binary mask" note."""
    from napari_unet.cli import main
    from napari_unet.io import write_tiff

    labels = volume_with_split_tops()
    labels[2][~np.isin(labels[2], top)] = 0
    write_tiff(tmp_path / "vol_labels.tif", labels, "ZYX")
    assert main(["measure", str(tmp_path / "vol_labels.tif"), "--out", str(tmp_path / "t.csv")]) == 0
    assert "binary mask" not in capsys.readouterr().err
    rows = [line.split(",") for line in (tmp_path / "t.csv").read_text().splitlines()]
    header, rows = rows[0], rows[1:]
    labels_by_plane = [[int(row[header.index("label")]) for row in rows if row[1] == str(z)] for z in range(3)]
    assert labels_by_plane == [[41, 42], [41, 42], list(top)]
    pytest.importorskip("roifile")
    from napari_unet.roi import read_rois

    assert main(["rois", str(tmp_path / "vol_labels.tif"), "--out", str(tmp_path / "r.zip")]) == 0
    assert "binary mask" not in capsys.readouterr().err
    assert set(np.unique(read_rois(tmp_path / "r.zip", (3, 30, 30))[2])) == {0, *top}


def test_the_not_annotated_value_is_decided_on_the_whole_stack():
    """A plane whose only nonzero value is 65535 was measured as object 65535 (a 0/65535 mask, plane by plane),
    while the stack's other planes hold ids."""
    from napari_unet.measure import measure_planes

    stack = np.zeros((2, 20, 20), np.uint16)
    stack[0, 2:6, 2:6], stack[0, 10:20, 10:20], stack[1, 10:20, 10:20] = 3, 65535, 65535
    tables = measure_planes(stack, "ZYX")
    assert [table["label"].tolist() for _, table in tables] == [[3], []]
    mask = np.where(stack == 65535, 65535, 0).astype(np.uint16)  # only 65535 anywhere: a mask, measured
    assert [table["label"].tolist() for _, table in measure_planes(mask, "ZYX")] == [[65535], [65535]]


def test_tzyx_rows_name_their_time_point_and_slice(tmp_path):
    """`plane` of a TZYX file is t * Z + z: the rows also have `t` and `z`."""
    from napari_unet.measure import measure_planes

    labels = np.zeros((2, 3, 12, 12), np.int32)
    labels[0, 0, 1:3, 1:3], labels[1, 2, 5:10, 5:10] = 2, 3
    tables = measure_planes(labels, "TZYX")
    found = [(extra, int(table["label"][0])) for extra, table in tables if len(table["label"])]
    assert found == [({"plane": 0, "t": 0, "z": 0}, 2), ({"plane": 5, "t": 1, "z": 2}, 3)]
    assert [extra for extra, _ in measure_planes(labels[1], "ZYX")][2] == {"plane": 2, "z": 2}
    header = write_csv(tables, tmp_path / "tz.csv").read_text().splitlines()[0]
    assert header.startswith("plane,t,z,label,")


def three_squares(dtype=np.uint8) -> np.ndarray:
    """A Fiji-style 0/255 mask of three separate squares."""
    mask = np.zeros((40, 40), dtype)
    mask[2:8, 2:8] = mask[20:25, 20:25] = mask[30:35, 2:8] = 255
    return mask


def test_a_binary_mask_is_measured_as_its_connected_components_with_a_warning():
    """`measure` gave one row labelled 255 for a mask of three squares, while `napari-unet measure` and the dock
    measure its connected components (`instance_labels`); the API now reads it as they do, and says so."""
    from napari_unet.measure import MASK_NOTE, instance_labels, measure_planes

    mask = three_squares()
    expected = measure(instance_labels(mask)[0])
    assert expected["label"].tolist() == [1, 2, 3]
    for given in (mask, mask > 0):
        with pytest.warns(UserWarning, match="looks like a binary mask"):
            table = measure(given)
        assert table.keys() == expected.keys()
        for name in table:
            np.testing.assert_array_equal(table[name], expected[name])
    stack = np.stack([mask, np.zeros_like(mask), mask])
    with pytest.warns(UserWarning, match=MASK_NOTE.split("(")[0].strip()):
        tables = measure_planes(stack, "ZYX")
    assert [table["label"].tolist() for _, table in tables] == [[1, 2, 3], [], [1, 2, 3]]


def test_labels_with_many_ids_skip_the_mask_test_and_masks_still_take_it(cells, monkeypatch):
    """`measure_planes` ran the mask test (`is_mask`: +620 MB and 3x the time on a 12-plane 1024 x 1024 stack) on
    labels with many ids, which are never a mask (one nonzero value), as `napari-unet predict --measure` gives
    them; a mask (and one object alone, one nonzero value) still takes it, and a mask is still converted."""
    import napari_unet.measure as measure_module
    from napari_unet.measure import measure_planes
    from napari_unet.roi import stack_to_rois

    calls = []
    real_is_mask = measure_module.is_mask
    monkeypatch.setattr(measure_module, "is_mask", lambda *a, **k: calls.append(1) or real_is_mask(*a, **k))
    labels = cells[1]
    stack = np.stack([labels, labels[::-1], np.zeros_like(labels)])
    tables = measure_planes(stack, "ZYX")
    assert [table["label"].tolist() for _, table in tables[:2]] == [np.unique(labels)[1:].tolist()] * 2
    assert calls == []
    pytest.importorskip("roifile")
    assert len(stack_to_rois(stack.astype(np.uint16))) == 2 * (len(np.unique(labels)) - 1) and calls == []

    mask = np.stack([three_squares(np.uint16)] * 2)
    with pytest.warns(UserWarning, match="looks like a binary mask"):
        tables = measure_planes(mask, "ZYX")
    assert [table["label"].tolist() for _, table in tables] == [[1, 2, 3]] * 2 and calls == [1]
    one = int(labels.max())
    single = np.where(stack == one, one, 0)
    assert [table["label"].tolist() for _, table in measure_planes(single, "ZYX")] == [[one], [one], []]
    assert calls == [1, 1]


def test_pixel_size_may_be_two_numbers_in_the_default_unit(cells):
    """`measure(labels, pixel_size=(0.5, 0.5))` crashed: 'tuple' object has no attribute 'unit'."""
    _, labels = cells
    expected = measure(labels, pixel_size=PixelSize(0.5, 0.25, "um"))
    for given in ((0.5, 0.25), [0.5, 0.25], (np.float32(0.5), np.float64(0.25))):
        table = measure(labels, pixel_size=given)
        assert table.keys() == expected.keys()
        np.testing.assert_array_equal(table["area_um2"], expected["area_um2"])
    for bad in (0.5, (0.5,), (0.5, 0.5, 0.5), ("0.5", "0.5"), {"y": 0.5}):
        with pytest.raises(TypeError, match="PixelSize"):
            measure(labels, pixel_size=bad)
