"""Training on 2 processes (torch.distributed, gloo, on the CPU) equals 1 process with the combined batch.

Stated tolerance: after 3 Adam steps the weights agree within 1e-5 (float rounding: the gradients are summed
in another order) and the reported losses within 1e-5 relative.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from napari_unet.model import UNet
from napari_unet.synthetic import make_cells
from napari_unet.training import Sample, Trainer, preset


def tiny(batch_size: int):
    net_config, config = preset(
        "fast",
        tile_size=60,
        iterations=3,
        batch_size=batch_size,
        validate_every=1000,
        checkpoint_every=1000,
        calibrate_growth=False,
    )
    torch.manual_seed(0)
    # sparse annotation: the processes' shares have different numbers of annotated pixels
    return UNet(net_config, depth=3, base_channels=4), replace(config, augmentation="batched")


def samples() -> list[Sample]:
    result = []
    for seed in range(2):
        image, labels = make_cells((96, 112), seed=seed)
        mask = np.zeros(labels.shape, bool)
        mask[:, : 40 + 40 * seed] = True
        result.append(Sample(image, labels, mask))
    return result


def train(batch_size: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    model, config = tiny(batch_size)
    trainer = Trainer(model, config, samples(), validation=(), device="cpu")
    losses = [event.loss for event in trainer.run() if event.kind == "step"]
    return losses, {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def worker(rank: int, world_size: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=rendezvous, rank=rank, world_size=world_size)
    try:
        losses, weights = train(batch_size=2)
        torch.save({"losses": losses, "weights": weights}, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_processes_train_as_one_with_the_combined_batch(tmp_path):
    mp.spawn(worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(tmp_path / "result")), nprocs=2)
    single_losses, single_weights = train(batch_size=4)
    results = [torch.load(tmp_path / f"result.{rank}") for rank in range(2)]
    for result in results:
        np.testing.assert_allclose(result["losses"], single_losses, rtol=1e-5)
        for name, value in single_weights.items():
            torch.testing.assert_close(result["weights"][name], value, rtol=0, atol=1e-5, msg=name)
