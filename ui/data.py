"""Loading the two inputs (demo, upload, server path), their summary, and the cached rasters."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st

from gala_engine import constants
from gala_engine.budget import check_prepare
from gala_engine.checks import check_cells, check_image
from gala_engine.demo import load_demo
from gala_engine.errors import GalaInputError
from gala_engine.io import LoadedImage, cell_signal, read_cells, read_image, spatial_yx
from gala_engine.section import SectionRasters, prepare_section
from gala_engine.signals import SignalScore, candidate_signals, parse_signal, rank_signals

from . import state
from .session_files import SessionFolder, sweep_stale

DATA_DIR_ENV = "GALA_DATA_DIR"
DEFAULT_DEMO = "merfish_mini"
MAX_IMAGE_SIDE = 4096  # loaded pixels; the engine works on a reduced copy anyway


@dataclass
class Dataset:
    """The cells + image of one section as loaded in this session.

    ``truth`` is the demo's (2, 3) µm → full-resolution pixel affine, or None for user data.
    """

    name: str
    origin: str  # "demo", "upload" or "server"
    adata: Any
    image: LoadedImage
    truth: np.ndarray | None = None
    uid: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    notes: list[str] = field(default_factory=list)  # warnings found while loading
    # how to load it again (kept by the session store): {"kind": "demo", "name"} | {"kind": "upload",
    # "cells_name", "image_name", "cells_path", "image_path", "options"} | {"kind": "server", "cells", "image", "options"}
    source: dict = field(default_factory=dict)
    cells_file: str = ""  # the user's own file names (never a server temp path): downloads, uns['gala']
    image_file: str = ""
    image_options: dict = field(default_factory=dict)  # channel / series / plane the image was read with


class DataError(Exception):
    """A user-facing loading problem (message ready for ``st.error``)."""


def data_dir() -> Path | None:
    """The server folder users may read from (``$GALA_DATA_DIR``, default ``./data``); ``None`` when
    ``GALA_DATA_DIR`` is set but empty (or blank): reading server files is then disabled."""
    raw = os.environ.get(DATA_DIR_ENV)
    if raw is not None and not raw.strip():
        return None
    return Path(raw.strip() if raw is not None else Path.cwd() / "data").expanduser().resolve()


def session_tmpdir() -> Path:
    """A per-session spool folder for uploads and downloads, removed when the session ends.

    Making one first removes folders of sessions that are gone (see :mod:`ui.session_files`).
    """
    folder = state.get(state.TMPDIR)
    if not isinstance(folder, SessionFolder) or not folder.path.is_dir():
        sweep_stale()
        folder = SessionFolder()
        st.session_state[state.TMPDIR] = folder
    return folder.path


@st.cache_resource(show_spinner="Loading demo data…")
def _demo(name: str) -> tuple[Any, LoadedImage, np.ndarray]:
    """Demo cells, image and truth, shared read-only by all sessions (the data are public)."""
    demo = load_demo(name)
    return demo.adata, read_image(demo.image_path, max_side=MAX_IMAGE_SIDE), demo.um_to_px


def content_id(*parts: Any) -> str:
    """A short id from the data's content (file bytes, paths, options): the same data loaded again gets the same
    id, so its runs and landmarks come back with it."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def demo_dataset(name: str = DEFAULT_DEMO) -> Dataset:
    """One of :data:`gala_engine.demo.DEMOS` as a :class:`Dataset`."""
    adata, image, truth = _demo(name)
    return Dataset(name=f"demo: {name}", origin="demo", adata=adata, image=image, truth=truth,
                   cells_file=f"{name}.h5ad", image_file=Path(image.source).name,
                   uid=content_id("demo", name), source={"kind": "demo", "name": name})


def _scrub(text: str, path: Path, name: str) -> str:
    """``text`` with the server path of a file (and of its folder, the session spool or data folder) replaced
    by the user's name for it: messages never show server paths."""
    text = text.replace(str(path), name).replace(str(path.parent), "<folder>")
    root = data_dir()
    if root is not None:
        text = text.replace(str(root), "<data folder>")
    return text.replace(tempfile.gettempdir(), "<tmp>")


