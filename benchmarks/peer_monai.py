"""The peer pipeline of the real-data benchmark: MONAI's BasicUNet trained the way MONAI's tutorials do.

    BasicUNet (2-D, MONAI's default features (32, 32, 64, 128, 256, 32), instance norm, LeakyReLU)
    loss: DiceCELoss(to_onehot_y=True, softmax=True) on the binary foreground (labels > 0)
    data: random 256 x 256 crops, batches of 4, reshuffled every epoch (monai.data.DataLoader)
    augmentation: Rand2DElasticd (control points every 20 px, magnitude 1-2, with rotation and scaling),
        flips along both axes, 90-degree rotations, intensity scaling and shift
    optimiser: Adam, learning rate 1e-3, constant
    inference: monai.inferers.sliding_window_inference (256 x 256 windows, overlap 0.25, Gaussian blending)
    post-processing (in the benchmark): threshold + connected components

Used by `bench_real_data.py`, which gives it the same images, the same percentile normalisation and the same
training-time budget as ours. Needs `monai` (`pip install --no-deps monai`: it must not replace torch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class PeerConfig:
    """How the peer trains. features: BasicUNet's channel widths (MONAI's default)."""

    features: tuple[int, ...] = (32, 32, 64, 128, 256, 32)
    roi_size: int = 256
    batch_size: int = 4
    learning_rate: float = 1e-3
    overlap: float = 0.25
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def _monai():
    try:
        import monai
    except ImportError as error:
        raise ImportError(
            "the peer pipeline needs MONAI: .venv/bin/pip install --no-deps monai (keep the installed torch)"
        ) from error
    return monai


def make_network(config: PeerConfig) -> torch.nn.Module:
    """MONAI's BasicUNet for (N, 1, H, W) images and 2 classes (background, foreground)."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=config.features)


def make_transforms(config: PeerConfig):
    """MONAI's dictionary transforms: crop, elastic deformation, flips, rotations, intensity changes."""
    from monai.transforms import (
        Compose,
        EnsureTyped,
        Rand2DElasticd,
        RandFlipd,
        RandRotate90d,
        RandScaleIntensityd,
        RandShiftIntensityd,
        RandSpatialCropd,
        SpatialPadd,
    )

    keys = ["image", "label"]
    roi = (config.roi_size, config.roi_size)
    transforms = Compose(
        [
            SpatialPadd(keys, spatial_size=roi, mode="reflect"),
            RandSpatialCropd(keys, roi_size=roi, random_size=False),
            Rand2DElasticd(
                keys,
                spacing=(20, 20),
                magnitude_range=(1, 2),
                prob=0.5,
                rotate_range=(math.pi,),
                scale_range=(0.15, 0.15),
                mode=("bilinear", "nearest"),
                padding_mode="reflection",
            ),
            RandFlipd(keys, prob=0.5, spatial_axis=0),
            RandFlipd(keys, prob=0.5, spatial_axis=1),
            RandRotate90d(keys, prob=0.5, max_k=3),
            RandScaleIntensityd("image", factors=0.2, prob=0.5),
            RandShiftIntensityd("image", offsets=0.1, prob=0.5),
            EnsureTyped(keys, track_meta=False),
        ]
    )
    transforms.set_random_state(seed=config.seed)
    return transforms


def train_peer(
    images: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    budget: float,
    config: PeerConfig = PeerConfig(),
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, dict]:
    """Train the peer for `budget` seconds of training (data loading and augmentation included).

    images: normalised (H, W) float32 images; masks: (H, W) bool foreground. Returns the network and
    {"iterations", "epochs", "train_seconds", "final_loss", "seconds_per_iteration"}.
    """
    monai = _monai()
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss

    if len(images) != len(masks) or not images:
        raise ValueError(f"need as many masks as images (at least one); got {len(images)} and {len(masks)}")
    monai.utils.set_determinism(seed=config.seed)
    device = torch.device(device)
    data = [
        {"image": np.asarray(image, np.float32)[None], "label": np.asarray(mask, np.float32)[None]}
        for image, mask in zip(images, masks)
    ]
    loader = DataLoader(
        Dataset(data, make_transforms(config)),
        batch_size=config.batch_size,
        shuffle=True,
        num_workers=0,
        drop_last=len(data) >= config.batch_size,
    )
    net = make_network(config).to(device)
    loss_function = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(net.parameters(), lr=config.learning_rate)
    net.train()
    started = time.perf_counter()
    iterations, epochs, loss_value = 0, 0, math.nan
    elapsed = 0.0
    while elapsed < budget:
        for batch in loader:
            x, y = batch["image"].to(device), batch["label"].to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_function(net(x), y)
            loss.backward()
            optimizer.step()
            iterations += 1
            loss_value = float(loss.item())
            elapsed = time.perf_counter() - started
            if elapsed >= budget:
                break
        epochs += 1
    monai.utils.set_determinism(seed=None)
    return net, {
        "iterations": iterations,
        "epochs": epochs,
        "train_seconds": elapsed,
        "final_loss": loss_value,
        "seconds_per_iteration": elapsed / max(iterations, 1),
    }


@torch.no_grad()
def predict_peer(
    net: torch.nn.Module, image: np.ndarray, config: PeerConfig = PeerConfig(), device: str | torch.device = "cpu"
) -> np.ndarray:
    """Foreground probability (H, W) float32 of a normalised (H, W) image, by sliding-window inference."""
    from monai.inferers import sliding_window_inference

    device = torch.device(device)
    net.eval()
    x = torch.from_numpy(np.ascontiguousarray(image, np.float32))[None, None].to(device)
    logits = sliding_window_inference(
        x,
        roi_size=(config.roi_size, config.roi_size),
        sw_batch_size=config.batch_size,
        predictor=net,
        overlap=config.overlap,
        mode="gaussian",
    )
    return torch.softmax(torch.as_tensor(logits), dim=1)[0, 1].float().cpu().numpy()
