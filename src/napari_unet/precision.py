"""Number format and memory layout of the network's arithmetic: fp32, or bf16 autocast on a GPU.

"auto" is bf16 autocast on CUDA (weights and optimiser stay fp32; convolutions and matrix products run in
bf16, softmax and the loss in fp32) and fp32 everywhere else: the CPU default stays fp32 (bf16 works there
but is not faster on most CPUs), and Apple MPS stays fp32 until bf16 is measured there. On CUDA the
activations are channels_last and cuDNN picks its fastest algorithms (`torch.backends.cudnn.benchmark`).

>>> resolve_precision("auto", torch.device("cpu"))
'fp32'
>>> with autocast(torch.device("cpu"), "bf16"):
...     torch.nn.Conv2d(1, 1, 3)(torch.zeros(1, 1, 5, 5)).dtype
torch.bfloat16
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar

import torch

PRECISIONS = ("auto", "fp32", "bf16")
T = TypeVar("T")


def resolve_precision(precision: str, device: torch.device) -> str:
    """What `precision` ("auto", "fp32", "bf16") means on `device`: "fp32" or "bf16"."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "mps":
        raise ValueError("precision 'bf16' is not supported on Apple MPS here; use fp32 (or 'auto')")
    return precision


@contextlib.contextmanager
def autocast(device: torch.device, precision: str) -> Iterator[None]:
    """bf16 autocast on `device` when `precision` resolves to bf16; nothing otherwise."""
    if resolve_precision(precision, device) == "bf16":
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def autocast_iterator(device: torch.device, precision: str, items: Iterator[T]) -> Iterator[T]:
    """The items of a generator that runs the network (e.g. `pipeline.segment_file`), each computed under
    `autocast(device, precision)` and cuDNN autotuning; the caller's state holds between items."""
    while True:
        with autocast(device, precision), cudnn_autotuning(device):
            try:
                item = next(items)
            except StopIteration:
                return
        yield item


@contextlib.contextmanager
def cudnn_autotuning(device: torch.device) -> Iterator[None]:
    """cuDNN's autotuner on while inside (on CUDA: every batch has the same shapes), the process's flag after."""
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = before or device.type == "cuda"
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA and the CPU (faster for these convolutions: docs/design.md), contiguous on MPS."""
    return torch.contiguous_format if device.type == "mps" else torch.channels_last


def compiled(model: torch.nn.Module, example: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """`torch.compile(model)` if it compiles and runs forward and backward on `example` (call it in the
    autocast context it will train in), else `model` itself with a warning that says why: compiling is an
    optimisation, never a reason to fail. The trial's gradients are cleared."""
    try:
        fast = torch.compile(model)
        fast(example).float().sum().backward()
        model.zero_grad(set_to_none=True)
    except Exception as error:  # noqa: BLE001 (inductor raises many kinds: missing compiler, unsupported op...)
        warnings.warn(
            f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "running the network uncompiled",
            RuntimeWarning,
            stacklevel=2,
        )
        return model
    return fast
