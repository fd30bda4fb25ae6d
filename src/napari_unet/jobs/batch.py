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
    `distributed.segment_plan`. inputs: files, `.zarr` stores or folders of them; options: those of
    `distributed.segment_batch`. Closing the generator cancels the remaining tasks and closes a local cluster."""
    from ..distributed import connect, plan_with, segment_plan
    from ..pipeline import list_files

    files = [f for path in inputs for f in list_files(path, "input image", zarr=True, annotations=False)]
    plan, rest = plan_with(bundle, files, out_dir, options)
    with connect(address, workers) as client:
        yield from segment_plan(client, bundle, plan, **rest)


def batch_outputs(inputs: Sequence[str | Path], out_dir: str | Path) -> list[Path]:
    """The OME-Zarr labels that a batch of `inputs` wrote (images segmented block by block) and that are finished."""
    from ..distributed import is_complete, large_output_paths
    from ..pipeline import list_files

    files = [f for path in inputs for f in list_files(path, "input image", zarr=True, annotations=False)]
    return [labels for labels, _ in (large_output_paths(f, out_dir) for f in files) if is_complete(labels)]
