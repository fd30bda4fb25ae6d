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
