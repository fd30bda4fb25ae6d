"""Which channels of an image the network sees: all of them, a chosen few, or one grey plane.

RGB histology (H&E) and brightfield images, and two-channel images (nucleus + cytoplasm), are read with a
channel axis C (see `io`). A :class:`ChannelChoice` turns such an image into the network's input: `channels`
picks and orders channels, `grey` converts to one plane (ITU-R 709 luminance for three channels, the mean
otherwise). A model stores the choice it was trained with, and applies it again when it segments.

>>> rgb = np.zeros((3, 4, 4), np.uint8); rgb[1] = 200
>>> grey, axes = ChannelChoice(grey=True).apply(rgb, "CYX")
>>> axes, round(float(grey[0, 0]), 1)
('YX', 143.1)
>>> ChannelChoice(channels=(2, 0)).apply(rgb, "CYX")[0].shape
(2, 4, 4)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ._config import Config

RGB_TO_GREY = (0.2125, 0.7154, 0.0721)  # ITU-R 709, as skimage.color.rgb2gray


class ChannelChoiceError(ValueError):
    """An image that cannot give the channels a `ChannelChoice` picks (fewer channels than asked for)."""


@dataclass(frozen=True)
class ChannelChoice(Config):
    """channels: indices of the channels to keep, in this order (None: all); grey: average them to one plane."""

    channels: tuple[int, ...] | None = None
    grey: bool = False

    def __post_init__(self) -> None:
        if self.channels is not None:
            channels = tuple(int(c) for c in self.channels)
            if not channels or min(channels) < 0 or len(set(channels)) != len(channels):
                raise ValueError(f"channels must be distinct indices >= 0, e.g. (0, 2), got {self.channels!r}")
            object.__setattr__(self, "channels", channels)

    @property
    def is_identity(self) -> bool:
        return self.channels is None and not self.grey

    def output_channels(self, image_channels: int) -> int:
        """How many channels the network sees for an image with ``image_channels`` channels."""
        if self.grey:
            return 1
        return len(self.channels) if self.channels is not None else image_channels

    def apply(self, image: Any, axes: str) -> tuple[Any, str]:
        """``(image, axes)`` with the choice applied; C is dropped when one channel remains. Works on numpy and
        dask arrays (dask stays lazy); ``axes`` are canonical ("TZCYX" order)."""
        if self.is_identity:
            return image, axes
        if "C" not in axes:
            if self.channels not in (None, (0,)):
                raise ChannelChoiceError(
                    f"the image has one channel (axes {axes!r}) but channels {list(self.channels)} were asked for"
                )
            return image, axes
        c = axes.index("C")
        count = image.shape[c]
        if self.channels is not None:
            if max(self.channels) >= count:
                raise ChannelChoiceError(
                    f"channel {max(self.channels)} was asked for but the image has {count} channel(s) "
                    f"(0 to {count - 1}; axes {axes!r}, shape {tuple(image.shape)})"
                )
            index = (slice(None),) * c + (list(self.channels),)
            image = image[index]
            count = len(self.channels)
        if self.grey:
            weights = np.asarray(RGB_TO_GREY if count == 3 else [1.0 / count] * count, dtype=np.float32)
            shape = [1] * image.ndim
            shape[c] = count
            image = (image.astype(np.float32) * weights.reshape(shape)).sum(axis=c)
            return image, axes.replace("C", "")
        if count == 1:
            return image[(slice(None),) * c + (0,)], axes.replace("C", "")
        return image, axes

    def describe(self) -> str:
        """In words: "all channels", "channels 0, 2", "grey (mean of channels 0, 1)"."""
        picked = "all channels" if self.channels is None else "channel(s) " + ", ".join(map(str, self.channels))
        if not self.grey:
            return picked
        return f"grey ({'luminance/mean of ' + picked})"


def parse_channels(text: str) -> tuple[int, ...]:
    """``"0,2"`` -> ``(0, 2)``: the command line's ``--channels``."""
    try:
        channels = tuple(int(part) for part in text.replace(" ", "").split(",") if part != "")
    except ValueError:
        raise ValueError(f"--channels takes comma-separated channel indices such as 0,2; got {text!r}") from None
    return ChannelChoice(channels).channels  # type: ignore[return-value]
