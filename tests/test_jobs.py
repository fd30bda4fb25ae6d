"""The docks' jobs without Qt: a Fine-tune run, step timing, tile streaming, the augmentation preview sample."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unet.augment import AugmentConfig, augment
from napari_unet.fewshot import few_shot_trainer
from napari_unet.io import apply_normalization, percentiles
from napari_unet.jobs.augment_preview import grid_lines, preview_sample
from napari_unet.jobs.finetune import (
    TrainingJob,
    annotated_planes,
    describe_step,
    expected_iterations,
    format_duration,
    measure_steps,
    run_config,
    run_progress,
    run_training,
    step_setting,
    time_left,
    training_job,
    training_samples,
)
from napari_unet.jobs.segment import TileUpdate, count_tiles, describe_scale, postprocess_planes, stream_tiles
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle, Normalization, load_model
from napari_unet.postprocess import PostprocessConfig, probs_to_labels
from napari_unet.scale import median_diameter
from napari_unet.synthetic import make_cells
from napari_unet.targets import mask_around_cells
from napari_unet.tiling import read_window, tile_grid
from napari_unet.training import PRESETS, TrainEvent, preset

TINY = UNetConfig(depth=3, base_channels=4)


@pytest.fixture(scope="module")
def cells() -> tuple[np.ndarray, np.ndarray]:
    return make_cells((96, 120), seed=3)


def job(cells, tmp_path: Path, masks, **overrides) -> TrainingJob:
    image, labels = cells
    _, config = preset("fast", tile_size=60, validate_every=1000, checkpoint_every=1000, **overrides)
    torch.manual_seed(0)
    return TrainingJob(
        [image[None].astype(np.float32)],
        [labels],
        masks,
        UNet(TINY),
        config,
        Normalization(),
        None,
        "cpu",
        tmp_path / "model",
    )


def test_training_samples_are_cropped_to_the_annotated_region_and_normalised_with_the_whole_plane(cells, tmp_path):
    image, labels = cells
    mask = np.zeros(labels.shape, bool)
    mask[40:50, 50:55] = True
    prepared = job(cells, tmp_path, [mask])
    context = prepared.config.tile_size // 2 + 1  # 31
    sample = training_samples(prepared)[0]
    box = (slice(40 - context, 50 + context), slice(50 - context, 55 + context))
    assert sample.image.shape == (1, 10 + 2 * context, 5 + 2 * context)
    lo, hi = percentiles(image[None], 1.0, 99.8, "CYX")
    np.testing.assert_allclose(sample.image, apply_normalization(image[None][(slice(None), *box)], lo, hi))
    np.testing.assert_array_equal(sample.labels, labels[box])
    np.testing.assert_array_equal(sample.mask, mask[box])
    whole = training_samples(job(cells, tmp_path, [None]))[0]
    assert whole.image.shape == (1, *labels.shape) and whole.mask is None
    # a bright-background plane ("auto" inverts it) cropped to a corner of dark cells: inverted as the whole plane is
    bright = job(cells, tmp_path, [mask])
    bright.images[0] = (1.0 - image[None]).astype(np.float32)
    bright.normalization = Normalization(invert="auto")
    inverted = training_samples(bright)[0]
    seen = ModelBundle(UNet(TINY), bright.normalization).preprocessor(bright.images[0])(bright.images[0])
    assert inverted.oriented
    np.testing.assert_allclose(inverted.image, seen[(slice(None), *box)], atol=1e-5)


def test_run_training_yields_the_trainer_events_and_returns_the_saved_folder(cells, tmp_path):
    prepared = job(cells, tmp_path, [None], iterations=3)
    events = run_training(prepared)
    kinds = []
    with pytest.raises(StopIteration) as finished:
        while True:
            kinds.append(next(events).kind)
    assert finished.value.value == prepared.checkpoint
    assert kinds.count("step") == 3 and prepared.trainer.iteration == 3
    assert load_model(prepared.checkpoint).metadata["iterations"] == 3


def test_closing_a_stopped_run_saves_its_last_step(cells, tmp_path):
    prepared = job(cells, tmp_path, [None], iterations=50)
    events = run_training(prepared)
    steps = [e for e in itertools.islice(events, 10) if e.kind == "step"]
    events.close()
    assert load_model(prepared.checkpoint).metadata["iterations"] == steps[-1].iteration


def test_measure_steps_yields_each_step_and_returns_the_median_of_the_later_ones():
    steps = measure_steps(TINY, 60, 1, "cpu")
    times = []
    with pytest.raises(StopIteration) as finished:
        while True:
            times.append(next(steps))
    assert len(times) == 3 and all(t > 0 for t in times)
    assert finished.value.value == float(np.median(times[1:]))


def test_format_duration_rounds_to_what_a_status_line_needs():
    assert [format_duration(s) for s in (0.4, 89, 90, 5399, 5400)] == ["0 s", "89 s", "2 min", "90 min", "1.5 h"]


def test_describe_step_says_where_the_run_is_and_the_time_left():
    event = TrainEvent("step", iteration=10, total=40, loss=0.25, learning_rate=0.01, elapsed=30.0)
    assert describe_step(event) == "iteration 10/40, loss 0.2500, 30 s elapsed, about 2 min left"


def step_event(iteration: int, total: int, elapsed: float) -> TrainEvent:
    return TrainEvent("step", iteration=iteration, total=total, loss=0.25, learning_rate=0.01, elapsed=elapsed)


def test_run_progress_follows_whichever_of_the_budget_and_the_iterations_ends_the_run_first():
    assert run_progress(step_event(10, 40, 30.0)) == 0.25  # no budget: the iterations
    assert run_progress(step_event(10, 1000, 15.0), time_budget=20.0) == 0.75  # the budget ends it first
    assert run_progress(step_event(30, 40, 30.0), time_budget=600.0) == 0.75  # the iterations end it first
    assert run_progress(step_event(12, 1000, 20.4), time_budget=20.0) == 1.0  # the last step overshoots the budget
    assert run_progress(step_event(40, 40, 3.0), time_budget=20.0) == 1.0
    assert run_progress(step_event(1, 40, 0.5), time_budget=0.0) == 1.0  # a zero budget stops after one step


def test_time_left_is_the_sooner_of_the_budget_and_the_remaining_iterations():
    assert time_left(step_event(10, 40, 30.0)) == 90.0  # 30 more steps of 3 s
    assert time_left(step_event(10, 1000, 5.0), time_budget=20.0) == 15.0  # the budget ends the run
    assert time_left(step_event(30, 40, 30.0), time_budget=600.0) == 10.0  # 10 more steps of 1 s
    assert time_left(step_event(12, 1000, 20.4), time_budget=20.0) == 0.0


def test_describe_step_with_a_time_budget_counts_down_the_budget():
    text = describe_step(step_event(10, 1000, 5.0), time_budget=20.0)
    assert text == "iteration 10/1000, loss 0.2500, 5 s of a 20 s budget, about 15 s left"
    text = describe_step(step_event(30, 40, 30.0), time_budget=600.0)
    assert text == "iteration 30/40, loss 0.2500, 30 s of a 10 min budget, about 10 s left"


def test_expected_iterations_are_those_the_budget_leaves_time_for():
    assert expected_iterations(step_event(10, 40, 30.0)) == 40
    assert expected_iterations(step_event(10, 1000, 5.0), time_budget=20.0) == 40  # 2 steps a second for 20 s
    assert expected_iterations(step_event(30, 40, 30.0), time_budget=600.0) == 40  # not more than asked for
    assert expected_iterations(step_event(1, 1000, 0.0), time_budget=20.0) == 1000  # no pace yet: the iterations


@dataclass(frozen=True)
class Stack:
    """A minimal stack of planes: data (T, C, H, W)."""

    data: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[-2:]

    @property
    def planes(self) -> list[tuple[int, ...]]:
        return [(t,) for t in range(self.data.shape[0])]

    def plane(self, index: tuple[int, ...]) -> np.ndarray:
        return self.data[index]


def test_streamed_tiles_stitch_to_the_tiled_prediction_with_distinct_preview_ids(cells):
    image, _ = cells
    torch.manual_seed(0)
    bundle = ModelBundle(UNet(TINY).eval())
    data = np.stack([image, image[::-1].copy()])[:, None].astype(np.float32)  # (T=2, C=1, H, W)
    config = PostprocessConfig(threshold=0.5, min_size=1)
    device = torch.device("cpu")
    updates = list(stream_tiles(bundle, Stack(data), 32, device, config))
    assert [u.done for u in updates] == list(range(1, len(updates) + 1))
    assert {u.total for u in updates} == {len(updates)} and len(updates) % 2 == 0
    probs = np.zeros((2, *image.shape), np.float32)
    labels = np.zeros((2, *image.shape), np.int32)
    seen: set[int] = set()
    for update in updates:
        probs[update.key] = update.probs_fg
        labels[update.key] = update.labels
        ids = set(np.unique(update.labels)) - {0}
        assert not ids & seen, "tiles never share preview ids"
        seen |= ids
        np.testing.assert_array_equal(update.labels > 0, probs_to_labels(update.probs_fg, config) > 0)
    for t in range(2):
        expected = bundle.predict(data[t], device="cpu")[1]  # other tiles, the same probabilities
        np.testing.assert_allclose(probs[t], expected, atol=1e-5)
    final = postprocess_planes(probs, [(0,), (1,)], config)
    for t in range(2):
        np.testing.assert_array_equal(final[t], probs_to_labels(probs[t], config))


@pytest.mark.parametrize("factor", [1.0, 0.5])
def test_streamed_test_time_augmentation_ends_with_what_predict_tta_gives(cells, factor):
    image, _ = cells
    torch.manual_seed(0)
    bundle = ModelBundle(UNet(TINY).eval())
    data = np.stack([image, image[:, ::-1].copy()])[:, None].astype(np.float32)  # (T=2, C=1, H, W)
    config = PostprocessConfig(threshold=0.5, min_size=1)
    stack = Stack(data)
    updates = list(stream_tiles(bundle, stack, 32, torch.device("cpu"), config, factor, tta=True))
    assert len(updates) == count_tiles(bundle.net, stack, 32, factor, tta=True) == 16  # 8 orientations per plane
    assert [u.done for u in updates] == list(range(1, 17)) and {u.total for u in updates} == {16}
    for t in range(2):
        last = updates[8 * t + 7]
        assert last.plane == (t,) and last.region == (slice(0, image.shape[0]), slice(0, image.shape[1]))
        expected = bundle.predict_rescaled(data[t], factor, tile_size=32, device="cpu", tta=True)[1]
        np.testing.assert_array_equal(last.probs_fg, expected)
        np.testing.assert_array_equal(last.labels > 0, probs_to_labels(expected, config) > 0)
        first = updates[8 * t]  # the first update is one orientation alone: the plain prediction
        plain = bundle.predict_rescaled(data[t], factor, tile_size=32, device="cpu")[1]
        np.testing.assert_allclose(first.probs_fg, plain, atol=1e-6)
        assert all(updates[8 * t + k].labels is first.labels for k in range(1, 7))  # labelled twice per plane
    last_ids = [set(np.unique(updates[8 * t + 7].labels)) - {0} for t in range(2)]
    assert not last_ids[0] & last_ids[1], "planes never share ids"


def test_the_preview_is_augments_own_sample_for_the_seed(cells):
    image, labels = cells
    plane = image[None]
    origin, size, config = (-10, 30), 60, AugmentConfig()
    shown_image, shown_labels, grid = preview_sample(plane, labels, origin, size, config, seed=4)
    lo, hi = percentiles(plane, 1.0, 99.8, "CYX")
    window = apply_normalization(read_window(plane, origin, (size, size)), lo, hi)
    target = read_window(labels[None], origin, (size, size))[0].astype(np.int32)
    expected = augment(window, target, grid_lines((size, size)), np.random.default_rng(4), config)
    np.testing.assert_allclose(shown_image, expected[0], atol=1e-5)
    np.testing.assert_array_equal(shown_labels, expected[1])
    assert not np.array_equal(grid, grid_lines((size, size))), "the default elastic deformation bends the grid"

    still = AugmentConfig(
        elastic_sigma=0.0, rotation=0.0, shift=0.0, flip_p=0.0, contrast_p=0.0, brightness_p=0.0, gamma_p=0.0
    )
    shown_image, shown_labels, grid = preview_sample(plane, None, origin, size, still, seed=4)
    np.testing.assert_allclose(shown_image, window, atol=1e-6)
    assert not shown_labels.any() and shown_labels.shape == (size, size)
    np.testing.assert_array_equal(grid, grid_lines((size, size)))


# -- object size and where to annotate ---------------------------------------------------------------------------


@dataclass
class _Plane:
    """One 2-D plane as the docks' Planes."""

    data: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.data.shape[-2:]

    @property
    def planes(self) -> list[tuple[int, ...]]:
        return [()]

    def plane(self, index: tuple[int, ...]) -> np.ndarray:
        return self.data[None]


