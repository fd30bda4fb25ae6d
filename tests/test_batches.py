"""The trainer's batched path (windows cut and warped a batch at a time, on the training device) trains as the
per-sample path does, resumes exactly, and bf16 autocast trains on the CPU.

Stated tolerance between the two paths: the same random draws give windows that agree to 1e-3 (see
tests/test_augment_batch.py), so after 3 steps of Adam from the same weights the losses agree within 1e-3 and
the weights within 1e-4 (Adam's first steps move each weight by about the learning rate, 1e-3, whatever the
gradient's size: a difference in the sign of a tiny gradient would show as ~1e-3, which did not happen).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from napari_unet.batches import WindowSource, batched_windows, draw_batch, per_sample_batch, prepare_sample
from napari_unet.model import UNet
from napari_unet.modelfile import Normalization
from napari_unet.synthetic import make_cells
from napari_unet.tiling import read_window
from napari_unet.training import Sample, TrainConfig, Trainer, preset


@pytest.fixture(scope="module")
def samples() -> list[Sample]:
    return [Sample(*make_cells((96, 112), seed=seed)) for seed in range(2)]


def tiny(**overrides) -> tuple[UNet, TrainConfig]:
    net_config, config = preset("fast", tile_size=60, validate_every=1000, checkpoint_every=1000, batch_size=3)
    torch.manual_seed(0)
    return UNet(net_config, depth=3, base_channels=4), replace(config, **overrides)


def weights_of(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_the_window_source_cuts_what_read_window_reads(samples):
    prepared = [prepare_sample(s, "sample", 1, Normalization(), TrainConfig()) for s in samples]
    source = WindowSource(prepared, torch.device("cpu"))
    which = np.array([0, 1, 1, 0])
    origins = np.array([[-30, -5], [50, 70], [-100, 200], [10, 20]])  # outside the image: mirrored
    image, labels = source.cut(which, origins, 40)
    for i, (index, origin) in enumerate(zip(which, origins)):
        p = prepared[index]
        np.testing.assert_array_equal(image[i].numpy(), read_window(p.image, tuple(origin), (40, 40)))
        np.testing.assert_array_equal(labels[i, 0].numpy(), read_window(p.target[None], tuple(origin), (40, 40))[0])
        np.testing.assert_array_equal(labels[i, 1].numpy(), read_window(p.weights[None], tuple(origin), (40, 40))[0])


def test_both_paths_draw_the_same_windows(samples):
    """The same random numbers, in order, and the same windows: the batched path's windows, cut and augmented
    from its plan, are the per-sample path's (within the batched augmentation's tolerance, as in
    tests/test_augment_batch.py: images to 1e-3, target and weights on all but 0.1% of the pixels)."""
    prepared = [prepare_sample(s, "sample", 1, Normalization(), TrainConfig()) for s in samples]
    config = TrainConfig().augment
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    expected = per_sample_batch(rng_a, prepared, 5, 44, config)
    plan = draw_batch(rng_b, prepared, 5, 44, config)
    assert rng_a.bit_generator.state == rng_b.bit_generator.state
    assert (plan.origins[:, 0] != plan.origins[:, 1]).all()  # a window read at (x, y) would differ
    source = WindowSource(prepared, torch.device("cpu"))
    image, target, weights = batched_windows(source, plan, 44, 0, 44, torch.contiguous_format)
    for i, (image_i, target_i, weights_i) in enumerate(expected):
        np.testing.assert_allclose(image[i].numpy(), image_i, atol=1e-3, rtol=0, err_msg=f"window {i}")
        assert np.mean(target[i].numpy() != target_i) <= 1e-3, f"window {i}"
        assert np.mean(~np.isclose(weights[i].numpy(), weights_i, atol=1e-4)) <= 1e-3, f"window {i}"


def test_the_batched_path_trains_as_the_per_sample_path(samples):
    results = {}
    for mode in ("per-sample", "batched"):
        model, config = tiny(iterations=3, augmentation=mode)
        trainer = Trainer(model, config, samples, device="cpu")
        assert trainer.batched == (mode == "batched")
        results[mode] = ([e.loss for e in trainer.run() if e.kind == "step"], weights_of(trainer))
    (losses_a, weights_a), (losses_b, weights_b) = results["per-sample"], results["batched"]
    np.testing.assert_allclose(losses_b, losses_a, atol=1e-3)
    for name in weights_a:
        torch.testing.assert_close(weights_b[name], weights_a[name], rtol=0, atol=1e-4, msg=name)


def test_auto_is_per_sample_on_one_cpu_process(samples):
    model, config = tiny(iterations=1)
    assert not Trainer(model, config, samples, device="cpu").batched


def test_a_resumed_batched_run_equals_an_uninterrupted_one(samples, tmp_path):
    model, config = tiny(iterations=5, checkpoint_every=2, augmentation="batched")
    uninterrupted = Trainer(model, config, samples, device="cpu")
    list(uninterrupted.run())
    model, config = tiny(iterations=5, checkpoint_every=2, augmentation="batched")
    first = Trainer(model, config, samples, device="cpu", checkpoint=tmp_path / "run")
    run = first.run()
    next(e for e in run if e.kind == "step" and e.iteration == 3)  # the 4th batch is already prefetched
    run.close()
    resumed = Trainer.resume(tmp_path / "run", samples, device="cpu")
    list(resumed.run())
    expected, got = weights_of(uninterrupted), weights_of(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_bf16_trains_on_the_cpu_as_fp32_does(samples):
    """bf16 autocast (8 bits of mantissa) follows fp32 over the first steps: losses within 5%."""
    runs = {}
    for precision in ("fp32", "bf16"):
        model, config = tiny(iterations=4, precision=precision, augmentation="batched")
        trainer = Trainer(model, config, samples, device="cpu")
        assert trainer.precision == precision
        runs[precision] = ([e.loss for e in trainer.run() if e.kind == "step"], weights_of(trainer))
    (fp32, weights32), (bf16, weights16) = runs["fp32"], runs["bf16"]
    np.testing.assert_allclose(bf16, fp32, rtol=0.05)
    assert all(w.dtype == torch.float32 for w in weights16.values())  # autocast: the weights stay fp32
    assert any(not torch.equal(weights16[k], weights32[k]) for k in weights32)  # bf16 did run


def test_compile_falls_back_cleanly(samples, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken)
    model, config = tiny(iterations=2, compile=True)
    with pytest.warns(RuntimeWarning, match="torch.compile failed"):
        events = list(Trainer(model, config, samples, device="cpu").run())
    assert events[-1].kind == "done"


def test_new_options_are_checked():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="augmentation"):
        TrainConfig(augmentation="gpu")
