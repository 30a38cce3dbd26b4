"""Shared fixtures: small real images and synthetic known-transform pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gala_engine.demo import DEMO_DIR
from gala_engine.io import read_image

DAPI = DEMO_DIR / "merfish_mini" / "mini_dataset_dapi_z1.jpg"


@pytest.fixture(scope="session")
def dapi_small() -> np.ndarray:
    """The real MERFISH DAPI image, reduced 8× (≈575×518 px), float32 gray in [0, 1]."""
    return read_image(DAPI, max_side=600).pixels[..., 0]


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]