@pytest.mark.parametrize("factor", [0.5, 1.7])
def test_rescaled_tiles_cover_the_image_once_and_equal_the_bundles_rescaled_prediction(factor):
    from test_diameter import bundle as threshold_bundle
    from test_diameter import disks

    from napari_unet.jobs.segment import rescaled_region
    from napari_unet.metrics import instance_scores
    from napari_unet.scale import scale_postprocess

    truth = disks((150, 170), 14, 50)
    model = threshold_bundle(20.0)
    image = (truth > 0).astype(np.float32) * 50
    probs = np.full(truth.shape, np.nan, np.float32)
    config = scale_postprocess(model.postprocess, 1 / factor)
    *tiles, whole = stream_tiles(model, _Plane(image), 32, torch.device("cpu"), config, factor)
    for update in tiles:
        assert np.isnan(probs[update.key]).all(), "tiles overlap"
        probs[update.key] = update.probs_fg
    assert not np.isnan(probs).any(), "tiles leave gaps"
    assert whole.key == (slice(0, 150), slice(0, 170)) and whole.done == tiles[-1].done == whole.total
    expected = model.predict_rescaled(image, factor, device="cpu")[1]
    np.testing.assert_allclose(whole.probs_fg, expected, atol=1e-5)
    assert np.mean(np.abs(probs - expected) < 0.05) > 0.97  # the tiles' preview is close
    assert instance_scores(whole.labels, truth)["ap50"] == 1.0
    assert rescaled_region((slice(0, 10), slice(90, 100)), (100, 100), (50, 37)) == (slice(0, 5), slice(33, 37))


