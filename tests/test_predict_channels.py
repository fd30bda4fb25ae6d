"""`predict` with a channel choice (a grey model such as the built-in `nuclei`, --grey, --channels): the choice is
applied plane by plane, so a memory-mapped stack is never converted whole, with the labels of a whole-stack
conversion; and with --workers or --cluster, advice that works there for an image whose channels do not fit.

A tiny untrained network keeps each run within seconds.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.channels import ChannelChoice
from napari_unet.cli import main
from napari_unet.model import UNet, UNetConfig
from napari_unet.modelfile import ModelBundle, save_model
from napari_unet.pipeline import output_paths, read_input, segment_file
from napari_unet.postprocess import PostprocessConfig
from napari_unet.synthetic import make_cells


def grey_model(folder: Path) -> Path:
    """An untrained 1-channel network saved with a grey conversion (as `nuclei` is), and a threshold that gives
    several objects on `make_cells` images."""
    torch.manual_seed(0)
    bundle = ModelBundle(
        UNet(UNetConfig(depth=2, base_channels=4)),
        channels=ChannelChoice(grey=True),
        postprocess=PostprocessConfig(threshold=0.7),
    )
    return save_model(folder / "grey.model", bundle)


def rgb_stack(path: Path, planes: int, side: int) -> Path:
    """A TCYX uint16 ImageJ hyperstack of 3 channels (uncompressed: read memory-mapped)."""
    cells = (make_cells((side, side), seed=1)[0] * 1000).astype(np.uint16)
    stack = np.stack(
        [np.stack([np.roll(cells, 7 * t, 1), cells // 2, np.roll(cells, -5 * t, 0)]) for t in range(planes)]
    )
    tifffile.imwrite(path, stack, imagej=True, metadata={"axes": "TCYX"})
    return path


class FirstPlane(Exception):
    """Raised where the network would get the first plane: what ran before is the preparation."""


def test_a_grey_model_converts_a_memory_mapped_stack_plane_by_plane(tmp_path, monkeypatch):
    """The audit's case: the whole TCYX stack was converted to float32 grey before the first plane (a 32 x 3 x
    1000 x 1000 uint16 stack: 768 MB at the peak), where the docs promise one plane's arrays at most. The peak
    from the start of the command to the network's first plane (reading, checking and preparing the input) is
    the same for a stack of 16 planes and one of 64."""
    from napari_unet import pipeline

    model, side = grey_model(tmp_path), 128
    run = ["--device", "cpu", "-q"]
    warm = rgb_stack(tmp_path / "warm.tif", 2, side)
    assert main(["predict", str(model), str(warm), "--out", str(tmp_path / "warm"), *run]) == 0  # imports done

    def first_plane(*args, **kwargs):
        raise FirstPlane

    monkeypatch.setattr(pipeline, "_foreground", first_plane)
    peaks = {}
    for planes in (16, 64):
        stack = rgb_stack(tmp_path / f"stack{planes}.tif", planes, side)
        image, axes = read_input(stack)
        assert isinstance(image, np.memmap) and axes == "TCYX"
        del image
        tracemalloc.start()
        try:
            with pytest.raises(FirstPlane):
                main(["predict", str(model), str(stack), "--out", str(tmp_path / "out"), *run])
            peaks[planes] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    plane = 3 * side * side * 4  # one plane's three channels as float32 (the whole stack's: 64 times as much)
    assert peaks[64] < peaks[16] + plane, f"peaks {peaks}, one plane's float32 channels {plane}"
    assert peaks[64] < 8 * plane


def test_plane_by_plane_labels_equal_those_of_the_whole_stack_converted(tmp_path):
    model = grey_model(tmp_path)
    stack = rgb_stack(tmp_path / "stack.tif", 3, 96)
    assert main(["predict", str(model), str(stack), "--out", str(tmp_path / "out"), "--device", "cpu", "-q"]) == 0
    from napari_unet.modelfile import load_model

    bundle = load_model(model)
    image, axes = read_input(stack)
    whole, whole_axes = bundle.prepare(np.asarray(image), axes)  # the whole stack converted at once: as before
    reference = output_paths(stack, tmp_path / "reference")
    list(segment_file(bundle, whole, whole_axes, reference, device="cpu"))
    labels = tifffile.imread(tmp_path / "out" / "stack_labels.tif")
    assert labels.shape == (3, 96, 96) and labels.max() > 1
    assert np.array_equal(labels, tifffile.imread(reference.labels))


@pytest.mark.parametrize("block_size", ["1024", "16"], ids=["whole-file", "by-blocks"])
def test_distributed_mode_gives_channel_advice_that_works_there(tmp_path, capsys, block_size):
    """The audit's case: with --workers an RGB image given to a 1-channel model was told to use --grey or
    --channels, which --workers then refused. Refused before any worker starts, whole files and blocks alike."""
    pytest.importorskip("distributed")
    from napari_unet.io import write_tiff

    torch.manual_seed(0)
    model = save_model(tmp_path / "one.model", ModelBundle(UNet(UNetConfig(depth=2, base_channels=4))))
    rgb = tmp_path / "rgb.tif"
    write_tiff(rgb, np.zeros((3, 40, 40), np.uint16) + np.arange(40, dtype=np.uint16), "CYX")
    out = tmp_path / "out"
    command = ["predict", str(model), str(rgb), "--out", str(out), "--workers", "1", "--block-size", block_size]
    assert main(command) == 2
    error = capsys.readouterr().err
    assert "rgb.tif: the model expects 1 channel(s)" in error and "run without --cluster/--workers" in error
    assert "convert the images to 1 channel(s)" in error and "--channels 0 / the Channels box" not in error
    assert not out.exists()  # nothing started
    assert main([*command, "--grey"]) == 2  # what the advice of a single-process run says: refused here, first
    assert "run without them for --channels/--grey" in capsys.readouterr().err
