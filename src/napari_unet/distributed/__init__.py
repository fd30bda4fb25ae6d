"""Segmentation scaled out on dask.distributed: many files as tasks, one large image as blocks.

A folder of images fans out as one task per file (the same `pipeline.segment_file` as a single-process run,
written to a temporary name and renamed when finished). An image larger than a block (any `.zarr` store, a
large TIFF read memory-mapped) is cut into blocks that carry the network's halo, in two passes written
block by block into OME-Zarr: probabilities equal to the single-process tiled prediction in fp32, and labels
equal up to renumbering, objects crossing block borders joined (see `blocks`). Resumable, and a killed
worker's tasks are retried (see `batch`). Ids are the objects' anchors, not 1..n: unique and stable.

The parts, one module each:

- `cluster`: the model shipped to each worker once, the workers' devices and torch threads, `connect`;
- `blocks`: block planning on the tile grid, and labels with global ids joined across block borders;
- `omezarr`: the OME-Zarr (NGFF 0.4) outputs and the input's pixel size;
- `tasks`: what runs on a worker (a block's probabilities, a block's labels, a whole file);
- `batch`: the driver: `plan_batch` (every input read and planned, no cluster needed; `check_distinct_names`,
  `goes_by_blocks`, `check_scale`: images are segmented at their own scale), `segment_plan` (a generator of
  `BatchProgress`), `segment_batch` (both) and `segment_files` (from files and folders, `input_files`: an earlier
  run's outputs in an input folder are no inputs).

>>> from napari_unet.distributed import block_regions
>>> [tuple((s.start, s.stop) for s in region) for region in block_regions((100, 150), (64, 64))][:3]
[((0, 64), (0, 64)), ((0, 64), (64, 128)), ((0, 64), (128, 150))]
"""

try:
    import distributed  # noqa: F401 - checked here so that the error names the extra
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError(
        "napari_unet.distributed needs dask.distributed: pip install 'napari-unet-2015[distributed]'"
    ) from error

from .batch import (
    BATCH_PLAN_OPTIONS,
    DEFAULT_BLOCK,
    DEFAULT_MARGIN,
    SEGMENT_PLAN_OPTIONS,
    BatchPlan,
    BatchProgress,
    LargeImage,
    check_distinct_names,
    check_scale,
    goes_by_blocks,
    input_files,
    plan_batch,
    plan_with,
    segment_batch,
    segment_files,
    segment_plan,
)
from .blocks import block_regions, block_shape, context_radius, label_window, object_anchors, tiles_in
from .cluster import ModelSpec, TorchThreads, connect, peak_rss, worker_device, worker_model_builds
from .omezarr import (
    COMPLETE,
    NGFF_VERSION,
    SETTINGS,
    create_ome_zarr,
    input_pixel_size,
    is_complete,
    large_output_paths,
    ngff_attributes,
    recorded_settings,
)

__all__ = [
    "BATCH_PLAN_OPTIONS",
    "COMPLETE",
    "DEFAULT_BLOCK",
    "DEFAULT_MARGIN",
    "NGFF_VERSION",
    "SEGMENT_PLAN_OPTIONS",
    "SETTINGS",
    "BatchPlan",
    "BatchProgress",
    "LargeImage",
    "ModelSpec",
    "TorchThreads",
    "block_regions",
    "block_shape",
    "check_distinct_names",
    "check_scale",
    "connect",
    "context_radius",
    "create_ome_zarr",
    "goes_by_blocks",
    "input_files",
    "input_pixel_size",
    "is_complete",
    "recorded_settings",
    "label_window",
    "large_output_paths",
    "ngff_attributes",
    "object_anchors",
    "peak_rss",
    "plan_batch",
    "plan_with",
    "segment_batch",
    "segment_files",
    "segment_plan",
    "tiles_in",
    "worker_device",
    "worker_model_builds",
]