def test_uncertainty_and_suggestions_point_away_from_what_is_annotated():
    from test_diameter import bundle as threshold_bundle
    from test_diameter import disks

    from napari_unet.jobs.finetune import suggest_annotation
    from napari_unet.jobs.segment import stream_uncertainty

    model = threshold_bundle(20.0)
    image = (disks((240, 240), 10, 40) > 0).astype(np.float32) * 50
    values = run_to_end(stream_uncertainty(model, _Plane(image), 1.0, torch.device("cpu")))
    assert values.shape == image.shape and 0 <= values.min() and values.max() <= 1
    assert values.max() < 1e-3  # a thresholding network answers alike in every orientation
    annotated = np.zeros(image.shape, bool)
    annotated[:80] = True
    torch.manual_seed(0)
    unsure = ModelBundle(UNet(depth=2, base_channels=4, dropout=0.0))  # untrained: its answers scatter
    boxes = suggest_annotation(unsure, image[None], annotated, device="cpu")
    assert len(boxes) == 3
    for y0, x0, y1, x1 in boxes:
        assert y1 - y0 == x1 - x0 == 64 and not annotated[y0:y1, x0:x1].any()  # 64 px: no object diameter


# ---------------------------------------------------------------------------------- preparing a Fine-tune run


def test_annotated_planes_keeps_the_painted_planes_with_the_trusted_region_of_each(cells):
    image, labels = cells
    data = np.stack([image, image, image])[:, None].astype(np.float32)  # (T=3, C=1, H, W)
    painted = np.stack([labels, np.zeros_like(labels), labels[::-1].copy()])
    images, kept, masks = annotated_planes(Stack(data), painted, margin=5)
    assert len(images) == 2 and images[0].shape == (1, *labels.shape) and images[0].dtype == np.float32
    np.testing.assert_array_equal(kept[1], painted[2])
    np.testing.assert_array_equal(masks[0], mask_around_cells(labels, 5))
    region = np.zeros(labels.shape, bool)
    region[:20] = True
    assert all(m is region for m in annotated_planes(Stack(data), painted, region=region, margin=5)[2])
    assert annotated_planes(Stack(data), painted, margin=None)[2] == [None, None]  # every cell annotated
    few_shot = annotated_planes(Stack(data), painted, margin=None, few_shot=True)[2]
    assert all(m.all() for m in few_shot)  # the recipe takes a whole plane as a mask of ones
    assert annotated_planes(Stack(data), painted, margin=5, few_shot=True)[2] == [None, None]  # its own margin
    with pytest.raises(ValueError, match="No annotations in 'cells'"):
        annotated_planes(Stack(data), np.zeros_like(painted), name="'cells'")


