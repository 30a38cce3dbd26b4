"""What an output was made from: a short record of the image file (name, size, checksum, pixels) for
``uns['gala']['image']`` and reports."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

__all__ = ["image_record"]

_CHUNK = 1 << 20


def image_record(path: str | os.PathLike[str] | None, *, name: str | None = None,
                 full_shape: tuple[int, int] | None = None) -> dict[str, Any]:
    """``{"file", "bytes", "sha256", "width_px", "height_px"}`` of the image a run used.

    ``name`` is the name to record (e.g. the uploaded file's own name, never a server temp path; default:
    the file's base name). Size and SHA-256 are read from ``path`` when it is a readable file; otherwise
    they are left out. ``full_shape`` is ``(H, W)`` in full-resolution pixels.
    """
    out: dict[str, Any] = {"file": str(name if name is not None else Path(path).name if path else "")}
    if path is not None:
        p = Path(path)
        try:
            if p.is_file():
                digest = hashlib.sha256()
                with open(p, "rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                out["bytes"] = int(p.stat().st_size)
                out["sha256"] = digest.hexdigest()
        except OSError:
            pass
    if full_shape is not None:
        out["height_px"], out["width_px"] = int(full_shape[0]), int(full_shape[1])
    return out
