"""The trainer: the loss falls, stopping keeps a loadable model, a resumed run equals an uninterrupted one."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.model import UNet
from napari_unet.modelfile import load_model
from napari_unet.postprocess import GROWTH_CANDIDATES, SEED_CANDIDATES
from napari_unet.synthetic import make_cells
from napari_unet.training import FLOOD_THRESHOLD, PRESETS, Sample, TrainConfig, Trainer, TrainingDiverged, preset


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [Sample(*make_cells((128, 128), seed=seed)) for seed in range(2)]


def tiny(config: TrainConfig | None = None, **overrides) -> tuple[UNet, TrainConfig]:
    net_config, train_config = preset("fast", tile_size=92, validate_every=1000, checkpoint_every=1000)
    torch.manual_seed(0)
    return UNet(net_config, depth=3, base_channels=8), replace(config or train_config, **overrides)


def final_weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_loss_falls_on_synthetic_cells(samples):
    model, config = tiny(iterations=60, learning_rate=3e-3)
    trainer = Trainer(model, config, samples[:1], samples[1:], device="cpu")
    events = list(trainer.run())
    losses = [e.loss for e in events if e.kind == "step"]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.7 * np.mean(losses[:10])
    assert events[-1].kind == "done" and events[-2].kind == "validation"
    assert 0.0 <= events[-2].val_score <= 1.0


def test_stopping_keeps_a_loadable_model(samples, tmp_path):
    model, config = tiny(iterations=50)
    trainer = Trainer(model, config, samples, device="cpu", checkpoint=tmp_path / "model")
    run = trainer.run()
    for event in itertools.islice(run, 3):
        assert event.kind == "step"
    run.close()  # the user pressed Stop
    saved = load_model(tmp_path / "model")
    assert saved.metadata["iterations"] == 3
    for name, value in saved.net.state_dict().items():
        assert torch.equal(value, trainer.model.state_dict()[name].cpu().contiguous()), name


def test_resumed_run_equals_an_uninterrupted_one(samples, tmp_path):
    model, config = tiny(iterations=6, checkpoint_every=2)
    uninterrupted = Trainer(model, config, samples, device="cpu")
    list(uninterrupted.run())

    model, config = tiny(iterations=6, checkpoint_every=2)
    first = Trainer(model, config, samples, device="cpu", checkpoint=tmp_path / "run")
    run = first.run()
    next(e for e in run if e.kind == "step" and e.iteration == 3)
    run.close()
    torch.manual_seed(1234)  # disturb the global state: resume must restore everything itself
    resumed = Trainer.resume(tmp_path / "run", samples, device="cpu")
    assert resumed.iteration == 3
    list(resumed.run())
    expected, got = final_weights(uninterrupted), final_weights(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_fine_tuning_continues_from_a_saved_model(samples, tmp_path):
    model, config = tiny(iterations=2)
    Trainer(model, config, samples, device="cpu", checkpoint=tmp_path / "base").run().close()
    list(Trainer(model, config, samples, device="cpu", checkpoint=tmp_path / "base").run())
    base = load_model(tmp_path / "base")
    tuned = Trainer(base.net, replace(config, iterations=3), samples, device="cpu", checkpoint=tmp_path / "tuned")
    list(tuned.run())
    assert load_model(tmp_path / "tuned").metadata["iterations"] == 3
    # from the saved weights: 3 steps of Adam (1e-3) move each weight by about 1e-3 (measured 1.2e-3); a freshly
    # initialised network's weights are up to 2 away
    saved, after = load_model(tmp_path / "base").net.state_dict(), load_model(tmp_path / "tuned").net.state_dict()
    moved = max((after[name] - saved[name]).abs().max().item() for name in saved)
    assert 0 < moved < 1e-2


def test_diverging_loss_stops_with_a_clear_error_and_keeps_the_last_good_state(samples, tmp_path):
    model, config = tiny(iterations=50, optimizer="sgd", learning_rate=1e12, momentum=0.9, checkpoint_every=1)
    trainer = Trainer(model, config, samples, device="cpu", checkpoint=tmp_path / "model")
    with pytest.raises(TrainingDiverged, match="lower learning rate"):
        list(trainer.run())
    saved = load_model(tmp_path / "model")
    assert all(torch.isfinite(v).all() for v in saved.net.state_dict().values())


def test_time_budget_stops_early(samples):
    model, config = tiny(iterations=1000, time_budget=0.0)
    steps = [e for e in Trainer(model, config, samples, device="cpu").run() if e.kind == "step"]
    assert len(steps) == 1


def test_sparse_annotations_only_train_where_annotated(samples):
    image, labels = samples[0].image, samples[0].labels
    mask = np.zeros(labels.shape, bool)
    mask[:40, :40] = True
    model, config = tiny(iterations=1)
    trainer = Trainer(model, config, [Sample(image, labels, mask)], device="cpu")
    weights = trainer.train[0].weights
    assert (weights[~mask] == 0).all() and (weights[mask] > 0).all()
    centres = np.unravel_index(trainer.train[0].annotated, labels.shape)
    assert centres[0].max() < 40 and centres[1].max() < 40


def test_bad_inputs_are_clear_errors(samples):
    model, config = tiny()
    image, labels = samples[0].image, samples[0].labels
    with pytest.raises(ValueError, match="no training samples"):
        Trainer(model, config, [], device="cpu")
    with pytest.raises(ValueError, match="must have the image's shape"):
        Trainer(model, config, [Sample(image, labels[:-1])], device="cpu")
    with pytest.raises(ValueError, match="annotations are empty"):
        Trainer(model, config, [Sample(image, np.zeros_like(labels), np.zeros(labels.shape, bool))], device="cpu")
    with pytest.raises(ValueError, match=r"with C = 1"):
        Trainer(model, config, [Sample(np.stack([image, image]), labels)], device="cpu")
    with pytest.raises(ValueError, match="unknown preset"):
        preset("slow")


def test_paper_preset_is_the_paper():
    net, train = PRESETS["paper"]
    model = UNet(net)
    assert (net.depth, net.base_channels, net.padding, net.dropout) == (5, 64, "valid", 0.5)
    assert (train.optimizer, train.momentum, train.batch_size) == ("sgd", 0.99, 1)
    assert model.output_shape((train.tile_size, train.tile_size)) == (388, 388)
    assert train.augment.elastic_grid == 3 and train.augment.elastic_sigma == 10.0


def test_config_round_trips_through_json_types():
    _, config = preset("fast")
    import json

    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_the_default_config_is_the_fast_preset_and_the_paper_keeps_its_weight_map():
    assert TrainConfig() == PRESETS["fast"][1] == preset()[1]
    fast, paper = TrainConfig(), PRESETS["paper"][1]
    assert (fast.w0, fast.border, fast.class_weights) == (0.0, 0, "none")  # plain cross-entropy
    assert (paper.w0, paper.sigma, paper.border, paper.class_weights) == (10.0, 5.0, 1, "balanced")


def test_a_completed_run_calibrates_the_growth_on_the_annotated_cells(samples, tmp_path, monkeypatch):
    import napari_unet.training as training

    seen = []

    def spy(probs, cells, base):
        seen.append([np.unique(c[c > 0]).size for c in cells])
        return replace(base, grow_threshold=0.2), {"off": 0.5, "0.2": 0.6}

    monkeypatch.setattr(training, "calibrate_growth", spy)
    image, labels = make_cells((128, 128), seed=7)
    few = np.isin(labels, [1, 2, 3])  # three annotated cells; the rest of the image is not annotated
    sparse = Sample(image, np.where(few, labels, 0), mask=few)
    # a border term to give back (the last step is checkpointed before calibrating)
    model, config = tiny(iterations=4, checkpoint_every=2, w0=10.0, border=1)
    trainer = Trainer(model, config, [sparse], device="cpu", checkpoint=tmp_path / "model")
    list(trainer.run())
    assert seen == [[3]]  # scored on the annotated cells only
    saved = load_model(tmp_path / "model")
    assert saved.postprocess.grow_threshold == 0.2
    assert saved.metadata["growth_calibration"]["chosen"] == 0.2

    seen.clear()
    model, config = tiny(iterations=50)
    run = Trainer(model, config, samples, device="cpu").run()
    for _ in itertools.islice(run, 2):
        pass
    run.close()  # a stopped run keeps its post-processing as it was
    model, config = tiny(iterations=2, calibrate_growth=False)
    list(Trainer(model, config, samples, device="cpu").run())
    binary = Sample(samples[0].image, (samples[0].labels > 0).astype(np.uint8))
    model, config = tiny(iterations=2, w0=10.0, border=1)
    unchanged = Trainer(model, config, [binary], device="cpu")
    list(unchanged.run())
    assert seen == [] and unchanged.postprocess.grow_threshold is None
    model, config = tiny(iterations=2)  # plain cross-entropy: the outlines are the network's, nothing to grow
    plain = Trainer(model, config, [sparse], device="cpu")
    list(plain.run())
    assert seen == [] and plain.postprocess.grow_threshold is None and plain.growth_calibration is None


def test_fully_annotated_instance_labels_fit_threshold_and_watershed_too(samples, monkeypatch):
    import napari_unet.training as training

    seen, growth, seeds = [], [], []

    def spy(probs, truths, base, grow_thresholds, seed_thresholds):
        seen.append([np.unique(t[t > 0]).size for t in truths])
        growth.append(tuple(grow_thresholds))
        seeds.append(tuple(seed_thresholds))
        return replace(base, threshold=0.7, watershed=True), {"ap50": 0.9, "map": 0.6}

    monkeypatch.setattr(training, "tune_config", spy)
    model, config = tiny(iterations=2)
    trainer = Trainer(model, config, samples, device="cpu")
    list(trainer.run())
    assert seen == [[np.unique(s.labels[s.labels > 0]).size for s in samples]]  # every cell of every image
    assert (trainer.postprocess.threshold, trainer.postprocess.watershed) == (0.7, True)
    assert trainer.growth_calibration["by"] == "map, ap50" and trainer.bundle().metadata["growth_calibration"]
    assert growth == [(None,)]  # plain cross-entropy: no growth to fit
    assert seeds == [SEED_CANDIDATES]  # seeds from the cells' cores are tried
    trainer.calibrate_growth(seed_thresholds=())  # e.g. a benchmark's reference: objects seeded by the mask
    assert seeds[-1] == ()
    model, config = tiny(iterations=2, w0=10.0, border=1)
    list(Trainer(model, config, samples, device="cpu").run())
    assert growth[-1] == GROWTH_CANDIDATES  # the border term's caution and the cut border are given back

    binary = Sample(samples[0].image, (samples[0].labels > 0).astype(np.uint8))
    model, config = tiny(iterations=1)
    nuclei = Trainer(model, config, [binary], device="cpu").postprocess
    assert nuclei.border_width == 0 and not nuclei.flood


def test_membrane_masks_make_a_model_that_floods_its_cells_from_sure_seeds(samples, membrane_mask):
    """Binary masks whose cells tile the image (ISBI 2012's membranes) are post-processed by a flood from seeds
    above FLOOD_THRESHOLD; one image whose mask does not tile is enough to keep the plain threshold."""
    image = samples[0].image
    membranes = Sample(image, membrane_mask(image.shape, 12, seed=3) * 255)
    model, config = tiny(iterations=1)
    postprocess = Trainer(model, config, [membranes], device="cpu").postprocess
    assert postprocess.flood and postprocess.threshold == FLOOD_THRESHOLD and postprocess.border_width == 0
    nuclei = Sample(image, (samples[0].labels > 0).astype(np.uint8))
    assert not Trainer(model, config, [membranes, nuclei], device="cpu").postprocess.flood


def test_a_flooding_model_fits_its_seed_threshold_on_the_training_masks(samples, membrane_mask, monkeypatch):
    """At the end of a run, the seeds of a model that floods are fitted on the masks annotated everywhere (not
    on a partly annotated one), recorded in the metadata; without `calibrate_growth`, FLOOD_THRESHOLD stays."""
    import napari_unet.training as training

    image = samples[0].image
    masks = [membrane_mask(image.shape, 12, seed=i) for i in range(3)]
    partial = np.ones(image.shape, bool)
    partial[:, :4] = False  # a strip too narrow to stop the cells tiling the image
    train = [Sample(image, masks[0]), Sample(image, masks[1]), Sample(image, masks[2], mask=partial)]
    seen = []

    def spy(probs, truths, base):
        seen.append([t.copy() for t in truths])
        return replace(base, threshold=0.85), {"0.6": 0.7, "0.85": 0.8}

    monkeypatch.setattr(training, "fit_flood_seeds", spy)
    model, config = tiny(iterations=1)
    trainer = Trainer(model, config, train, device="cpu")
    kinds = [event.kind for event in trainer.run()]
    assert "calibration" in kinds and len(seen) == 1 and len(seen[0]) == 2
    assert all(np.array_equal(t != 0, m != 0) for t, m in zip(seen[0], masks))
    assert trainer.postprocess.flood and trainer.postprocess.threshold == 0.85
    record = trainer.bundle().metadata["growth_calibration"]
    assert (record["by"], record["chosen"], record["images"]) == ("vrand", 0.85, 2)
    model, config = tiny(iterations=1, calibrate_growth=False)
    unfitted = Trainer(model, config, train, device="cpu")
    list(unfitted.run())
    assert len(seen) == 1 and unfitted.postprocess.threshold == FLOOD_THRESHOLD


def test_a_real_seed_fit_chooses_the_best_candidate_that_leaves_seeds(samples, membrane_mask, monkeypatch):
    """The fit on what the network predicts for the training mask: here a map whose membranes are drawn faintly
    (probability of cell interior 0.75 on them, 0.95 inside the cells), so that seeds at 0.5-0.7 merge every
    cell and 0.8-0.95 part them; FLOOD_THRESHOLD 0.6 is not kept. A network sure of nothing (0.5 everywhere)
    leaves no seed at any candidate above it: the threshold stays where it was rather than empty labels."""
    from scipy import ndimage

    image = samples[0].image
    mask = membrane_mask(image.shape, 12, seed=0)
    faint = ndimage.gaussian_filter(np.where(mask, 0.95, 0.75).astype(np.float32), 1.0)
    model, config = tiny(iterations=1)
    trainer = Trainer(model, config, [Sample(image, mask)], device="cpu")
    monkeypatch.setattr(trainer, "_predict", lambda image: (1 - faint, faint))
    scores = trainer.calibrate_growth()
    assert trainer.postprocess.threshold >= 0.8 and scores["0.6"] < scores[str(trainer.postprocess.threshold)]
    assert scores[str(trainer.postprocess.threshold)] == max(scores.values())
    unsure = Trainer(model, config, [Sample(image, mask)], device="cpu")
    monkeypatch.setattr(
        unsure, "_predict", lambda image: (np.full(image.shape[-2:], 0.5), np.full(image.shape[-2:], 0.5))
    )
    assert list(unsure.calibrate_growth()) == [str(FLOOD_THRESHOLD)] and unsure.postprocess.threshold == FLOOD_THRESHOLD


def test_training_leaves_the_process_random_state_alone_and_validates_on_the_training_samples_when_asked(samples):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    net_config, config = preset("fast", tile_size=92, iterations=3, validate_every=1000, checkpoint_every=1000, seed=5)
    model = UNet(net_config, depth=3, base_channels=8, dropout=0.5)  # dropout draws torch random numbers
    torch.manual_seed(123)
    trainer = Trainer(model, config, samples[:1], validation=None, device="cpu")
    list(trainer.run())
    assert torch.equal(torch.rand(3), expected_next), "the process's torch generator was reseeded or advanced"
    assert trainer.validation is trainer.train  # None: the training samples, prepared once
    assert Trainer(model, config, samples[:1], device="cpu").validation == []  # the default: no validation

    # the dropout masks follow the run's seed, not the process's state
    def run_from(process_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = UNet(net_config, depth=3, base_channels=8, dropout=0.5)
        torch.manual_seed(process_seed)
        trained = Trainer(net, config, samples[:1], device="cpu")
        list(trained.run())
        return final_weights(trained)

    first, second = run_from(1), run_from(2)
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_cosine_schedule_follows_the_time_budget_when_it_ends_first():
    from napari_unet.train_config import learning_rate_schedule

    _, config = tiny(iterations=1000, time_budget=10.0)
    elapsed = [0.0]
    factor = learning_rate_schedule(config, lambda: elapsed[0])
    assert factor(0) == pytest.approx(0.1)  # the warm-up starts at a tenth
    elapsed[0] = 0.1  # 1 % of the budget: half-way through the default 2 % warm-up
    assert factor(1) == pytest.approx(0.55 * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * 0.01))))
    elapsed[0] = 5.0  # half the time budget, 1 % of the iterations
    assert factor(10) == pytest.approx(0.05 + 0.95 * 0.5)
    elapsed[0] = 20.0
    assert factor(11) == pytest.approx(0.05)
    _, no_budget = tiny(iterations=1000)
    assert learning_rate_schedule(no_budget, lambda: 1e9)(500) == pytest.approx(0.05 + 0.95 * 0.5)


def test_warm_up_ramps_a_constant_schedule_and_can_be_turned_off():
    from napari_unet.train_config import learning_rate_schedule

    _, config = tiny(iterations=100, schedule="constant", warmup=0.1)
    factor = learning_rate_schedule(config, lambda: 0.0)
    assert [factor(step) for step in (0, 5, 10, 50)] == pytest.approx([0.1, 0.55, 1.0, 1.0])
    _, plain = tiny(iterations=100, schedule="constant", warmup=0.0)
    assert learning_rate_schedule(plain, lambda: 0.0)(0) == 1.0
    with pytest.raises(ValueError, match="warmup"):
        tiny(warmup=1.5)


def test_a_run_for_a_time_budget_trains_until_the_budget_not_the_presets_steps(samples, monkeypatch):
    import time

    from napari_unet.train_config import UNTIL_BUDGET, for_time_budget

    clock = itertools.count()
    monkeypatch.setattr(time, "perf_counter", lambda: 0.01 * next(clock))  # a machine of steady speed
    model, config = tiny(iterations=2)
    config = for_time_budget(config, 1.0)
    trainer = Trainer(model, config, samples, device="cpu")
    steps = [event for event in trainer.run() if event.kind == "step"]
    assert config.iterations == UNTIL_BUDGET
    assert len(steps) > 2 and trainer.elapsed >= 1.0  # the preset's 2 steps did not end it
    assert steps[-1].learning_rate < 0.1 * config.learning_rate  # the cosine reached its end with the budget


def test_a_time_budget_counts_the_validations_and_checkpoints_not_only_the_steps(samples, tmp_path, monkeypatch):
    """The budget bounds the run's time: a step that ends past it is the last, whatever its validations and
    checkpoints took; `elapsed` (the summary's time, the schedule's clock) is that time. Steps take 0.1 s,
    validations (every 2 steps) 1 s, checkpoints (every 3) 0.5 s, on a clock that only they advance."""
    import time

    from napari_unet.train_config import for_time_budget, learning_rate_schedule

    now = [0.0]
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def taking(seconds, function):
        def wrapped(*args, **kwargs):
            now[0] += seconds
            return function(*args, **kwargs)

        return wrapped

    monkeypatch.setattr(Trainer, "_step", taking(0.1, Trainer._step))
    monkeypatch.setattr(Trainer, "validate", taking(1.0, Trainer.validate))
    monkeypatch.setattr(Trainer, "_save_during_run", taking(0.5, Trainer._save_during_run))
    model, config = tiny(validate_every=2, checkpoint_every=3, calibrate_growth=False)
    config = for_time_budget(config, 3.0)
    trainer = Trainer(model, config, samples[:1], samples[1:], device="cpu", checkpoint=tmp_path / "m")
    steps = []
    for event in trainer.run():
        if event.kind == "step":
            steps.append((event, now[0]))
    # 0.1, 0.2 (+1 validation), 1.3 (+0.5 checkpoint), 1.9 (+1 validation), 3.0: the budget is spent
    assert [clock for _, clock in steps] == pytest.approx([0.1, 0.2, 1.3, 1.9, 3.0])
    assert [event.elapsed for event, _ in steps] == pytest.approx([0.1, 0.2, 1.3, 1.9, 3.0])
    assert trainer.elapsed == pytest.approx(3.0)  # the fit and the save at the end come after the budget
    # the schedule's clock is that time too: the rate of a step is set by the time up to the step before it
    factor = learning_rate_schedule(config, lambda: steps[-2][0].elapsed)(5)
    assert steps[-1][0].learning_rate == pytest.approx(config.learning_rate * factor)


def test_the_trainer_applies_the_models_polarity_to_its_samples(samples):
    from napari_unet.modelfile import Normalization

    model, config = tiny(iterations=1)
    image = np.asarray(samples[0].image, np.float32)
    inverted = Trainer(model, config, samples[:1], device="cpu", normalization=Normalization(invert=True))
    np.testing.assert_allclose(inverted.train[0].image[0], 1 - image)
    auto = Trainer(model, config, samples[:1], device="cpu", normalization=Normalization(invert="auto"))
    np.testing.assert_allclose(auto.train[0].image[0], image)  # dark background: kept as it is