def test_planes_holding_only_the_not_annotated_value_have_no_cell(cells):
    """A plane all -1 (int32) crashed the run ("index 0 is out of bounds"); a plane all 65535 (uint16) beside
    painted planes trained as one big cell. Both are "not annotated", decided for the whole stack; a 0/65535 mask
    stack stays a mask of cells."""
    image, labels = cells
    data = np.stack([image, image])[:, None].astype(np.float32)
    for dtype, unannotated in ((np.int32, -1), (np.uint16, 65535)):
        painted = np.stack([labels, np.full_like(labels, unannotated)]).astype(dtype)
        images, kept, _ = annotated_planes(Stack(data), painted, margin=5)
        assert len(images) == 1 and np.array_equal(kept[0], labels)
    mask = np.stack([np.where(labels > 0, 65535, 0)] * 2).astype(np.uint16)
    assert len(annotated_planes(Stack(data), mask, margin=5)[0]) == 2


def test_run_config_validates_about_ten_times_and_lets_overrides_win():
    net, config = run_config("fast", 50, 60.0)
    defaults = PRESETS["fast"][1]
    assert net == PRESETS["fast"][0] and config.iterations == 50 and config.time_budget == 60.0
    assert config.validate_every == min(defaults.validate_every, 5)
    assert config.checkpoint_every == max(config.validate_every, min(defaults.checkpoint_every, 50))
    assert run_config("fast", 3)[1].validate_every == 1
    assert run_config("fast", 50, overrides={"validate_every": 7})[1].validate_every == 7
    augment_config = AugmentConfig(flip_p=0.0)
    assert run_config("fast", 50, augment=augment_config)[1].augment == augment_config


