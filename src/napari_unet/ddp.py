"""Training on several processes (one per GPU) with torch.distributed's DistributedDataParallel.

Every process runs the same `Trainer` with the same seed. Each step, every process draws the random numbers
of the whole batch (`batch_size` x processes windows: cheap) and makes and trains on its own share of it;
DDP averages the gradients. The loss of each process is scaled so that the averaged gradient is the gradient
of the weighted cross-entropy of the whole batch (normalised by its annotated pixels, `shared_loss`): N
processes with batch B train as one process with batch N x B, up to float rounding (tests/test_ddp.py), with
two exceptions: dropout masks are drawn per process, and BatchNorm statistics are per process.

Start it with torchrun (one process per GPU; `napari-unet train --gpus N` runs this for you):

    torchrun --standalone --nproc-per-node 4 -m napari_unet train images labels --out cells.model --batch-size 8

The first process (rank 0) validates, calibrates and writes the model; the others only train. A signal that
reaches one of them stops all after the same step (`agreed_signal`).
"""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from .losses import weighted_cross_entropy


def rank_and_world_size() -> tuple[int, int]:
    """(this process's rank, the number of processes): (0, 1) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def launched_by_torchrun() -> bool:
    """Whether this process is one of several started by torchrun (which sets WORLD_SIZE and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_torchrun(device: str) -> str:
    """Join the process group torchrun set up; returns the device of this process ('cuda:<local rank>', or
    the CPU with the gloo backend when `device` is 'cpu' or no GPU is there)."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda and local_rank >= torch.cuda.device_count():
        raise ValueError(
            f"process {local_rank} of this machine has no GPU: {torch.cuda.device_count()} GPU(s) here; "
            "start at most that many processes per machine"
        )
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return "cpu"


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` in DistributedDataParallel: gradients averaged over the processes in backward; the first
    process's weights are broadcast to all at construction."""
    from torch.nn.parallel import DistributedDataParallel

    if device.type != "cuda":
        return DistributedDataParallel(model)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return DistributedDataParallel(model, device_ids=[index])


def shared_loss(
    logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor, world_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss to differentiate, the whole batch's loss) for this process's share of a batch.

    With S_p the weighted sum and K_p the annotated pixels of process p, the whole batch's loss is
    sum_p S_p / sum_p K_p. Process p differentiates world_size S_p / sum K, so that DDP's average of the
    gradients is the gradient of the whole batch's loss. One all-reduce of (S_p, K_p) per step.
    """
    counted = (weights > 0).sum()
    local_sum = weighted_cross_entropy(logits, target, weights) * counted.clamp(min=1)
    totals = torch.stack([local_sum.detach(), counted.to(local_sum.dtype)])
    dist.all_reduce(totals)
    total = totals[1].clamp(min=1)
    return local_sum * world_size / total, totals[0] / total


def agreed_elapsed(elapsed: float) -> float:
    """The first process's training time, so that every process follows the same schedule and stops together."""
    value = torch.tensor([elapsed], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.broadcast(value, src=0)
    return float(value.item())


def agreed_signal(signum: int | None) -> int | None:
    """The signal one of the processes received (the highest number when several did; None: none), the same in
    every process, so that all stop after the same step."""
    value = torch.tensor([signum or 0], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        value = value.cuda()
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return int(value.item()) or None
