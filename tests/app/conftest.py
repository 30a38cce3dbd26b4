"""Fixtures for the AppTest tests: the app, and good and bad input files as bytes."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from gala_engine.demo import load_demo

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture
def app() -> AppTest:
    """The app after its first run (the MERFISH demo loaded)."""
    at = AppTest.from_file(APP, default_timeout=60)
    at.run()
    assert not at.exception
    return at


@pytest.fixture(scope="session")
def demo_h5ad_bytes(tmp_path_factory) -> bytes:
    """The visium_tiny demo cells as .h5ad bytes."""
    path = tmp_path_factory.mktemp("h5") / "cells.h5ad"
    load_demo("visium_tiny").adata.write_h5ad(path)
    return path.read_bytes()


@pytest.fixture(scope="session")
def no_spatial_h5ad_bytes(tmp_path_factory) -> bytes:
    """An .h5ad without obsm['spatial']."""
    adata = load_demo("visium_tiny").adata.copy()
    del adata.obsm["spatial"]
    path = tmp_path_factory.mktemp("h5") / "nospatial.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


@pytest.fixture(scope="session")
def png_bytes() -> bytes:
    """A small valid RGB PNG."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((120, 100, 3)) * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def corrupt_png_bytes(png_bytes) -> bytes:
    """A PNG header followed by garbage."""
    return png_bytes[:40] + b"\x00garbage" * 50