def _read_pair(cells_path: Path, image_path: Path, *, cells_name: str, image_name: str,
               image_options: dict[str, Any] | None = None) -> tuple[Any, LoadedImage, list[str]]:
    """Read and check both files; returns (cells, image, warnings) or raises :class:`DataError`.

    ``image_options``: ``channel`` / ``series`` / ``plane`` for :func:`gala_engine.io.read_image`.
    """
    try:
        adata = read_cells(cells_path)
        notes = check_cells(adata, signal=constants.SIGNAL_DENSITY, name=f"'{cells_name}'").warnings
    except GalaInputError as err:
        raise DataError(_scrub(f"Cells file '{cells_name}': {err}", cells_path, cells_name)) from None
    except Exception as err:  # noqa: BLE001 — any decoder failure is a bad file, not an app crash
        msg = f"Cells file '{cells_name}' could not be read as .h5ad ({type(err).__name__}: {err})."
        raise DataError(_scrub(msg, cells_path, cells_name)) from None
    try:
        image = read_image(image_path, max_side=MAX_IMAGE_SIDE, **(image_options or {}))
        notes += [_scrub(n, image_path, image_name) for n in check_image(image, name=f"'{image_name}'")]
    except GalaInputError as err:
        raise DataError(_scrub(f"Image '{image_name}': {err}", image_path, image_name)) from None
    except Exception as err:  # noqa: BLE001
        msg = f"Image '{image_name}' could not be read ({type(err).__name__}: {err})."
        raise DataError(_scrub(msg, image_path, image_name)) from None
    notes = [_scrub(n, cells_path, cells_name) for n in notes]
    return adata, image, notes


CELLS_SUFFIXES = (".h5ad",)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def upload_problems(cells: Any, image: Any) -> list[str]:
    """Plain-words messages for uploads of the wrong kind (by file name; the content is checked on loading).
    ``cells`` / ``image``: Streamlit ``UploadedFile`` objects (anything with ``.name``) or None."""
    out = []
    if cells is not None and Path(cells.name).suffix.lower() not in CELLS_SUFFIXES:
        out.append(f"'{cells.name}' is not a cells file: the cells must be an AnnData .h5ad file with the cell "
                   "centroids in obsm['spatial'] (x, y in µm). Convert a table with anndata (e.g. "
                   "squidpy.read.vizgen / xenium, or anndata.AnnData(obsm={'spatial': xy})) and upload the .h5ad.")
    if cells is not None and Path(cells.name).suffix.lower() in IMAGE_SUFFIXES:
        out[-1] += " It looks like an image: put it in the box on the right."
    if image is not None and Path(image.name).suffix.lower() not in IMAGE_SUFFIXES:
        kinds = ", ".join(s.lstrip(".").upper() for s in IMAGE_SUFFIXES)
        out.append(f"'{image.name}' is not an image this app reads: upload the tissue image as {kinds} "
                   "(OME-TIFF and pyramidal TIFF included).")
        if Path(image.name).suffix.lower() in CELLS_SUFFIXES:
            out[-1] += " It looks like the cells file: put it in the box on the left."
    return out


def _spool_name(name: str, fallback: str) -> str:
    """A safe file name close to the user's (no folders, no odd characters), or ``fallback``."""
    base = re.sub(r"[^\w.+-]+", "_", Path(str(name)).name).strip("._")[:120]
    return base if base and Path(base).suffix else fallback


def scrub_paths(text: str) -> str:
    """``text`` without server paths (the temp root and the data folder), for any message a user sees."""
    root = data_dir()
    if root is not None:
        text = text.replace(str(root), "<data folder>")
    return text.replace(tempfile.gettempdir(), "<tmp>")


def upload_dataset(cells_name: str, cells_bytes: bytes, image_name: str, image_bytes: bytes,
                   image_options: dict[str, Any] | None = None) -> Dataset:
    """Spool two uploads to the session folder and read them."""
    folder = session_tmpdir() / uuid.uuid4().hex[:8]
    # each file under the user's own name (in its own sub-folder): a message from a reader that names the
    # file then shows the user's name, not an internal one
    cells_path = folder / "cells" / _spool_name(cells_name, "cells.h5ad")
    image_path = folder / "image" / _spool_name(image_name, "image.img")
    cells_path.parent.mkdir(parents=True)
    image_path.parent.mkdir()
    cells_path.write_bytes(cells_bytes)
    image_path.write_bytes(image_bytes)
    try:
        adata, image, notes = _read_pair(cells_path, image_path, cells_name=cells_name, image_name=image_name,
                                         image_options=image_options)
    except DataError:
        shutil.rmtree(folder, ignore_errors=True)  # nothing of a refused upload is kept
        raise
    return Dataset(name=f"upload: {cells_name} + {image_name}", origin="upload", adata=adata, image=image,
                   notes=notes, cells_file=cells_name, image_file=image_name, image_options=dict(image_options or {}),
                   uid=content_id("upload", cells_bytes, image_bytes, image_options or {}),
                   source={"kind": "upload", "cells_name": cells_name, "image_name": image_name,
                           "cells_path": str(cells_path), "image_path": str(image_path),
                           "options": dict(image_options or {})})


