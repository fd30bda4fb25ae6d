"""Post-processing: probabilities -> instance labels."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from napari_unet.metrics import instance_scores
from napari_unet.postprocess import (
    PostprocessConfig,
    fill_object_holes,
    fit_flood_seeds,
    grow_into_borders,
    probs_to_labels,
    relabel_consecutive,
    score_membranes,
    split_by_watershed,
    tune_config,
)


def disk(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def probs_of(mask: np.ndarray, inside: float = 0.9, outside: float = 0.05) -> np.ndarray:
    return np.where(mask, inside, outside)


def test_touching_disks_separated_by_a_thin_line_are_two_objects():
    cells = disk((48, 80), (24, 22), 16) | disk((48, 80), (24, 54), 16)
    assert ndimage.label(cells)[1] == 1  # the disks touch
    probs = probs_of(cells)
    probs[:, 38] = 0.2  # the learned 1-pixel background border between them
    labels = probs_to_labels(probs)
    assert labels.dtype == np.int32
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[24, 10] != labels[24, 70]


def test_growing_back_covers_the_cut_border_but_not_the_outline():
    cells = np.zeros((48, 80), bool)
    cells[8:40, 6:70] = True  # two cells sharing the boundary x = 37 | 38
    probs = probs_of(cells)
    probs[:, 38] = 0.2  # the border cut on one side by the training targets
    labels = probs_to_labels(probs, PostprocessConfig(border_width=1, grow_threshold=None))
    assert labels.max() == 2
    np.testing.assert_array_equal(labels != 0, cells)
    thin = probs_to_labels(probs, PostprocessConfig(border_width=0, grow_threshold=None))
    np.testing.assert_array_equal(thin != 0, cells & (probs > 0.5))


def test_objects_grow_into_the_lower_probabilities_around_them_without_merging():
    cores = disk((60, 100), (30, 28), 14) | disk((60, 100), (30, 64), 14)
    extent = disk((60, 100), (30, 28), 18) | disk((60, 100), (30, 64), 17)  # the true cells: 4 px wider...
    assert ndimage.label(extent)[1] == 1  # ...and touching
    probs = np.where(cores, 0.9, np.where(extent, 0.3, 0.02))
    probs[:, 46] = 0.15  # a dip where the grown cells meet
    probs[2:6, 2:6] = 0.3  # above the growth threshold, but holds no object: stays background
    config = PostprocessConfig(threshold=0.5, grow_threshold=0.2, border_width=0, min_size=1)
    grown = probs_to_labels(probs, config)
    assert grown.max() == 2  # not merged, and no object appears from the speck
    np.testing.assert_array_equal(grown != 0, extent & (probs > 0.2))
    assert set(np.unique(grown[:, :46])) == {0, grown[30, 28]}  # they meet at the dip
    assert set(np.unique(grown[:, 47:])) == {0, grown[30, 64]}
    for off in (replace(config, grow_threshold=None), replace(config, grow_threshold=0.5)):
        np.testing.assert_array_equal(probs_to_labels(probs, off) != 0, cores)


def test_growth_stops_at_grow_distance():
    core = disk((80, 80), (40, 40), 10)
    probs = np.where(core, 0.9, 0.3)  # an unsure network: everything else just above the growth threshold
    for distance in (3, 0):
        config = PostprocessConfig(grow_threshold=0.2, grow_distance=distance, border_width=0)
        np.testing.assert_array_equal(
            probs_to_labels(probs, config) != 0, ndimage.distance_transform_edt(~core) <= distance
        )


def test_objects_below_min_size_are_removed():
    probs = probs_of(disk((40, 40), (20, 20), 8))
    probs[2:5, 2:5] = 0.9  # a 9-pixel speck
    assert probs_to_labels(probs, PostprocessConfig(min_size=10)).max() == 1
    assert probs_to_labels(probs, PostprocessConfig(min_size=9)).max() == 2
    assert probs_to_labels(probs, PostprocessConfig(min_size=0)).max() == 2


def test_holes_are_filled_but_not_gaps_enclosed_by_several_objects():
    cell = disk((40, 40), (20, 20), 12)
    probs = probs_of(cell)
    probs[18:23, 18:23] = 0.1
    filled = probs_to_labels(probs, PostprocessConfig(fill_holes=True))
    np.testing.assert_array_equal(filled != 0, cell)
    holed = probs_to_labels(probs, PostprocessConfig(fill_holes=False))
    assert np.count_nonzero(holed) == np.count_nonzero(cell) - 25

    # a background square enclosed by two C-shaped objects belongs to neither
    labels = np.zeros((9, 9), np.int32)
    labels[1:8, 1:4] = 1
    labels[1:8, 5:8] = 2
    labels[1, 4] = labels[7, 4] = 1  # top and bottom of the enclosure, with pixels of both objects
    labels[3:6, 2:4] = 0
    labels[3:6, 5:7] = 0
    assert labels[4, 4] == 0
    out = fill_object_holes(labels)
    np.testing.assert_array_equal(out, labels)


def test_hole_of_one_object_is_filled_with_that_object():
    labels = np.zeros((7, 12), np.int32)
    labels[1:6, 1:6] = 3
    labels[3, 3] = 0
    labels[1:6, 7:11] = 5
    out = fill_object_holes(labels)
    assert out[3, 3] == 3
    np.testing.assert_array_equal(out[labels != 0], labels[labels != 0])
    assert np.count_nonzero(out != labels) == 1


def test_watershed_splits_two_disks_joined_by_a_neck():
    shape = (48, 90)
    left, right = disk(shape, (24, 24), 15), disk(shape, (24, 64), 15)
    neck = np.zeros(shape, bool)
    neck[21:28, 24:64] = True  # half-width 3.5 px << radius 15
    blob = left | right | neck
    probs = probs_of(blob)
    merged = probs_to_labels(probs, PostprocessConfig(watershed=False))
    assert merged.max() == 1
    split = probs_to_labels(probs, PostprocessConfig(watershed=True, watershed_h=2.0))
    assert split.max() == 2
    np.testing.assert_array_equal(split != 0, blob)
    assert split[24, 20] != split[24, 68]
    for centre_x, side in ((20, left), (68, right)):
        obj = split == split[24, centre_x]
        assert np.count_nonzero(obj & side) / np.count_nonzero(side) > 0.9
    # the distance transform peaks at 15.03 in each disk and passes at 4.0 in the neck: dynamic 11.03
    assert len(np.unique(split_by_watershed(blob, 11.0))) == 3
    assert len(np.unique(split_by_watershed(blob, 12.0))) == 2
    assert probs_to_labels(probs, PostprocessConfig(watershed=True, watershed_h=30.0)).max() == 1


def test_watershed_keeps_one_region_per_dome_even_with_equal_summits():
    blob = disk((40, 50), (20, 20), 10) | disk((40, 50), (20, 28), 10)
    # two summits of equal height 10.05 with a pass at 10.0 between them: one h-dome for h = 2
    split = split_by_watershed(blob, 2.0)
    assert len(np.unique(split)) == 2
    np.testing.assert_array_equal(split != 0, blob)
    elongated = np.zeros((30, 90), bool)
    elongated[10:20, 5:85] = True  # a ridge of equal distances
    assert len(np.unique(split_by_watershed(elongated, 2.0))) == 2


def test_labels_are_consecutive():
    labels = np.array([[0, 7, 7, 0, 42], [3, 0, 0, 0, 42]])
    np.testing.assert_array_equal(relabel_consecutive(labels), [[0, 2, 2, 0, 3], [1, 0, 0, 0, 3]])
    probs = np.zeros((30, 30))
    for k, y in enumerate(range(2, 28, 6)):
        probs[y : y + 3, 2:20] = 0.8 if k != 2 else 0.3  # one band below threshold
    labels = probs_to_labels(probs, PostprocessConfig(min_size=1))
    np.testing.assert_array_equal(np.unique(labels), np.arange(5))


def test_grown_pixels_go_to_a_nearest_object_and_stay_in_the_gaps():
    rng = np.random.default_rng(3)
    labels = np.zeros((60, 60), np.int32)
    for k in range(1, 25):
        y, x = rng.integers(0, 56, 2)
        labels[y : y + rng.integers(2, 6), x : x + rng.integers(2, 6)] = k
    for width in (1, 2, 3):
        grown = grow_into_borders(labels, width)
        changed = grown != labels
        assert np.all(labels[changed] == 0)
        distance = ndimage.distance_transform_edt(labels == 0)
        for y, x in zip(*np.nonzero(changed)):
            own = ndimage.distance_transform_edt(labels != grown[y, x])[y, x]
            assert own == pytest.approx(distance[y, x])
            assert own <= width
            others = np.unique(labels[max(y - width, 0) : y + width + 1, max(x - width, 0) : x + width + 1])
            assert np.count_nonzero(others) >= 2
    lone = np.zeros((9, 9), np.int32)
    lone[3:6, 3:6] = 1
    np.testing.assert_array_equal(grow_into_borders(lone, 2), lone)  # the outer outline never grows


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    threshold=st.floats(0.1, 0.9),
    min_size=st.integers(0, 20),
    watershed=st.booleans(),
    grow_threshold=st.one_of(st.none(), st.floats(0.0, 1.0)),
    flood=st.booleans(),
    seed_threshold=st.one_of(st.none(), st.floats(0.0, 1.0)),
)
def test_output_is_consecutive_disjoint_and_respects_min_size(
    seed, threshold, min_size, watershed, grow_threshold, flood, seed_threshold
):
    rng = np.random.default_rng(seed)
    probs = ndimage.gaussian_filter(rng.random((40, 40)), 2.0)
    probs = (probs - probs.min()) / (np.ptp(probs) + 1e-12)
    config = PostprocessConfig(
        threshold=threshold,
        min_size=min_size,
        watershed=watershed,
        fill_holes=False,
        border_width=0,
        grow_threshold=grow_threshold,
        flood=flood,
        seed_threshold=seed_threshold,
    )
    labels = probs_to_labels(probs, config)
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids[ids > 0], np.arange(1, np.count_nonzero(ids) + 1))
    if flood:  # the objects fill the image but for thin lines: every background pixel touches an object
        near_object = ndimage.binary_dilation(labels > 0, structure=np.ones((3, 3), bool))
        assert labels.max() == 0 or near_object.all()
    else:
        low = threshold if grow_threshold is None else min(threshold, grow_threshold)
        assert np.all((labels != 0) <= (probs > low))
    sizes = np.bincount(labels.ravel())[1:]
    assert np.all(sizes >= min_size)
    core = np.bincount(labels[probs > threshold].ravel(), minlength=ids.size)[1:]
    assert np.all(core >= min_size) and np.all(core > 0)  # each object grew from a kept object


def test_config_round_trips_through_json_and_rejects_bad_values():
    config = PostprocessConfig(
        threshold=0.4, min_size=25, fill_holes=False, watershed=True, watershed_h=1.5, border_width=2
    )
    restored = PostprocessConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    assert PostprocessConfig.from_dict({}) == PostprocessConfig()
    with pytest.raises(ValueError, match="unknown PostprocessConfig keys"):
        PostprocessConfig.from_dict({"treshold": 0.5})
    with pytest.raises(ValueError, match="threshold"):
        PostprocessConfig(threshold=1.5)
    with pytest.raises(ValueError, match="min_size"):
        PostprocessConfig(min_size=-1)
    with pytest.raises(ValueError, match="border_width"):
        PostprocessConfig(border_width=1.5)
    with pytest.raises(ValueError, match="grow_threshold"):
        PostprocessConfig(grow_threshold=1.5)
    with pytest.raises(TypeError, match="grow_threshold"):
        PostprocessConfig(grow_threshold="low")
    with pytest.raises(ValueError, match="grow_distance"):
        PostprocessConfig(grow_distance=-1)
    with pytest.raises(ValueError, match="watershed_h"):
        PostprocessConfig(watershed_h=0)
    with pytest.raises(ValueError, match="seed_threshold"):
        PostprocessConfig(seed_threshold=-0.1)
    with pytest.raises(TypeError, match="fill_holes"):
        PostprocessConfig(fill_holes="False")


def test_bad_probability_maps_are_refused():
    with pytest.raises(ValueError, match="2-D"):
        probs_to_labels(np.zeros((2, 8, 8)))
    with pytest.raises(TypeError, match="float"):
        probs_to_labels(np.zeros((8, 8), np.uint8))


@pytest.mark.parametrize(
    "value, said", [(np.nan, "finite"), (np.inf, "finite"), (255.0, "from 0 to 255"), (-0.5, "in")]
)
def test_probabilities_that_are_no_probabilities_are_refused_as_the_metrics_refuse_them(value, said):
    probs = np.zeros((8, 8), np.float32)
    probs[2:5, 2:5] = 0.9
    probs[3, 3] = value
    with pytest.raises(ValueError, match=f"probs_fg must be .*{said}"):
        probs_to_labels(probs)


def test_empty_and_full_maps():
    assert probs_to_labels(np.zeros((16, 16))).max() == 0
    full = probs_to_labels(np.ones((16, 16)), PostprocessConfig(watershed=True))
    assert full.max() >= 1 and np.all(full != 0)


def test_recovers_touching_nuclei_from_separated_targets_of_real_data(shared_data):
    """A perfect network outputs the training target: cells with a 1-px border cut where they touch (a pixel
    becomes background when a higher id lies in its 3 x 3 neighbourhood, as targets.separate_cells(border=1)
    does). Post-processing that target must give back the nuclei, where the connected components of the
    plain foreground mask merge the touching ones."""
    from PIL import Image

    from napari_unet.metrics import components, instance_scores

    files = sorted((shared_data / "dsb2018-fluo" / "train" / "labels").glob("*.png"))[:10]
    ours, merged = [], []
    for path in files:
        truth = np.asarray(Image.open(path)).astype(np.int32)
        target = (truth > 0) & ~(ndimage.maximum_filter(truth, size=3) > truth)
        labels = probs_to_labels(target.astype(np.float32), PostprocessConfig(min_size=0, border_width=1))
        ours.append(instance_scores(labels, truth))
        merged.append(instance_scores(components(truth > 0), truth))
    assert np.mean([s["ap50"] for s in ours]) > 0.98
    assert np.mean([s["map"] for s in ours]) > 0.95
    assert np.mean([s["ap50"] for s in ours]) > np.mean([s["ap50"] for s in merged]) + 0.05


def test_growth_is_calibrated_on_the_annotated_cells_alone():
    from napari_unet.postprocess import calibrate_growth

    yy, xx = np.mgrid[:60, :100]
    cell = (yy - 30) ** 2 + (xx - 25) ** 2 <= 12**2
    probs = np.where((yy - 30) ** 2 + (xx - 25) ** 2 <= 9**2, 0.9, np.where(cell, 0.25, 0.02))
    probs[10:50, 60:95] = 0.9  # an unannotated blob elsewhere: no annotated cell there, so it does not count
    cells = cell.astype(np.int32)
    config, scores = calibrate_growth([probs], [cells], PostprocessConfig(border_width=0))
    assert config.grow_threshold == 0.2 and scores["0.2"] > 0.95 > scores["off"]
    exact = np.where(cell, 0.9, 0.02)
    assert calibrate_growth([exact], [cells])[0].grow_threshold is None  # right already: no growth
    with pytest.raises(ValueError, match="as many"):
        calibrate_growth([probs], [])


def test_score_config_scores_one_configuration_as_the_ranking_does():
    from napari_unet.postprocess import best_config, score_config

    truth = np.zeros((40, 60), np.int32)
    truth[disk(truth.shape, (20, 15), 8)] = 1
    truth[disk(truth.shape, (20, 40), 8)] = 2
    probs = probs_of(truth > 0)
    bridge = np.zeros(truth.shape, bool)
    bridge[18:23, 15:40] = True
    probs[bridge & (truth == 0)] = 0.6  # a bridge: above threshold 0.5 the two cells merge, above 0.7 they do not
    merged, split = PostprocessConfig(border_width=0), PostprocessConfig(threshold=0.7, border_width=0)
    assert score_config(merged, [probs], [truth])["ap50"] == 0.0
    assert score_config(split, [probs], [truth]) == {"ap50": 1.0, "map": 1.0, "f1_50": 1.0, "seg": 1.0}
    assert best_config([merged, split], [probs], [truth], lambda mean: mean["ap50"])[2] == [
        score_config(merged, [probs], [truth]),
        score_config(split, [probs], [truth]),
    ]
    with pytest.raises(ValueError, match="as many"):
        score_config(merged, [probs], [truth, truth])


def test_tuning_picks_the_threshold_that_separates_touching_cells():
    truth = np.zeros((20, 40), np.int32)
    truth[4:16, 3:14], truth[4:16, 14:25], truth[4:16, 25:36] = 1, 2, 3  # three touching cells in a row
    probs = np.where(truth > 0, 0.95, 0.02).astype(np.float32)
    probs[4:16, 13:15] = probs[4:16, 24:26] = 0.65  # the borders: above 0.5, below 0.7
    base = PostprocessConfig(min_size=1)
    merged, before = tune_config([probs], [truth], base, thresholds=(), watershed=())
    assert merged == base and before["ap50"] == 0.0
    tuned, scores = tune_config([probs], [truth], base)
    assert tuned.threshold >= 0.7 and scores["ap50"] == 1.0 and tuned.min_size == 1
    assert instance_scores(probs_to_labels(probs, tuned), truth)["ap50"] == 1.0
    with pytest.raises(ValueError, match="as many probability maps"):
        tune_config([probs], [])


def test_tuning_drops_fragments_with_the_smallest_object_size_only_when_asked():
    """Small fragments the network gives around nuclei are false objects: the min_size round removes them when
    candidates are given, and leaves the size alone without them (what every caller but the generalist does)."""
    truth = np.zeros((40, 60), np.int32)
    truth[5:17, 5:17], truth[22:34, 30:42] = 1, 2  # two nuclei of 144 px
    probs = np.where(truth > 0, 0.95, 0.02).astype(np.float32)
    probs[5:10, 45:50] = probs[30:35, 5:10] = 0.9  # two fragments of 25 px
    base = PostprocessConfig(min_size=16, watershed=False)
    kept, scores = tune_config([probs], [truth], base, thresholds=(), watershed=())
    assert kept.min_size == 16 and scores["ap50"] < 1.0
    tuned, scores = tune_config([probs], [truth], base, thresholds=(), watershed=(), min_sizes=(16, 32, 64))
    assert tuned.min_size == 32 and scores["ap50"] == 1.0  # the first that removes them; 64 ties, later


def touching_disks() -> tuple[np.ndarray, np.ndarray]:
    """Two nuclei of radius 9 whose centres lie 8 px apart, so they overlap in a wide neck, and the probability
    of a network that is sure of their cores (0.97) but not of the line where they meet (0.6): (probs, truth)."""
    yy, xx = np.mgrid[:40, :60]
    left, right = np.hypot(yy - 20, xx - 26), np.hypot(yy - 20, xx - 34)
    truth = np.where(left <= 9, 1, 0) + np.where((right <= 9) & (xx >= 30), 2, 0)
    truth[(left <= 9) & (xx >= 30)] = 2
    truth[(right <= 9) & (xx < 30)] = 1
    probs = np.where(truth > 0, 0.97, 0.02)
    probs[(truth > 0) & (np.abs(xx - 29.5) < 1.5)] = 0.6  # the line between them
    return probs, truth.astype(np.int32)


def test_cores_part_touching_cells_that_the_mask_s_distance_transform_merges():
    """The neck is too wide for the distance-transform watershed (one dome) but the network's probability dips
    along it: cores above 0.9 seed two objects that spread over the mask and meet in the dip. A blob that holds no
    core (a nucleus the network is less sure of) stays an object; a seed threshold at or below the threshold is
    off."""
    probs, truth = touching_disks()
    probs[2:8, 2:8] = 0.7  # a dim nucleus: no pixel above the seed threshold
    truth[2:8, 2:8] = 3
    base = PostprocessConfig(watershed=True, watershed_h=2.0, border_width=0, min_size=4)
    merged = probs_to_labels(probs, base)
    assert merged.max() == 2  # the two nuclei as one, and the dim one
    labels = probs_to_labels(probs, replace(base, seed_threshold=0.9))
    assert labels.max() == 3 and instance_scores(labels, truth)["ap50"] == 1.0
    assert np.array_equal(labels > 0, probs > 0.5)  # the objects cover the mask exactly
    np.testing.assert_array_equal(probs_to_labels(probs, replace(base, seed_threshold=0.5)), merged)
    assert not replace(base, seed_threshold=0.4).seeds_from_cores and replace(base, seed_threshold=0.9).seeds_from_cores
    specks = np.where(probs > 0.5, 0.7, probs)
    specks[20, 22] = specks[20, 38] = 0.95  # one-pixel cores: smaller than a quarter of min_size, they seed nothing
    assert probs_to_labels(specks, replace(base, seed_threshold=0.9, watershed=False, min_size=8)).max() == 2


def test_touching_cells_without_cores_are_split_as_without_seeds():
    """Two touching nuclei the network is unsure of (no pixel above the seed threshold), with a narrow neck that
    the distance-transform watershed parts: seeding by cores keeps them as the watershed makes them, two objects."""
    yy, xx = np.mgrid[:40, :60]
    blobs = (np.hypot(yy - 20, xx - 20) <= 9) | (np.hypot(yy - 20, xx - 38) <= 9)
    probs = np.where(blobs, 0.7, 0.02)
    base = PostprocessConfig(watershed=True, watershed_h=1.0, border_width=0, min_size=4)
    without = probs_to_labels(probs, base)
    assert without.max() == 2
    np.testing.assert_array_equal(probs_to_labels(probs, replace(base, seed_threshold=0.9)), without)


def test_tuning_seeds_objects_by_their_cores_when_that_parts_touching_cells():
    probs, truth = touching_disks()
    base = PostprocessConfig(border_width=0, min_size=4)
    tuned, scores = tune_config([probs], [truth], base, thresholds=(0.5,), grow_thresholds=(None,))
    assert tuned.seeds_from_cores and tuned.seed_threshold > 0.6 and scores["ap50"] == 1.0
    unseeded, before = tune_config(
        [probs], [truth], base, thresholds=(0.5,), grow_thresholds=(None,), seed_thresholds=()
    )
    assert unseeded.seed_threshold is None and before["ap50"] < 1.0
    # a nucleus whose middle the network is less sure of: two cores, one cell; a model saved with seeds
    # (fine-tuned from the built-in) gets them turned off by the tuning
    one = np.where(truth > 0, 1, 0).astype(np.int32)
    tuned, scores = tune_config(
        [probs], [one], replace(base, seed_threshold=0.9), thresholds=(0.5,), grow_thresholds=(None,)
    )
    assert not tuned.seeds_from_cores and scores["ap50"] == 1.0


def test_tuning_grows_objects_only_where_the_outlines_are_wider():
    yy, xx = np.mgrid[:40, :40]
    truth = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 12**2).astype(np.int32)
    probs = np.where((yy - 20) ** 2 + (xx - 20) ** 2 <= 9**2, 0.9, 0.02)  # the network's core: 3 px too small
    probs[truth.astype(bool) & (probs < 0.5)] = 0.25
    base = PostprocessConfig(border_width=0)
    tuned, scores = tune_config([probs], [truth], base, thresholds=(), watershed=())
    assert tuned.grow_threshold == pytest.approx(0.2) and scores["map"] > 0.9
    exact = np.where(truth > 0, 0.9, 0.02)  # outlines already right: growing would not help, none is chosen
    assert tune_config([exact], [truth], base, thresholds=(), watershed=())[0].grow_threshold is None


def test_tuning_ranks_thresholds_by_map_not_by_ap50_alone():
    """At 0.7 the spurious blob is gone (AP50 1.0 against 0.5) but the cell shrinks to IoU 0.64, matched only up to
    IoU 0.6 (mAP 0.3); at 0.5 the cell is exact and the blob a false positive (mAP 0.5): outlines count."""
    yy, xx = np.mgrid[:60, :60]
    r2 = (yy - 20) ** 2 + (xx - 20) ** 2
    truth = (r2 <= 10**2).astype(np.int32)
    probs = np.where(r2 <= 8**2, 0.95, np.where(r2 <= 10**2, 0.6, 0.02)).astype(np.float32)
    probs[45:55, 45:55] = 0.6  # a blob that is not a cell
    base = PostprocessConfig(min_size=4, border_width=0)
    high = instance_scores(probs_to_labels(probs, replace(base, threshold=0.7)), truth)
    low = instance_scores(probs_to_labels(probs, replace(base, threshold=0.5)), truth)
    assert (high["ap50"], low["ap50"]) == (1.0, 0.5) and high["map"] < low["map"]
    tuned, scores = tune_config([probs], [truth], base, thresholds=(0.7, 0.5), watershed=(False,))
    assert tuned.threshold == 0.5 and scores["map"] == pytest.approx(low["map"])


def test_flood_parts_cells_across_a_faint_membrane_that_thresholding_merges():
    """Two cells parted by a membrane whose probability of cell interior falls only to 0.8 in a gap: thresholding
    at 0.5 merges them; flooding from seeds above 0.9 parts them along the membrane and fills the image."""
    probs = np.full((40, 60), 0.98)
    probs[:, 29:31] = 0.05  # the membrane
    probs[15:20, 29:31] = 0.8  # a gap where the network draws it faintly
    assert probs_to_labels(probs, PostprocessConfig(border_width=0)).max() == 1  # merged
    labels = probs_to_labels(probs, PostprocessConfig(threshold=0.9, border_width=0, flood=True))
    assert labels.max() == 2 and labels[17, 5] != labels[17, 55]
    assert np.all(labels[:, :29] == labels[0, 0]) and np.all(labels[:, 31:] == labels[0, 59])
    assert np.count_nonzero(labels == 0) == 40  # a 1-pixel line along the membrane, nothing else


def test_flood_seeds_are_fitted_by_the_rand_score_of_the_membrane_masks():
    """The faint membrane again: seeds above 0.5 merge the two cells (V_rand 2/3 or below), above 0.9 they part
    them; of thresholds scoring alike the highest is chosen, the base's own among them; the other parameters stay
    as they were."""
    probs = np.full((40, 60), 0.98)
    probs[:, 29:31] = 0.05
    probs[15:20, 29:31] = 0.8
    mask = np.ones(probs.shape, np.uint8)
    mask[:, 29:31] = 0  # the faint part is membrane too
    base = PostprocessConfig(threshold=0.5, min_size=4, border_width=0)
    config, scores = fit_flood_seeds([probs], [mask], base, candidates=(0.9, 0.95))
    assert config == replace(base, threshold=0.95, flood=True)  # of the seeds that part them, the surest
    assert list(scores) == ["0.5", "0.9", "0.95"] and scores["0.5"] < 0.7 and scores["0.9"] == scores["0.95"] == 1.0
    assert score_membranes(config, [probs, probs], [mask, mask]) == {"vrand": 1.0, "vinfo": 1.0}
    kept, _ = fit_flood_seeds([probs], [mask], replace(base, threshold=0.95), candidates=(0.9,))
    assert kept.threshold == 0.95  # as good and higher: the base's own threshold stays
    with pytest.raises(ValueError, match="as many probability maps"):
        fit_flood_seeds([probs], [], base)


def test_flood_seeds_take_the_highest_threshold_within_the_tolerance_of_the_best(membrane_mask):
    """Cells sure at their centres, less so towards the membranes: seeds above 0.5-0.85 segment them exactly,
    higher ones lose the smallest cells (V_rand 0.988 at 0.9, 0.977 at 0.93, 0.890 at 0.95). The highest
    threshold scoring within the tolerance of the best is chosen: the surest seeds that cost (almost) nothing on
    these images, which leak least through a membrane drawn faintly on new ones."""
    mask = membrane_mask((96, 96), 12, seed=3)
    probs = 1 - np.exp(-ndimage.distance_transform_edt(mask) / 3.0)
    probs = np.clip(probs + 0.03 * np.random.default_rng(0).standard_normal(mask.shape), 0, 1)
    base = PostprocessConfig(threshold=0.5, min_size=4, border_width=0)
    chosen = {
        tolerance: fit_flood_seeds([probs], [mask], base, tolerance=tolerance)[0].threshold
        for tolerance in (0.0, 0.005, 0.02, 0.05, 0.5)
    }
    assert chosen == {0.0: 0.85, 0.005: 0.85, 0.02: 0.9, 0.05: 0.93, 0.5: 0.95}
    scores = fit_flood_seeds([probs], [mask], base)[1]
    assert scores["0.85"] == 1.0 and 0.98 < scores["0.9"] < 0.995 and scores["0.95"] < 0.9
    with pytest.raises(ValueError, match="tolerance"):
        fit_flood_seeds([probs], [mask], base, tolerance=-0.1)


def test_flood_seeds_that_leave_an_image_empty_are_never_chosen(membrane_mask):
    """A network sure of nothing (probabilities 0.49-0.51): seeds above 0.5 over-split the cells, higher ones
    leave nothing, which V_rand scores higher (one segment over the image); the fit keeps 0.5."""
    mask = membrane_mask((64, 64), 8, seed=1)
    probs = 0.5 + 0.01 * np.random.default_rng(0).uniform(-1, 1, mask.shape)
    base = PostprocessConfig(threshold=0.5, min_size=1, border_width=0)
    empty = score_membranes(replace(base, threshold=0.9, flood=True), [probs], [mask])["vrand"]
    assert empty > score_membranes(replace(base, flood=True), [probs], [mask])["vrand"]
    config, scores = fit_flood_seeds([probs], [mask], base, candidates=(0.6, 0.9))
    assert config.threshold == 0.5 and list(scores) == ["0.5"]


def test_flood_grows_only_from_seeds_of_at_least_min_size():
    probs = np.full((30, 30), 0.3)
    probs[2:12, 2:12] = 0.99  # a cell's sure core
    probs[20, 20] = 0.99  # a speck
    config = PostprocessConfig(threshold=0.9, min_size=16, border_width=0, flood=True)
    labels = probs_to_labels(probs, config)
    assert labels.max() == 1 and np.all(labels == 1)  # the core floods everything; the speck seeds nothing
    assert not probs_to_labels(np.full((8, 8), 0.5), config).any()  # no seed: nothing to flood
