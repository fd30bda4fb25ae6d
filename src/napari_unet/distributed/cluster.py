"""The cluster side: the model shipped to workers once, each worker's device and torch threads, connecting.

A `ModelSpec` is a model as plain data (configs and numpy weights) with a digest. It travels as one task
result that blocks depend on (each worker fetches it once), and each worker process builds the torch model
once and keeps it (`worker_model`), not per block. Workers take `cuda:<worker index>` when CUDA is available
(one worker per GPU) and set their torch threads (`TorchThreads`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
import torch
from distributed import Client, LocalCluster, get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from ..channels import ChannelChoice
from ..device import select_device
from ..model import UNet, UNetConfig
from ..modelfile import ModelBundle, Normalization
from ..postprocess import PostprocessConfig
from ..tiling import prepare_model


@dataclass(frozen=True)
class ModelSpec:
    """A model as plain data (configs and numpy weights) with a digest: what travels to the workers."""

    unet: dict[str, Any]
    normalization: dict[str, Any]  # all of it: percentiles and invert
    postprocess: dict[str, Any]
    weights: dict[str, np.ndarray] = field(repr=False)
    digest: str = ""
    channels: dict[str, Any] = field(default_factory=dict)  # the channel choice (`ChannelChoice`): default all

    @classmethod
    def from_bundle(cls, bundle: ModelBundle) -> ModelSpec:
        weights = {k: v.detach().cpu().numpy().copy() for k, v in bundle.net.state_dict().items()}
        unet = bundle.net.config.to_dict()
        norm = bundle.normalization.to_dict()
        post = bundle.postprocess.to_dict()
        channels = bundle.channels.to_dict()
        digest = hashlib.sha1(json.dumps([unet, norm, post, channels], sort_keys=True).encode())
        for key in sorted(weights):
            digest.update(key.encode())
            digest.update(np.ascontiguousarray(weights[key]).tobytes())
        return cls(unet, norm, post, weights, digest.hexdigest()[:16], channels)

    def build(self) -> ModelBundle:
        net = UNet(UNetConfig.from_dict(self.unet))
        net.load_state_dict({k: torch.from_numpy(v) for k, v in self.weights.items()})
        return ModelBundle(
            net,
            Normalization.from_dict(self.normalization),
            PostprocessConfig.from_dict(self.postprocess),
            channels=ChannelChoice.from_dict(self.channels),
        )


_WORKER_MODELS: dict[tuple[str, str], tuple[ModelBundle, torch.device]] = {}  # per worker process
_WORKER_LOCK = threading.Lock()
_WORKER_BUILDS: list[str] = []  # digests built in this process, for tests and benchmarks


def worker_model(spec: ModelSpec, device: str) -> tuple[ModelBundle, torch.device]:
    """The model of `spec` on this worker's device, built on first use and kept for the process's life."""
    with _WORKER_LOCK:
        key = (spec.digest, device)
        if key not in _WORKER_MODELS:
            where = worker_device(device)
            bundle = spec.build()
            prepare_model(bundle.net, where)
            _WORKER_MODELS[key] = bundle, where
            _WORKER_BUILDS.append(spec.digest)
        return _WORKER_MODELS[key]


def worker_model_builds() -> list[str]:
    """The digests of the models this process has built (one entry per build)."""
    return list(_WORKER_BUILDS)


def worker_device(name: str = "auto") -> torch.device:
    """The device for this worker: with "auto" or "cuda" and CUDA present, `cuda:<i mod #GPUs>` where i is the
    worker's index (LocalCluster names workers 0, 1, ...), so N workers on N GPUs take one GPU each."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        try:
            index = int(get_worker().name)
        except (ValueError, TypeError):
            index = 0
        return torch.device(f"cuda:{index % torch.cuda.device_count()}")
    return select_device(name)


class TorchThreads(WorkerPlugin):
    """Sets torch's threads on every worker, including workers that join or restart later.

    threads: per worker; None: the cores this process may use divided by the worker's dask threads.
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def setup(self, worker) -> None:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(self.threads or max(1, cores // max(1, worker.state.nthreads)))


@contextmanager
def connect(
    address: str | None = None, workers: int | None = None, torch_threads: int | None = None
) -> Iterator[Client]:
    """A client of the scheduler at `address`, or of a new LocalCluster of `workers` processes (closed on exit).

    Local workers run one task at a time (threads_per_worker=1) with `torch_threads` each (default: the
    machine's cores divided among the workers), without dask's statistical profiler. The client is not made dask's
    default scheduler: the batch's code names it, and other dask arrays of the process (napari's lazily read
    layers) are still computed in the process, not sent to the batch's workers.
    """
    if (address is None) == (workers is None):
        raise ValueError("give either a scheduler address or a number of local workers (not both, not neither)")
    cluster = None
    if workers is not None:
        if workers < 1:
            raise ValueError(f"the number of local workers must be >= 1, got {workers}")
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch_threads = torch_threads or max(1, cores // workers)
        # without dask's statistical profiler: it keeps a profile per second of work (up to 1000 of them), which
        # made a worker's memory rise by ~0.1 MB per block; nobody looks at this cluster's dashboard
        with dask.config.set({"distributed.worker.profile.enabled": False}):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
        client = Client(cluster, set_as_default=False)
    else:
        client = Client(address, set_as_default=False)
    try:
        client.register_plugin(TorchThreads(torch_threads), name="napari-unet-torch-threads")
        yield client
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def peak_rss() -> int:
    """Peak resident memory (bytes) of this process's own address space: VmHWM on Linux.

    Not `ru_maxrss`: on Linux that survives `exec`, and a LocalCluster's nannies live in the client process
    and start workers with fork/vfork + exec, so a worker's ru_maxrss starts at the client's peak (a client
    that held 1.5 GB reports 1.5 GB for a worker whose own peak is 65 MB). Elsewhere: ru_maxrss (kB on
    Linux-like systems, bytes on macOS), the best there is.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # not Linux
        pass
    import resource  # POSIX only

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024
