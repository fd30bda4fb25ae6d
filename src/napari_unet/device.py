"""Choosing where the network runs."""

from __future__ import annotations

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def select_device(name: str | torch.device = "auto") -> torch.device:
    """The torch device for `name`: "auto" picks CUDA, then Apple MPS, then the CPU.

    Asking for a device that is not available is an error that says what is.
    """
    if isinstance(name, torch.device):
        return name
    base = name.split(":")[0]
    if base not in DEVICE_CHOICES:
        raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (optionally 'cuda:N'), got {name!r}")
    if base == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here; {describe_available()}")
    if base == "mps" and not _mps_available():
        raise ValueError(f"device 'mps' requested but Apple MPS is not available here; {describe_available()}")
    return torch.device(name)


def describe_device(device: torch.device) -> str:
    """A short human-readable name: 'CPU (2 threads)', 'CUDA: NVIDIA H100'."""
    if device.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(device)}"
    if device.type == "mps":
        return "Apple MPS"
    threads = torch.get_num_threads()
    return f"CPU ({threads} thread{'s' if threads > 1 else ''})"


def available_devices() -> list[str]:
    """The device choices of the docks: "auto", "cpu", and "cuda" / "mps" when present."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available():
        names.append("mps")
    return names


def describe_available() -> str:
    """The devices present, for error messages: 'available: cpu, cuda'."""
    return "available: " + ", ".join(available_devices()[1:])


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