def test_training_job_seeds_a_new_network_and_keeps_a_base_model(cells, tmp_path):
    image, labels = cells
    _, config = run_config("fast", 5)
    arrays = ([image[None].astype(np.float32)], [labels], [None])
    before = torch.random.get_rng_state()
    first = training_job(*arrays, config, base=None, net_config=TINY, checkpoint=tmp_path / "a")
    second = training_job(*arrays, config, base=None, net_config=TINY, checkpoint=tmp_path / "b")
    assert torch.equal(torch.random.get_rng_state(), before)  # torch's global random state is untouched
    for a, b in zip(first.net.parameters(), second.net.parameters()):
        assert torch.equal(a, b)  # the initial weights follow the run's seed
    assert first.few_shot is None and first.postprocess is None and first.net.config.in_channels == 1
    base = ModelBundle(UNet(TINY), Normalization(low=2.0), PostprocessConfig(threshold=0.4))
    kept = training_job(*arrays, config, base=base, net_config=TINY, checkpoint=tmp_path / "c")
    # the run trains a copy: the base keeps its weights whatever the run does
    assert kept.net is not base.net and kept.normalization == base.normalization and kept.few_shot is None
    for a, b in zip(kept.net.parameters(), base.net.parameters()):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()
    sized = ModelBundle(UNet(TINY), object_diameter=17.0)
    recipe = training_job(*arrays, config, base=sized, net_config=TINY, checkpoint=tmp_path / "d")
    assert recipe.base is sized and recipe.few_shot.iterations == config.iterations
    two = ([arrays[0][0]] * 2, [labels] * 2, [None, None])
    with pytest.raises(ValueError, match="2 planes are annotated"):
        training_job(*two, config, base=sized, net_config=TINY, checkpoint=tmp_path / "e")


