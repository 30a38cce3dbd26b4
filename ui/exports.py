"""Downloads for other tools: the aligned cells as CSV and as a SpatialData store (zipped)."""

from __future__ import annotations

import io
import tempfile
import zipfile
from pathlib import Path

from gala_engine.section import aligned_adata

from .data import Dataset, session_tmpdir


def _aligned(result, data: Dataset, quality: dict | None = None):
    return aligned_adata(data.adata, result, quality=quality)


def cells_csv_bytes(result, data: Dataset, quality: dict | None = None) -> bytes:
    """``cell_id, x_um, y_um, x_px, y_px[, confidence]`` of one run (:func:`gala_engine.exports.cells_csv_text`);
    the confidence from ``quality`` (:func:`ui.runs.run_quality`), else from the input's own column if it has one."""
    from gala_engine.exports import cells_csv_text

    return cells_csv_text(_aligned(result, data, quality)).encode("utf-8")


def spatialdata_zip_bytes(result, data: Dataset, *, name: str = "aligned", quality: dict | None = None) -> bytes:
    """The run as a SpatialData store ``<name>.zarr`` (:func:`gala_engine.sdata.write_spatialdata`), zipped: unzip,
    then ``spatialdata.read_zarr("<name>.zarr")``."""
    from gala_engine.sdata import write_spatialdata

    buf = io.BytesIO()
    with tempfile.TemporaryDirectory(dir=session_tmpdir()) as tmp:
        store = write_spatialdata(_aligned(result, data, quality), data.image, result, Path(tmp) / f"{name}.zarr")
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            for path in sorted(store.rglob("*")):
                if path.is_file():
                    zf.write(path, path.relative_to(store.parent).as_posix())
    return buf.getvalue()
