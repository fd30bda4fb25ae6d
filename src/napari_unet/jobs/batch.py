"""The Batch dock's work: a folder of images or a zarr segmented on dask.distributed (`napari_unet.distributed`)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..modelfile import ModelBundle


def run_batch(
    bundle: ModelBundle,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    address: str | None = None,
    workers: int | None = None,
    **options: Any,
) -> Iterator[Any]:
    """Plan the inputs (`distributed.plan_batch`: a bad input is refused before any worker starts), connect (to
    `address`, or a LocalCluster of `workers` processes), then yield the `BatchProgress` events of
    `distributed.segment_plan`. inputs: files, `.zarr` stores or folders of them, without the outputs of an
    earlier run written beside their inputs (`distributed.input_files`: left out with a warning; the dock names
    them first, `pipeline.list_inputs`); options: those of `distributed.segment_batch`. Closing the generator
    cancels the remaining tasks and closes a local cluster."""
    from ..distributed import connect, input_files, plan_with, segment_plan

    plan, rest = plan_with(bundle, input_files(inputs), out_dir, options)
    with connect(address, workers) as client:
        yield from segment_plan(client, bundle, plan, **rest)


def batch_outputs(inputs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """The OME-Zarr labels that a batch of `inputs` wrote (images segmented block by block) and that are finished
    (of the inputs as `run_batch` takes them: an earlier run's outputs beside their inputs are none)."""
    from ..distributed import is_complete, large_output_paths
    from ..pipeline import list_inputs

    files, _ = list_inputs(inputs)
    return [labels for labels, _ in (large_output_paths(f, out_dir) for f in files) if is_complete(labels)]