def job_on_cells(cells, config, base, tmp_path, **options):
    """A training job on the whole of the `cells` sample (image, labels), from `base`, saved to tmp_path / "m"."""
    image, labels = cells
    return training_job(
        [image[None].astype(np.float32)],
        [labels],
        [None],
        config,
        base=base,
        checkpoint=tmp_path / "m",
        device="cpu",
        **options,
    )


def test_a_few_shot_run_saves_the_channel_choice_it_trained_on(cells, tmp_path):
    """The built-in model (grey) fine-tuned on the green channel of an RGB image: the model records channel 1,
    so it is fed that channel when it segments (it recorded the base's grey: the luminance, silently)."""
    from napari_unet.channels import ChannelChoice

    image, labels = cells
    _, config = run_config("fast", 2)
    sized = ModelBundle(UNet(TINY), channels=ChannelChoice(grey=True), object_diameter=float(median_diameter(labels)))
    green = ChannelChoice(channels=(1,))
    job = job_on_cells(cells, config, sized, tmp_path, net_config=TINY, channels=green)
    for _event in run_training(job):
        pass
    folder = job.checkpoint
    assert load_model(folder).channels == green and job.trainer.bundle().channels == green
    assert sized.channels == ChannelChoice(grey=True)  # the base is unchanged


def test_step_setting_names_what_a_step_time_depends_on():
    fast_net, fast = PRESETS["fast"]
    assert step_setting(None, "fast", "cpu") == (fast_net, fast.tile_size, fast.batch_size, "cpu")
    small = step_setting(None, "fast", "cpu", {"depth": 2}, {"tile_size": 124})
    assert small[0].depth == 2 and small[1] == 124
    base = ModelBundle(UNet(TINY))
    assert step_setting(base, "fast", "cpu", {"depth": 2})[0] == base.net.config


def test_a_few_shot_runs_step_is_timed_with_the_tiles_and_batch_its_trainer_uses(cells, tmp_path):
    """The estimate timed the preset's tile and batch (252 px, 1) while a run from the built-in model trains with
    the few-shot recipe's (the model's recorded 380 px, 2 windows): it said a sixth of the time the run took."""
    image, labels = cells
    sized = ModelBundle(
        UNet(TINY), metadata={"training": {"tile_size": 92}}, object_diameter=float(median_diameter(labels))
    )
    net_config, config = run_config("fast", 1, overrides={"tile_size": 60})
    job = job_on_cells(cells, config, sized, tmp_path, net_config=net_config)
    trainer = few_shot_trainer(sized, job.images[0], job.labels[0], job.masks[0], config=job.few_shot, device="cpu")
    setting = step_setting(sized, "fast", "cpu", train_overrides={"tile_size": 60})
    assert setting == (TINY, trainer.config.tile_size, trainer.config.batch_size, "cpu") == (TINY, 92, 2, "cpu")


def test_count_tiles_and_the_scale_line_of_the_segment_dock(cells):
    image, _ = cells
    net = UNet(TINY)
    data = np.stack([image, image])[:, None]
    assert count_tiles(net, Stack(data), 32) == 2 * len(tile_grid(net, image.shape, 32))
    assert count_tiles(net, Stack(data), 32, 0.5) == 2 * len(tile_grid(net, (48, 60), 32))
    assert describe_scale(None, 2.0, estimated=True) == ""
    assert "given" in describe_scale(20.0, 1.0, estimated=False) and "not rescaled" in describe_scale(
        20.0, 1.0, estimated=False
    )
    assert describe_scale(20.0, 1.0, estimated=True, found=False).startswith("no objects found")


