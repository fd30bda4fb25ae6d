"""ImageJ ROI zips: labels -> ROIs -> labels gives the same objects (IoU >= 0.95 each)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("roifile")

from napari_unet.roi import labels_to_rois, read_rois, rois_to_labels, write_rois  # noqa: E402
from napari_unet.synthetic import make_cells  # noqa: E402


def ious(a: np.ndarray, b: np.ndarray) -> dict[int, float]:
    out = {}
    for value in np.unique(a[a > 0]):
        x, y = a == value, b == value
        out[int(value)] = np.logical_and(x, y).sum() / np.logical_or(x, y).sum()
    return out


def test_round_trip_through_a_zip_keeps_every_object(tmp_path):
    _, labels = make_cells((128, 128), seed=4)
    labels = labels.astype(np.int32)
    count = write_rois(tmp_path / "cells.zip", labels)
    assert count == len(np.unique(labels)) - 1 > 5
    back = read_rois(tmp_path / "cells.zip", labels.shape)
    scores = ious(labels, back)
    assert len(scores) == count and min(scores.values()) >= 0.95


def test_shapes_without_holes_come_back_exactly():
    labels = np.zeros((20, 24), np.int32)
    labels[2:9, 3:12] = 4  # rectangle
    labels[12:18, 5:6] = 9  # one pixel wide
    labels[11:19, 14:22] = 2
    labels[11:15, 14:18] = 0  # L-shape
    labels[0, 23] = 7  # single pixel in a corner
    back = rois_to_labels(labels_to_rois(labels), labels.shape)
    np.testing.assert_array_equal(back, labels)


def test_stacks_keep_their_planes(tmp_path):
    stack = np.zeros((3, 16, 16), np.int32)
    stack[0, 2:6, 2:6] = 1
    stack[2, 8:14, 4:12] = 1
    write_rois(tmp_path / "stack.zip", stack)
    np.testing.assert_array_equal(read_rois(tmp_path / "stack.zip", stack.shape), stack)


def test_holes_are_filled_and_only_the_largest_piece_is_kept():
    labels = np.zeros((20, 20), np.int32)
    labels[2:12, 2:12] = 1
    labels[5:8, 5:8] = 0
    labels[15:17, 15:17] = 1  # a second, smaller piece of object 1
    labels[15:18, 2:5] = 2  # another object: with object 1 alone, the labels would be a mask (one value, 2 regions)
    back = rois_to_labels(labels_to_rois(labels), labels.shape)
    assert back[6, 6] == 1 and back[15, 15] == 0 and (back[2:12, 2:12] == 1).all()
    assert (back == 2).sum() == 9


def test_a_winding_hole_and_pixels_touching_by_a_corner_keep_the_object():
    """The ROI held the outline of a comb-shaped hole (longer than the object's) instead of the object; a
    diagonal line came back as 1 pixel, two blocks meeting at a corner as one block."""
    labels = np.zeros((40, 60), np.int32)
    labels[2:38, 2:38] = 1
    for column in range(5, 35, 2):
        labels[5:35, column] = 0  # the teeth of a comb-shaped hole
    labels[5:7, 5:35] = 0
    for k in range(5):
        labels[2 + k, 42 + k] = 4  # a diagonal line
    labels[20:23, 42:45] = 7
    labels[23:26, 45:48] = 7  # blocks meeting at a corner
    back = rois_to_labels(labels_to_rois(labels), labels.shape)
    assert (back == 1).sum() == 36 * 36, "the comb's outer outline, its hole filled"
    np.testing.assert_array_equal(back == 4, labels == 4)
    np.testing.assert_array_equal(back == 7, labels == 7)


def test_an_roi_of_a_fiji_time_lapse_goes_to_its_frame():
    """Fiji's ROI Manager positions an ROI of a time-lapse by its hyperstack (c, z, t) = (1, 1, 3), not by its
    stack position: it landed on frame 1, as z came first."""
    import roifile

    roi = roifile.ImagejRoi.frompoints(np.array([[2, 2], [8, 2], [8, 8], [2, 8]], float), name="5")
    roi.roitype = roifile.ROI_TYPE.POLYGON
    roi.c_position, roi.z_position, roi.t_position = 1, 1, 3
    roi.version = 228
    back = rois_to_labels([roifile.ImagejRoi.frombytes(roi.tobytes())], (3, 12, 12))
    assert [int((plane == 5).sum()) for plane in back] == [0, 0, 36]
    roi.z_position = 2
    with pytest.raises(ValueError, match="z 2, t 3 of a hyperstack"):
        rois_to_labels([roi], (3, 12, 12))


def test_composite_rois_keep_their_holes_and_big_ids_and_planes_are_kept_apart():
    """A composite ROI (an object with a hole, from Fiji) was dropped without a word; ids above 2**31 (which
    `rois` writes) crashed with an OverflowError; ROIs of planes 2 and 3 were painted into a single image."""
    import roifile

    holed = roifile.ImagejRoi(roitype=roifile.ROI_TYPE.RECT, left=2, top=2, right=18, bottom=18, name="5")
    path = [0, 2, 2, 1, 18, 2, 1, 18, 18, 1, 2, 18, 4, 0, 8, 8, 1, 12, 8, 1, 12, 12, 1, 8, 12, 4]
    holed.multi_coordinates, holed.shape_roi_size, holed.version = np.array(path, np.float32), len(path), 228
    holed = roifile.ImagejRoi.frombytes(holed.tobytes())
    assert holed.composite
    back = rois_to_labels([holed], (20, 20))
    expected = np.zeros((20, 20), np.int32)
    expected[2:18, 2:18] = 5
    expected[8:12, 8:12] = 0
    np.testing.assert_array_equal(back, expected)

    big = np.zeros((12, 12), np.int64)
    big[2:5, 2:5], big[7:10, 7:10] = 3_000_000_000, 1
    np.testing.assert_array_equal(rois_to_labels(labels_to_rois(big), big.shape), big)

    stack = np.zeros((3, 12, 12), np.int32)
    stack[1, 2:6, 2:6] = 1
    with pytest.raises(ValueError, match="plane 2 but the image is a single plane"):
        rois_to_labels([roi for n, p in enumerate(stack) for roi in labels_to_rois(p, position=n)], (12, 12))


def test_unnamed_rois_get_new_ids_and_bad_files_are_explained(tmp_path):
    import roifile

    square = roifile.ImagejRoi.frompoints(np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]]), name="cell")
    labels = rois_to_labels([square], (8, 8))
    assert labels.max() == 1 and (labels[2:6, 2:6] == 1).all() and labels.sum() == 16
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="ImageJ ROIs"):
        read_rois(tmp_path / "bad.zip", (8, 8))
    with pytest.raises(ValueError, match="no objects"):
        write_rois(tmp_path / "empty.zip", np.zeros((8, 8), np.int32))
    with pytest.raises(ValueError, match=".zip"):
        write_rois(tmp_path / "cells.roi", labels)


def test_ids_of_billions_name_their_rois_without_gigabytes(tmp_path):
    """Ids from a hash or a counter (3e9 here): regionprops would allocate by the largest id; the ROIs are
    measured compacted and named by their own ids."""
    labels = make_cells((64, 64), seed=3)[1].astype(np.uint32)
    big = np.where(labels > 0, labels.astype(np.uint64) + 3 * 10**9, 0).astype(np.uint32)
    rois = labels_to_rois(big)
    assert [roi.name for roi in rois] == [str(int(v)) for v in np.unique(big[big > 0])]


def test_uint64_ids_beyond_int64_come_back_as_uint64(tmp_path):
    """`rois` named objects of uint64 labels 18446744073709551614, which reading refused as beyond int64."""
    stack = np.zeros((2, 20, 30), np.uint64)
    stack[0, 2:6, 2:8], stack[1, 10:15, 0:30], stack[1, 0:3, 0:3] = 2**64 - 2, 2**63 + 5, 7
    assert write_rois(tmp_path / "big.zip", stack) == 3
    back = read_rois(tmp_path / "big.zip", stack.shape)
    assert back.dtype == np.uint64
    np.testing.assert_array_equal(back, stack)
    import roifile

    square = roifile.ImagejRoi.frompoints(np.array([[2.0, 2.0], [6.0, 2.0], [6.0, 6.0], [2.0, 6.0]]), name="x")
    square.roitype = roifile.ROI_TYPE.POLYGON
    named = roifile.ImagejRoi.frombytes(square.tobytes())
    named.name = str(2**64 - 1)
    with pytest.raises(ValueError, match="uint64"):
        rois_to_labels([named], (8, 8))


def test_a_plane_of_only_the_not_annotated_value_gives_no_roi():
    """The "not annotated" value was decided plane by plane: a uint16 plane whose only nonzero value is 65535
    (while another plane holds ids) exported an ROI '65535'."""
    from napari_unet.roi import stack_to_rois

    stack = np.zeros((2, 20, 20), np.uint16)
    stack[0, 2:6, 2:6], stack[0, 10:20, 10:20], stack[1, 10:20, 10:20] = 3, 65535, 65535
    assert [(roi.name, roi.position) for roi in stack_to_rois(stack)] == [("3", 1)]


def test_a_binary_mask_gives_one_roi_per_connected_component_with_a_warning(tmp_path):
    """`write_rois` of a 0/255 mask of three squares wrote one ROI (the largest square), while `napari-unet rois`
    and the dock write one per connected component (`measure.instance_labels`)."""
    from napari_unet.measure import instance_labels
    from napari_unet.roi import stack_to_rois

    mask = np.zeros((40, 40), np.uint8)
    mask[2:8, 2:8] = mask[20:25, 20:25] = mask[30:35, 2:8] = 255
    objects = instance_labels(mask)[0]
    with pytest.warns(UserWarning, match="looks like a binary mask"):
        assert write_rois(tmp_path / "mask.zip", mask) == 3
    np.testing.assert_array_equal(read_rois(tmp_path / "mask.zip", mask.shape), objects)
    with pytest.warns(UserWarning, match="looks like a binary mask"):
        assert [roi.name for roi in labels_to_rois(mask > 0)] == ["1", "2", "3"]
    with pytest.warns(UserWarning, match="looks like a binary mask"):
        rois = stack_to_rois(np.stack([mask, mask]))
    assert [(roi.name, roi.position) for roi in rois] == [(str(i), p) for p in (1, 2) for i in (1, 2, 3)]