def stored_dataset(cells_path: Path, image_path: Path, *, cells_name: str, image_name: str,
                   image_options: dict[str, Any] | None, uid: str) -> Dataset:
    """An uploaded pair kept by the session store (or inside a session file), read again with the same checks as
    an upload; ``uid`` is the id its runs were recorded under."""
    adata, image, notes = _read_pair(cells_path, image_path, cells_name=cells_name, image_name=image_name,
                                     image_options=image_options)
    return Dataset(name=f"upload: {cells_name} + {image_name}", origin="upload", adata=adata, image=image,
                   notes=notes, uid=uid, cells_file=cells_name, image_file=image_name,
                   image_options=dict(image_options or {}),
                   source={"kind": "upload", "cells_name": cells_name, "image_name": image_name,
                           "cells_path": str(cells_path), "image_path": str(image_path),
                           "options": dict(image_options or {})})


def resolve_server_path(text: str, *, root: Path | None = None) -> Path:
    """A path typed by the user, resolved inside the data folder; anything outside is refused.

    Messages never show the data folder's server path. With ``GALA_DATA_DIR`` empty, every path is refused.
    """
    root = root or data_dir()
    if root is None:
        raise DataError("Reading files from the server is disabled here (GALA_DATA_DIR is empty); upload the files.")
    root = root.resolve()
    if not text.strip():
        raise DataError("Enter a path inside the data folder.")
    try:
        raw = Path(text.strip()).expanduser()
        path = (raw if raw.is_absolute() else root / raw).resolve()  # follows symlinks: no escape through one
    except (OSError, RuntimeError, ValueError):  # NUL bytes, symlink loops, unknown ~user
        raise DataError(f"'{text}' is not a usable path; give a file inside the data folder.") from None
    if not path.is_relative_to(root):
        raise DataError(f"'{text}' is outside the data folder; only files inside it can be opened.")
    if path.is_dir():
        raise DataError(f"'{text}' is a folder in the data folder; give a file inside it.")
    if path.exists() and not path.is_file():
        raise DataError(f"'{text}' is not a regular file (a FIFO, socket or device); give a file.")
    if not path.is_file():
        raise DataError(f"'{text}' does not exist in the data folder.")
    return path


def server_dataset(cells_text: str, image_text: str, image_options: dict[str, Any] | None = None, *,
                   root: Path | None = None) -> Dataset:
    """Read two files from the server's data folder."""
    cells_path = resolve_server_path(cells_text, root=root)
    image_path = resolve_server_path(image_text, root=root)
    adata, image, notes = _read_pair(cells_path, image_path, cells_name=cells_path.name,
                                     image_name=image_path.name, image_options=image_options)
    stats = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in (cells_path, image_path)]
    return Dataset(name=f"server: {cells_path.name} + {image_path.name}", origin="server", adata=adata, image=image,
                   notes=notes, cells_file=cells_path.name, image_file=image_path.name,
                   image_options=dict(image_options or {}), uid=content_id("server", stats, image_options or {}),
                   source={"kind": "server", "cells": cells_text, "image": image_text,
                           "options": dict(image_options or {})})


def set_dataset(data: Dataset) -> None:
    """Make ``data`` the session's dataset; drops rasters and the viewer's selection of old runs."""
    st.session_state[state.DATA] = data
    st.session_state.pop(state.RASTERS, None)
    st.session_state.pop(state.DATA_ERROR, None)
    from .runs import import_aligned

    import_aligned(data)  # an aligned .h5ad of ours: its alignment becomes a run
    selected = state.results().get(state.get(state.SELECTED_RUN))
    if selected is None or selected[0] != data.uid:  # the viewer shows this data's latest run, or none
        mine = [rid for rid, (uid, _) in state.results().items() if uid == data.uid]
        st.session_state[state.SELECTED_RUN] = max(mine) if mine else None
    if not signal_usable(data.adata, state.settings()["signal"]):
        state.settings()["signal"] = constants.SIGNAL_TOTAL_COUNTS


def signal_usable(adata: Any, signal: str) -> bool:
    """True when ``signal`` is well formed and names only genes of ``adata`` (pca/totals/density always)."""
    try:
        spec = parse_signal(signal, adata.var_names)
    except GalaInputError:
        return False
    return spec.kind != "genes" or all(g in adata.var_names for g in spec.genes)