# ---------------------------------------------------------------------------------- the Segment dock's stack jobs


def run_to_end(generator):
    """What a generator returns once it has yielded everything (a worker's `returned`)."""
    while True:
        try:
            next(generator)
        except StopIteration as end:
            return end.value


def black_second_frame(image: np.ndarray, kind: str, tmp_path: Path) -> Stack:
    """A (T=3, C=1, H, W) stack whose middle frame is black, held as `kind`: in memory, memory-mapped (an
    uncompressed TIFF opened by the plugin's reader) or dask."""
    data = np.stack([image, np.zeros_like(image), image[::-1]])[:, None].astype(np.float32)
    if kind == "memmap":
        mapped = np.memmap(tmp_path / "stack.raw", np.float32, "w+", shape=data.shape)
        mapped[...] = data
        return Stack(mapped)
    if kind == "dask":
        import dask.array as da

        return Stack(da.from_array(data, chunks=(1, 1, 48, 48)))
    return Stack(data)


@pytest.mark.parametrize("kind", ["memory", "memmap", "dask"])
@pytest.mark.parametrize(("factor", "tta"), [(1.0, False), (0.5, False), (1.0, True)])
def test_a_black_frame_of_a_stack_is_left_empty_whatever_array_holds_it(cells, tmp_path, kind, factor, tta):
    """A black frame of a memory-mapped stack (an uncompressed TIFF) failed the whole run as soon as the plane was
    read whole ("image is constant"), when rescaled or with test-time augmentation, and was predicted (not empty)
    at scale 1: every kind of plane is now left empty, the others segmented as in memory."""
    image, _ = cells
    torch.manual_seed(0)
    bundle = ModelBundle(UNet(TINY).eval())
    config = PostprocessConfig(threshold=0.5, min_size=1)
    device = torch.device("cpu")
    stack = black_second_frame(image, kind, tmp_path)
    updates = list(stream_tiles(bundle, stack, 32, device, config, factor, tta=tta))
    assert updates[-1].done == updates[-1].total == count_tiles(bundle.net, stack, 32, factor, tta=tta)
    black = [u for u in updates if u.plane == (1,)]
    assert black and all(not u.probs_fg.any() and not u.labels.any() for u in black)
    expected = list(
        stream_tiles(bundle, black_second_frame(image, "memory", tmp_path), 32, device, config, factor, tta)
    )
    for update, reference in zip(updates, expected):
        np.testing.assert_array_equal(update.probs_fg, reference.probs_fg)
    assert any(u.probs_fg.any() for u in updates if u.plane == (0,))


@pytest.mark.parametrize("kind", ["memmap", "dask"])
@pytest.mark.parametrize(("factor", "tta"), [(1.0, False), (0.5, False), (1.0, True)])
def test_each_plane_of_a_lazy_stack_is_sampled_once(cells, tmp_path, monkeypatch, kind, factor, tta):
    """The bounded sample of a lazy plane (read from disk) serves both the black-frame check and the percentiles:
    each plane's is read once, not twice."""
    from napari_unet import io

    image, _ = cells
    reads = []
    strided_sample = io._strided_sample
    monkeypatch.setattr(io, "_strided_sample", lambda *args: reads.append(1) or strided_sample(*args))
    stack = black_second_frame(image[:64, :64], kind, tmp_path)
    config = PostprocessConfig(threshold=0.5, min_size=1)
    list(stream_tiles(ModelBundle(UNet(TINY).eval()), stack, 32, torch.device("cpu"), config, factor, tta=tta))
    assert len(reads) == 3


@pytest.mark.parametrize("kind", ["memmap", "dask"])
def test_the_uncertainty_of_a_black_frame_is_zero_and_comes_plane_by_plane(cells, tmp_path, kind):
    from napari_unet.jobs.segment import stream_uncertainty

    image, _ = cells
    torch.manual_seed(0)
    bundle = ModelBundle(UNet(depth=2, base_channels=4, dropout=0.0))
    stack = black_second_frame(image[:64, :64], kind, tmp_path)
    planes = stream_uncertainty(bundle, stack, 1.0, torch.device("cpu"))
    assert [next(planes) for _ in range(3)] == [1, 2, 3]  # a worker can stop after each plane
    with pytest.raises(StopIteration) as end:
        next(planes)
    values = end.value.value
    assert values.shape == (3, 64, 64) and not values[1].any() and values[0].any()
    np.testing.assert_array_equal(values, run_to_end(stream_uncertainty(bundle, stack, 1.0, torch.device("cpu"))))


