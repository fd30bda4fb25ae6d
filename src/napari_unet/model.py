"""The U-Net of Ronneberger, Fischer and Brox (2015), assembled from named parts.

Paper defaults: five resolution levels (64, 128, 256, 512, 1024 channels), two unpadded ("valid") 3x3
convolutions + ReLU per level, 2x2 max-pooling, 2x2 up-convolutions that halve the channels, centre-crop and
concatenate, a final 1x1 convolution; dropout at the end of the contracting path; He initialisation
(std sqrt(2 / N), N = fan-in). ``UNet()`` maps a 572x572 tile to 388x388 with 23 convolution layers.

The shape arithmetic (valid sizes, halo, output size) is derived from the architecture, never tabulated:

>>> model = UNet()
>>> model.output_shape((572, 572))
(388, 388)
>>> model.halo
92
>>> model.valid_input_size(500)
508
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from ._config import Config, check_choice, check_flag, check_range

Padding = Literal["valid", "same"]


@dataclass(frozen=True)
class UNetConfig(Config):
    """Everything needed to rebuild a :class:`UNet`; saved beside the weights.

    depth: number of resolution levels (the paper's 5 means 4 poolings).
    base_channels: features at the first level; doubled at each level below.
    in_channels / num_classes: input image channels and output classes (2 = background, foreground).
    padding: "valid" (the paper: the output is smaller than the input) or "same" (zero padding).
    batch_norm: a BatchNorm after every 3x3 convolution (not in the paper).
    dropout: dropout probability at the end of the contracting path (paper: 0.5).
    convs_per_level: 3x3 convolutions per level (paper: 2).
    """

    in_channels: int = 1
    num_classes: int = 2
    depth: int = 5
    base_channels: int = 64
    padding: Padding = "valid"
    batch_norm: bool = False
    dropout: float = 0.5
    convs_per_level: int = 2

    def __post_init__(self) -> None:
        for name, low in (
            ("in_channels", 1),
            ("num_classes", 2),
            ("depth", 1),
            ("base_channels", 1),
            ("convs_per_level", 1),
        ):
            check_range(self, name, low, integer=True)
        check_range(self, "dropout", 0.0, 1.0, open_high=True, meaning="a probability")
        check_choice(self, "padding", ("valid", "same"))
        check_flag(self, "batch_norm")


class ConvBlock(nn.Sequential):
    """`convs` x (3x3 conv [+ BatchNorm] + ReLU).  x: (N, C_in, H, W) -> (N, C_out, H - 2 convs, W - 2 convs) if valid."""

    def __init__(self, in_channels: int, out_channels: int, convs: int, padding: Padding, batch_norm: bool):
        layers: list[nn.Module] = []
        for i in range(convs):
            layers.append(
                nn.Conv2d(
                    in_channels if i == 0 else out_channels,
                    out_channels,
                    kernel_size=3,
                    padding=1 if padding == "same" else 0,
                    bias=not batch_norm,
                )
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Crop the centre `size` (H, W) of `x`: (N, C, H', W'). The margins H' - H, W' - W must be even."""
    dy, dx = x.shape[-2] - size[0], x.shape[-1] - size[1]
    if dy < 0 or dx < 0 or dy % 2 or dx % 2:
        raise ValueError(f"cannot centre-crop {tuple(x.shape[-2:])} to {size}: margins must be even and >= 0")
    return x[..., dy // 2 : dy // 2 + size[0], dx // 2 : dx // 2 + size[1]]


class Encoder(nn.Module):
    """Contracting path: returns the feature map of every level above the base (for the skip connections)."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        channels = [config.in_channels] + [config.base_channels * 2**level for level in range(config.depth - 1)]
        self.blocks = nn.ModuleList(
            ConvBlock(c_in, c_out, config.convs_per_level, config.padding, config.batch_norm)
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )
        self.pool = nn.MaxPool2d(2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for block in self.blocks:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        return x, skips


class Decoder(nn.Module):
    """Expansive path: up-convolution, centre-crop-and-concatenate with the skip, two 3x3 convolutions."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        levels = range(config.depth - 2, -1, -1)
        self.upconvs = nn.ModuleList(
            nn.ConvTranspose2d(config.base_channels * 2 ** (level + 1), config.base_channels * 2**level, 2, stride=2)
            for level in levels
        )
        self.blocks = nn.ModuleList(
            ConvBlock(
                config.base_channels * 2 ** (level + 1),
                config.base_channels * 2**level,
                config.convs_per_level,
                config.padding,
                config.batch_norm,
            )
            for level in levels
        )

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for upconv, block, skip in zip(self.upconvs, self.blocks, reversed(skips)):
            x = upconv(x)
            x = block(torch.cat([center_crop(skip, tuple(x.shape[-2:])), x], dim=1))
        return x


class UNet(nn.Module):
    """U-Net. x: (N, in_channels, H, W) float -> logits (N, num_classes, *output_shape((H, W))).

    >>> model = UNet(base_channels=8, depth=3)
    >>> model(torch.zeros(1, 1, 92, 92)).shape
    torch.Size([1, 2, 52, 52])
    """

    def __init__(self, config: UNetConfig | None = None, **overrides: Any):
        super().__init__()
        config = config or UNetConfig()
        if overrides:
            config = UNetConfig.from_dict({**config.to_dict(), **overrides})
        self.config = config
        top = config.base_channels * 2 ** (config.depth - 1)
        self.encoder = Encoder(config)
        self.base = ConvBlock(
            top // 2 if config.depth > 1 else config.in_channels,
            top,
            config.convs_per_level,
            config.padding,
            config.batch_norm,
        )
        self.dropout = nn.Dropout2d(config.dropout) if config.dropout > 0 else nn.Identity()
        self.decoder = Decoder(config)
        self.head = nn.Conv2d(config.base_channels, config.num_classes, kernel_size=1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation as in the paper: weights ~ N(0, 2 / fan_in), biases 0."""
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                fan_in = (
                    module.weight[0].numel()
                    if isinstance(module, nn.Conv2d)
                    else (module.in_channels * math.prod(module.kernel_size))
                )
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"expected input (N, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        self.check_input_shape(tuple(x.shape[-2:]))
        x, skips = self.encoder(x)
        x = self.dropout(self.base(x))
        return self.head(self.decoder(x, skips))

    # -- shape arithmetic, derived from the architecture -----------------------------------------------------

    @property
    def step(self) -> int:
        """Input sizes (and tile offsets) must move in multiples of this: 2 ** (number of poolings)."""
        return 2 ** (self.config.depth - 1)

    @property
    def conv_shrink(self) -> int:
        """Pixels one 3x3 convolution block removes from a side length (0 with 'same' padding)."""
        return 0 if self.config.padding == "same" else 2 * self.config.convs_per_level

    def _output_size(self, n: int) -> int | None:
        """Output side length for input side length n, or None when n is not a valid input size."""
        size = n
        for _ in range(self.config.depth - 1):
            size -= self.conv_shrink
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= self.conv_shrink
        if size <= 0:
            return None
        for _ in range(self.config.depth - 1):
            size = 2 * size - self.conv_shrink
            if size <= 0:
                return None
        return size

    def valid_input_sizes_near(self, n: int, count: int = 2) -> list[int]:
        """The `count` valid input sizes nearest to n (for error messages)."""
        found: list[int] = []
        for distance in range(0, 64 * self.step):
            for candidate in sorted({n - distance, n + distance}):
                if candidate > 0 and self._output_size(candidate) is not None and candidate not in found:
                    found.append(candidate)
            if len(found) >= count:
                break
        return sorted(found[:count])

    def valid_input_size(self, n: int) -> int:
        """The smallest valid input side length >= n."""
        size = max(int(n), 1)
        while self._output_size(size) is None:
            size += 1
        return size

    def check_input_shape(self, shape: tuple[int, ...]) -> None:
        """Raise a ValueError naming the nearest valid sizes when `shape` (H, W) is not a valid input."""
        for n in shape:
            if self._output_size(int(n)) is None:
                near = ", ".join(map(str, self.valid_input_sizes_near(int(n))))
                raise ValueError(
                    f"tile {'x'.join(map(str, shape))} is not valid for a depth-{self.config.depth} "
                    f"{self.config.padding} U-Net (every pooled map must be even and positive); "
                    f"nearest valid input sizes: {near}"
                )

    def output_shape(self, input_shape: tuple[int, int]) -> tuple[int, int]:
        """Output (H, W) of a valid input (H, W); raises for an invalid one."""
        self.check_input_shape(tuple(input_shape))
        return tuple(self._output_size(int(n)) for n in input_shape)  # type: ignore[return-value]

    @property
    def halo(self) -> int:
        """Context pixels consumed per side: (input - output) / 2 (92 for the paper's net; 0 with 'same')."""
        return self.receptive_radius if self.config.padding == "valid" else 0

    @property
    def receptive_radius(self) -> int:
        """Context per side that an output pixel sees, whatever the padding: the valid network's halo.

        Each 3x3 convolution at level l (0 = top) removes 2 * 2**l input pixels from a side length; summed over the
        contracting path, the base and the expansive path and halved.
        """
        shrink = 2 * self.config.convs_per_level
        levels = self.config.depth - 1
        per_path = sum(shrink * 2**level for level in range(levels))
        return (2 * per_path + shrink * 2**levels) // 2

    def count_conv_layers(self) -> int:
        """Convolution layers, up-convolutions and the 1x1 head included (the paper's net has 23)."""
        return sum(isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)) for m in self.modules())

    def flops(self, input_shape: tuple[int, int]) -> float:
        """Floating-point operations (2 per multiply-add) of one forward pass over one (H, W) input tile."""
        total = 0.0
        hooks = []

        def count(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            nonlocal total
            if isinstance(module, nn.Conv2d):
                total += 2.0 * output.numel() * module.weight[0].numel()
            elif isinstance(module, nn.ConvTranspose2d):
                total += 2.0 * inputs[0].numel() * module.out_channels * math.prod(module.kernel_size)

        with torch.device("meta"):
            shadow = UNet(self.config)
        for module in shadow.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                hooks.append(module.register_forward_hook(count))
        try:
            shadow(torch.empty(1, self.config.in_channels, *input_shape, device="meta"))
        finally:
            for hook in hooks:
                hook.remove()
        return total
