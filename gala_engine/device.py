"""Where the engine computes: chosen once, here."""

from __future__ import annotations

from functools import cache

import torch


@cache
def default_device() -> torch.device:
    """CUDA when available, CPU otherwise."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Turn ``None`` / ``"auto"`` / ``"cpu"`` / ``"cuda"`` into a device, checking CUDA exists."""
    if device is None or device == "auto":
        return default_device()
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        from .errors import GalaInputError

        raise GalaInputError("device 'cuda' was asked for but no CUDA GPU is available; use 'cpu'.")
    return dev


def device_name(device: str | torch.device | None = None) -> str:
    """A human name: the CUDA card's name, or 'CPU'."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return f"CUDA: {torch.cuda.get_device_name(dev)}"
    return "CPU"