def test_the_object_diameter_of_a_stack_is_estimated_on_its_first_frame_that_is_not_black():
    """The dock estimated the diameter on the first plane: a stack with a black first frame found no object and was
    segmented at the image's scale. It now uses the first plane that is not constant, as `predict` does."""
    from test_diameter import bundle as threshold_bundle
    from test_diameter import disks

    from napari_unet.jobs.segment import estimate_stack_diameter

    model = threshold_bundle(20.0)
    image = (disks((200, 200), 16, 60) > 0).astype(np.float32) * 100
    stack = Stack(np.stack([np.zeros_like(image), image, image])[:, None])
    device = torch.device("cpu")
    assert model.estimate_diameter(stack.plane((0,)), device=device) is None  # what the first plane gives
    estimate = estimate_stack_diameter(model, stack, device)
    assert estimate == model.estimate_diameter(image, device=device) == pytest.approx(32, rel=0.15)


def test_a_retune_changes_only_the_setting_the_user_changed():
    """A model loaded after a run shows its own post-processing in the controls; touching one control then
    retuned the run's result with all of them. Only the changed setting now goes into the result's."""
    from napari_unet.jobs.segment import retuned_config

    result = PostprocessConfig(threshold=0.5, min_size=4)
    shown = PostprocessConfig(threshold=0.3, min_size=40, flood=True)  # the other model's, in the controls
    nudged = retuned_config(result, shown, PostprocessConfig(threshold=0.3, min_size=41, flood=True))
    assert nudged == PostprocessConfig(threshold=0.5, min_size=41)
    assert retuned_config(result, shown, shown) == result


def update_of(plane: tuple[int, ...], region: tuple[slice, slice], value: int) -> TileUpdate:
    size = (region[0].stop - region[0].start, region[1].stop - region[1].start)
    return TileUpdate(plane, region, np.zeros(size, np.float32), np.full(size, value, np.int32), 1, 1)


def test_preview_labels_notice_painting_during_the_stream_and_keep_it():
    """Corrections painted while the tiles streamed were overwritten by the whole-image result: the tiles' writes
    are now recorded, so painting in a finished tile, or where a tile has not come yet, is noticed (and kept)."""
    from napari_unet.jobs.segment import PreviewLabels

    top, bottom, whole = (slice(0, 4), slice(0, 8)), (slice(4, 8), slice(0, 8)), (slice(0, 8), slice(0, 8))
    untouched = PreviewLabels(np.zeros((2, 8, 8), np.int32))
    for update in (update_of((0,), top, 1), update_of((0,), bottom, 2), update_of((0,), whole, 3)):
        assert untouched.write(update)  # a whole (rescaled) plane over its own tiles
    assert (untouched.labels[0] == 3).all() and not untouched.edited()

    painted = PreviewLabels(np.zeros((2, 8, 8), np.int32))
    assert painted.write(update_of((0,), top, 1)) and not painted.edited()
    painted.labels[0, 1, 1] = 9  # a correction in plane 0, written straight into the array
    assert painted.write(update_of((1,), top, 5))  # the other plane goes on
    assert painted.edited()
    assert painted.write(update_of((0,), bottom, 2))
    assert not painted.write(update_of((0,), whole, 3))  # the whole plane would overwrite the correction
    assert painted.labels[0, 1, 1] == 9 and painted.labels[0, 0, 0] == 1 and painted.edited()

    ahead = PreviewLabels(np.zeros((1, 8, 8), np.int32))
    ahead.labels[0, 6, 6] = 9  # painted where no tile came yet
    assert not ahead.write(update_of((0,), bottom, 2)) and ahead.labels[0, 6, 6] == 9 and ahead.edited()
