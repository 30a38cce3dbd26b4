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


def share_cpu_with_server(reserve: int = 1) -> int:
    """For a long-running server (the app): leave ``reserve`` cores to the web server so torch's
    parallel regions are not starved (an oversubscribed CPU stalls them: measured 12× slower on 2
    cores). ``OMP_NUM_THREADS``, when set, wins. Returns torch's thread count."""
    import os

    if not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - int(reserve)))
    return torch.get_num_threads()