def summary(data: Dataset) -> dict[str, Any]:
    """Numbers for the validation summary."""
    xy = spatial_yx(data.adata)[:, ::-1]
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    h, w = data.image.full_shape
    return {
        "cells": int(data.adata.n_obs),
        "genes": int(data.adata.n_vars),
        "extent_um": (float(hi[0] - lo[0]), float(hi[1] - lo[1])),
        "image_px": (int(w), int(h)),
        "loaded_px": (int(data.image.pixels.shape[1]), int(data.image.pixels.shape[0])),
        "channels": "grayscale" if data.image.is_gray else "RGB",
    }


def warnings(data: Dataset) -> list[str]:
    """Plain-words warnings about the inputs (nothing blocking)."""
    s = summary(data)
    out = []
    ex, ey = s["extent_um"]
    if max(ex, ey) < 50:
        out.append(f"The cells span only {ex:.0f} × {ey:.0f} µm. Are the coordinates in µm (not mm)?")
    if max(ex, ey) > 100_000:
        out.append(f"The cells span {ex:.0f} × {ey:.0f} µm (> 10 cm). Are the coordinates in µm (not nm or pixels)?")
    if s["genes"] == 0:
        out.append("No genes in adata.X: only 'cell density' can be used as the signal.")
    out += data.notes
    if data.image.scale > 1:
        out.append(f"The image was reduced {data.image.scale:g}× for loading; results stay in full-resolution pixels.")
    return out


def signal_choices(data: Dataset) -> list[str]:
    """The target-signal options: total counts, density, ``pca`` (top 3 principal components as channels) and
    ``pca:1``, then every gene (most expressed first). Gene lists (``"EPCAM,KRT8"``) and ``pca:k`` are typed."""
    X = data.adata.X
    names = np.asarray(data.adata.var_names).astype(str)
    pcs = []
    if X is not None and names.size:
        totals = np.asarray(X.sum(axis=0)).ravel()
        names = names[np.argsort(-totals, kind="stable")]
        pcs = ["pca", "pca:1"] if min(data.adata.n_obs, data.adata.n_vars) > 3 else []
    fixed = [constants.SIGNAL_TOTAL_COUNTS, constants.SIGNAL_DENSITY, *pcs]
    return fixed + [n for n in names.tolist() if n not in fixed]


def signal_previews(data: Dataset, current: str, dx: float | None) -> list[SignalScore]:
    """Candidate signals (totals, density, pca, the most variable genes, and ``current``) rasterised at ``dx``
    with their informativeness, best first; computed once per dataset, signal and dx."""
    def build() -> list[SignalScore]:
        try:
            return rank_signals(data.adata, [*candidate_signals(data.adata), current], dx=dx)
        except GalaInputError:
            return []

    return state.memo("signal_previews", (data.uid, current, dx), build)


def rasters(data: Dataset, settings: dict[str, Any]) -> SectionRasters:
    """The two rasters for ``settings``, recomputed only when data or settings change."""
    key = (data.uid, tuple(sorted(settings.items())))
    cached = state.get(state.RASTERS)
    if cached is not None and cached[0] == key:
        return cached[1]
    from .budget import session_budget

    try:
        found = check_cells(data.adata, signal=settings["signal"])
        check_prepare(spatial_yx(data.adata), data.image, dx=settings["dx"], image_reduce=settings["reduce"],
                      budget=session_budget())
        r = prepare_section(data.adata, data.image, signal=found.signal, dx=settings["dx"],
                            feature=settings["feature"], image_reduce=settings["reduce"])
    except GalaInputError as err:
        raise DataError(scrub_paths(str(err))) from None
    extra = [w for w in found.warnings if w not in data.notes]
    st.session_state[state.RASTERS] = (key, r, extra)
    return r


def raster_warnings() -> list[str]:
    """Warnings about the current rasters' signal (e.g. all-zero counts → cell density)."""
    cached = state.get(state.RASTERS)
    return list(cached[2]) if cached is not None else []


def signal_values(data: Dataset, signal: str) -> np.ndarray:
    """Per-cell values of ``signal`` to colour the cells by (a summary of several channels; see
    :func:`gala_engine.io.cell_signal`), computed once per dataset and signal (pca is not redone on every rerun)."""
    return state.memo("signal_values", (data.uid, signal), lambda: colour_values(data, signal))


def colour_values(data: Dataset, colour: str) -> np.ndarray:
    """Per-cell values to colour the cells by; all ones when ``colour`` cannot be computed (e.g. negative X)."""
    try:
        return cell_signal(data.adata, colour)
    except GalaInputError:
        return np.ones(data.adata.n_obs)
