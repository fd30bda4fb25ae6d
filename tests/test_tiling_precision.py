"""Tiled inference in bf16 and with the GPU's pipelining (both run here on the CPU).

Stated tolerances (a depth-3 net whose last layer is scaled so its probabilities span [0.1, 0.8]):
- bf16 tiled vs bf16 whole image: within 1e-3 (on the CPU measured bit-equal: every output pixel is computed
  from the same inputs in the same order; a GPU's convolution algorithms may round differently);
- bf16 vs fp32: within 0.05 of a probability at every pixel, 0.005 on average (measured 0.011 and 0.0011);
- fp32 tiled vs whole: float rounding (tests/test_tiling.py), and pipelined == serial exactly.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from napari_unet.model import UNet
from napari_unet.synthetic import make_cells
from napari_unet.tiling import iter_predict_tiles, predict_tiled, predict_whole, prepare_model, tile_grid


@pytest.fixture(scope="module")
def model() -> UNet:
    torch.manual_seed(0)
    net = UNet(depth=3, base_channels=8)
    last = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight *= 30  # confident outputs: probabilities across [0, 1], not all near 0.5
    return net


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_cells((96, 112), seed=0)[0]


def test_bf16_tiled_equals_bf16_whole_within_the_stated_tolerance(model, image):
    tiled = predict_tiled(model, image, 32, device="cpu", batch_size=3, precision="bf16")
    whole = predict_whole(model, image, precision="bf16")
    np.testing.assert_allclose(tiled, whole, atol=1e-3, rtol=0)


def test_bf16_is_close_to_fp32_and_really_bf16(model, image):
    fp32 = predict_tiled(model, image, 40, device="cpu", precision="fp32")
    bf16 = predict_tiled(model, image, 40, device="cpu", precision="bf16")
    difference = np.abs(bf16 - fp32)
    assert difference.max() <= 0.05 and difference.mean() <= 0.005
    assert difference.max() > 1e-4  # the arithmetic did change
    assert fp32[1].max() - fp32[1].min() > 0.5  # a test on confident probabilities


def test_auto_is_fp32_on_the_cpu(model, image):
    np.testing.assert_array_equal(
        predict_tiled(model, image, 40, device="cpu", precision="auto"), predict_tiled(model, image, 40, device="cpu")
    )


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_the_pipelined_loop_equals_the_serial_one(model, image, batch_size):
    device = torch.device("cpu")
    prepare_model(model, device)
    grid = tile_grid(model, image.shape, 32)
    serial = list(iter_predict_tiles(model, image[None], grid, device, batch_size, pipelined=False))
    pipelined = list(iter_predict_tiles(model, image[None], grid, device, batch_size, pipelined=True))
    assert [r.tile for r in pipelined] == [r.tile for r in serial] == list(grid)
    for a, b in zip(pipelined, serial):
        np.testing.assert_array_equal(a.probs, b.probs)


def test_stopping_the_pipelined_loop_early(model, image):
    """The first tile comes while the loop is one batch ahead (2 forward passes, at most 3 batches of windows
    read, of 6); closing the generator stops it there and shuts its reader thread down."""
    device = torch.device("cpu")
    grid = tile_grid(model, image.shape, 32)
    forwards, readers = [], []  # the batch size of each forward pass, the thread that read each window
    hook = model.register_forward_hook(lambda module, args, output: forwards.append(args[0].shape[0]))

    def count(window: np.ndarray) -> np.ndarray:
        readers.append(threading.current_thread())
        return window

    threads = set(threading.enumerate())
    try:
        tiles = iter_predict_tiles(
            prepare_model(model, device), image[None], grid, device, 2, preprocess=count, pipelined=True
        )
        first = next(tiles)
        assert first.tile.index == 0 and len(grid) == 12
        assert forwards == [2, 2] and 4 <= len(readers) <= 6
        assert threading.current_thread() not in readers  # read on the reader thread
        tiles.close()  # the reader thread is shut down with the generator
        assert forwards == [2, 2] and len(readers) <= 6
        assert not set(threading.enumerate()) - threads  # no thread left running
    finally:
        hook.remove()  # the module-scoped model is shared


def test_an_unknown_precision_is_a_clear_error(model, image):
    with pytest.raises(ValueError, match="precision must be one of auto, fp32, bf16"):
        predict_tiled(model, image, 40, device="cpu", precision="fp16")
