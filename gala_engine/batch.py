"""Align one section from files, and many sections in parallel on Dask distributed.

:func:`align_files` is the CLI's ``align`` path (the same engine path as the app); :func:`run_batch`
maps it over a manifest on a Dask cluster (a ``LocalCluster`` unless a scheduler address is given).
"""

from __future__ import annotations

import csv
import io
import os
import re
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import constants
from .errors import GalaInputError
from .events import ProgressCallback
from .features import check_feature
from .params import AlignParams
from .provenance import image_record

__all__ = ["SUMMARY_COLUMNS", "ManifestRow", "align_files", "read_manifest", "run_batch", "section_outputs",
           "write_summary"]

SUMMARY_COLUMNS = ("section", "status", "fitness", "qc", "runtime_s", "error", "output")  # qc: the quality verdict


def report_paths(report_dir: str | os.PathLike[str], name: str) -> list[Path]:
    """The files :func:`gala_engine.report.write_report` writes into ``report_dir``."""
    return [Path(report_dir) / f"{name}.png", Path(report_dir) / f"{name}.json"]


def _report_folder(report_dir: Path, label: str) -> None:
    """``report_dir`` is a folder, or is made one (its parent must exist); refused when it is a file."""
    if report_dir.exists() and not report_dir.is_dir():
        raise GalaInputError(f"{label} {report_dir} is a file, not a folder; give a folder for the report.")
    if not report_dir.exists():
        if not report_dir.parent.is_dir():
            raise GalaInputError(f"{label}: the folder {report_dir.parent} does not exist; create it first.")
        try:
            report_dir.mkdir()
        except OSError as exc:
            raise GalaInputError(f"{label}: cannot create {report_dir} ({exc.strerror or exc}).") from None


def align_files(
    image: str | os.PathLike[str],
    h5ad: str | os.PathLike[str],
    out: str | os.PathLike[str],
    params: AlignParams | None = None,
    *,
    signal: str = constants.SIGNAL_TOTAL_COUNTS,
    dx: float | None = None,
    feature: str = "auto",
    max_side: int | None = 4096,
    report_dir: str | os.PathLike[str] | None = None,
    report_name: str = "gala_report",
    progress: ProgressCallback | None = None,
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str] | None] = (),
    channel: int | None = None,
    series: int | None = None,
    plane: int | None = None,
    landmarks: str | os.PathLike[str] | None = None,
    landmarks_mode: str = "init",
    landmarks_fit: str = "similarity",
    init_transform: str | os.PathLike[str] | None = None,
    pixel_size: float | None = None,
    xenium_matrix: bool = True,
    csv: str | os.PathLike[str] | None = None,
    zarr: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Align the cells in ``h5ad`` (µm) to ``image`` and write the aligned ``.h5ad`` to ``out``.

    ``out`` gets ``obsm['spatial_he']`` (x, y in full-resolution image pixels) and ``uns['gala']``,
    written atomically. With ``report_dir``, a quality report (PNG + JSON,
    :func:`gala_engine.report.write_report`) is written there. Before any work, every output is checked
    (:func:`gala_engine.outputs.check_outputs`): not an input (``image``, ``h5ad`` or a path in
    ``protect``), not a folder or special file, not an existing file unless ``overwrite``, in a writable
    folder. Should the write still fail at the end, the result is kept in the temporary folder and the
    error says where. ``channel`` / ``series`` / ``plane`` choose what of the image is read
    (:func:`gala_engine.io.read_image`).

    Landmarks and imported transforms (:mod:`gala_engine.landmarks`): ``landmarks`` is a pairs CSV (GALA's
    or Xenium Explorer's keypoints); ``landmarks_mode="init"`` starts from their affine (``landmarks_fit``
    "similarity" or "affine") and keeps the refinement only where it fits them about as well
    (:func:`gala_engine.manual.refine_from_landmarks`); ``"check"`` only reports their error.
    ``init_transform`` is a Xenium Explorer transformation-matrix CSV to start from (``pixel_size`` µm per
    Xenium pixel, 0.2125 by default). With ``xenium_matrix``, the result's affine is written next to
    ``out`` as ``<out stem>_xenium_matrix.csv`` (Xenium Explorer's format; checked like ``out``).

    ``out`` also holds the image for scanpy / squidpy (``uns['spatial']['gala_he']``,
    :func:`gala_engine.exports.add_spatial_image`) and what a replay needs (``uns['gala']['replay']``,
    :mod:`gala_engine.replay`). ``csv``: also write the cells as CSV (:func:`gala_engine.exports.cells_csv_text`);
    ``zarr``: also a SpatialData store (:func:`gala_engine.sdata.write_spatialdata`).

    The inputs are checked first (:func:`gala_engine.checks.check_cells` / ``check_image``): blocking
    problems raise :class:`GalaInputError` before any work; all-zero counts fall back to cell density.

    Returns
    -------
    dict
        ``fitness``, ``score``, ``runtime_s`` (the engine's), ``device``, ``output``, ``warnings``
        (list of str), ``qc`` (the quality flags, :func:`gala_engine.qc.quality_flags`) and, with a report,
        ``report`` (the metrics).
    """
    from . import checks, io, section
    from .outputs import check_outputs, write_or_rescue

    image, h5ad, out = Path(image), Path(h5ad), Path(out)
    outputs: list[tuple[str, Path]] = [("--out", out)]
    if xenium_matrix:
        from .landmarks import xenium_matrix_path

        outputs.append(("the Xenium Explorer matrix beside --out (--no-xenium-matrix: none)", xenium_matrix_path(out)))
    if report_dir is not None:
        _report_folder(Path(report_dir), "--report")
        outputs += [("--report", p) for p in report_paths(report_dir, report_name)]
    if csv is not None:
        outputs.append(("--csv", Path(csv)))
    inputs = [p for p in (image, h5ad, *protect, landmarks, init_transform) if p is not None]
    check_outputs(outputs, inputs, overwrite=overwrite)
    if zarr is not None:
        from .outputs import check_store_output

        if any(Path(zarr).resolve() == Path(p).resolve() for _, p in outputs):
            raise GalaInputError(f"--zarr {zarr} is also another output; give it its own name.")
        check_store_output("--zarr", zarr, inputs, overwrite=overwrite)
    check_feature(feature)
    if dx is not None and not dx > 0:
        raise GalaInputError(f"dx must be a positive pixel size in µm, got {dx}.")
    params = params or AlignParams()
    adata = io.read_cells(h5ad)
    img = io.read_image(image, max_side=max_side, channel=channel, series=series, plane=plane)
    from .replay import file_record

    files = {"image": file_record(image), "cells": file_record(h5ad)}  # the files as read (for a replay)
    found = checks.check_cells(adata, signal=signal, name=h5ad.name)
    warnings = found.warnings + checks.check_image(img, name=image.name)
    from . import landmarks as lmk

    extra = lmk.prepare_inputs(img.full_shape, landmarks=landmarks, mode=landmarks_mode, fit=landmarks_fit,
                               init_transform=init_transform, pixel_size=pixel_size, out=out,
                               protect=inputs, write_matrix=xenium_matrix)
    rasters = section.prepare_section(adata, img, signal=found.signal, dx=dx, feature=feature)  # type: ignore[arg-type]
    from .signals import signal_warning

    if flat := signal_warning(adata, rasters):  # "too flat to align", naming a better candidate
        warnings.append(flat)
    if extra.refine_from is not None:
        from .manual import refine_from_landmarks

        refinement = refine_from_landmarks(rasters, extra.refine_from, params, kind=extra.fit, progress=progress)
        result, extra.message = refinement.result, refinement.message
    else:
        result = section.align_section(rasters, params, init_A=extra.init_A, progress=progress)
    from .qc import assess

    quality = assess(rasters, result, io.spatial_yx(adata)[:, ::-1])  # flags + per-cell confidence, after the fact
    # uns['gala']['image']: which image, its size and checksum (hashed once, for the replay record)
    record = {**image_record(None, name=files['image']['name'], full_shape=img.full_shape),
              'bytes': files['image']['bytes'], 'sha256': files['image']['sha256']}
    aligned = _aligned_outputs(adata, img, rasters, result, image=image, h5ad=h5ad, signal=signal, dx=dx,
                               feature=feature, max_side=max_side, channel=channel, series=series, plane=plane,
                               landmarks=(landmarks, landmarks_mode, landmarks_fit, init_transform, pixel_size),
                               pairs=extra.pairs, params=params, files=files, warnings=warnings, quality=quality,
                               image_info=record)
    from .exports import write_aligned_h5ad

    write_or_rescue(lambda p: write_aligned_h5ad(aligned, p, protect=inputs), out, what="the aligned .h5ad")
    summary: dict[str, Any] = {
        "fitness": result.fitness,
        "score": result.score,
        "runtime_s": result.runtime_s,
        "device": result.device,
        "output": str(out),
        "warnings": warnings,
        "qc": quality["qc"],
        **extra.outputs(result, adata),
    }
    if csv is not None or zarr is not None:
        summary.update(_extra_outputs(aligned, img, result, out, csv=csv, zarr=zarr, protect=inputs,
                                      overwrite=overwrite))
    if report_dir is not None:
        from .report import write_report

        try:
            summary["report"] = write_report(
                adata,
                img,
                rasters,
                result,
                report_dir,
                name=report_name,
                inputs={"image": str(image), "h5ad": str(h5ad), "output": str(out)},
                landmarks=extra.pairs,
                quality=quality,
            )
        except OSError as exc:
            raise GalaInputError(
                f"wrote {out}, but the report could not be written into {report_dir} ({exc.strerror or exc}); "
                "free space or fix the folder, then run again with --report elsewhere."
            ) from None
    return summary


def _extra_outputs(aligned, img, result, out: Path, *, csv, zarr, protect: list, overwrite: bool) -> dict[str, str]:
    """Write the cells CSV and / or the SpatialData store; a late failure says what was written already."""
    from .exports import write_cells_csv
    from .sdata import write_spatialdata

    done: dict[str, str] = {}
    for key, path, write in (("csv", csv, lambda: write_cells_csv(aligned, csv, protect=protect)),
                             ("zarr", zarr, lambda: write_spatialdata(aligned, img, result, zarr, overwrite=overwrite))):
        if path is None:
            continue
        try:
            done[key] = str(write())
        except (OSError, ValueError, TypeError, KeyError) as exc:  # disk full; spatialdata refusing the table
            if isinstance(exc, GalaInputError):
                raise
            reason = getattr(exc, "strerror", None) or f"{type(exc).__name__}: {exc}"
            raise GalaInputError(f"wrote {out}, but --{key} {path} could not be written ({reason}); fix that and "
                                 f"run again, or drop --{key}.") from None
    return done


def _aligned_outputs(adata, img, rasters, result, *, image: Path, h5ad: Path, signal: str, dx, feature: str,
                     max_side, channel, series, plane, landmarks: tuple, pairs, params: AlignParams,
                     files: dict[str, dict], warnings: list[str], quality: dict | None = None,
                     image_info: dict | None = None):
    """The aligned AnnData to write: :func:`gala_engine.section.aligned_adata` (with the ``quality`` flags and
    per-cell confidence, :func:`gala_engine.qc.assess`) + the image for scanpy/squidpy
    (``uns['spatial']['gala_he']``) + the replay record (``uns['gala']['replay']``); appends to ``warnings``."""
    from . import section
    from .exports import add_spatial_image
    from .replay import file_record, run_record

    lm_path, lm_mode, lm_fit, init_path, pixel_size = landmarks
    lm_rec = None
    if lm_path is not None or init_path is not None:
        lm_rec = {"mode": lm_mode, "fit": lm_fit, "pixel_size": pixel_size,
                  "landmarks": file_record(lm_path) if lm_path is not None else {},
                  "init_transform": file_record(init_path) if init_path is not None else {}}
    aligned = section.aligned_adata(adata, result, landmarks=pairs, quality=quality, image=image_info,
                                     rasters=rasters)
    aligned.uns[constants.UNS_KEY]["replay"] = run_record(
        image=files["image"], cells=files["cells"], image_full_shape=img.full_shape,
        image_loaded_shape=img.pixels.shape, image_scale=img.scale, max_side=max_side, channel=channel,
        series=series, plane=plane, signal=signal, signal_used=rasters.signal, feature=feature,
        feature_used=rasters.feature, dx=dx, dx_used=rasters.dx, seed=int(result.params.get("random_seed", 0)),
        n_cells=adata.n_obs, landmarks=lm_rec, params=params.to_dict())
    warnings += add_spatial_image(aligned, img, result.A)
    return aligned


# ------------------------------------------------------------------------------------- manifest


@dataclass
class ManifestRow:
    """One section of a batch: input paths (absolute), its name, and its parameters."""

    section: str
    image: str
    h5ad: str
    params: dict[str, Any] = field(default_factory=dict)  # AlignParams.to_dict() of this row
    options: dict[str, Any] = field(default_factory=dict)  # signal / dx / feature / channel / series / plane
    error: str = ""  # a problem found while reading the manifest (the row then fails alone)
    params_path: str = ""  # the row's .toml parameter file, if any (an input: never overwritten)


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("._") or "section"


def _decode_text(data: bytes, what: str) -> str:
    """Text of a CSV saved by any common tool: UTF-8 (with or without BOM), UTF-16 (BOM), or Windows-1252."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise GalaInputError(f"{what} is damaged UTF-16 text; save it again as UTF-8 CSV.") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    if b"\x00" in data:
        raise GalaInputError(f"{what} is not text (it holds NUL bytes); save it as a UTF-8 CSV.")
    return data.decode("cp1252", errors="replace")


def _row_params(value: str, base_dir: Path, base: AlignParams) -> AlignParams:
    from .paramfile import loads_params, read_params

    value = value.strip()
    if not value:
        return base
    if value.lower().endswith(".toml"):
        p = Path(value)
        return read_params(p if p.is_absolute() else base_dir / p, base=base)
    # inline: "num_generations=40; ga_restarts=2"
    return loads_params("\n".join(part.strip() for part in value.split(";")), source="manifest params", base=base)


def read_manifest(path: str | os.PathLike[str], *, base: AlignParams | None = None) -> list[ManifestRow]:
    """Read a batch manifest CSV.

    Columns: ``image``, ``h5ad`` (required; relative paths are relative to the manifest's folder),
    ``section`` (optional name; default the ``.h5ad`` file's stem), ``params`` (optional: a ``.toml``
    file, or inline ``name=value; name=value`` in TOML syntax), and optional ``signal``, ``dx``,
    ``feature``, ``channel``, ``series``, ``plane``, ``landmarks`` (a pairs CSV), ``landmarks_mode``
    (init / check) and ``init_transform`` (a Xenium Explorer matrix CSV). The file may be UTF-8, UTF-16 (with BOM) or
    Windows-1252; section names are made unique (case-insensitively). A row with a problem (bad parameters, empty path) is kept with its ``error`` set, so
    it fails alone; a manifest without the required columns raises.
    """
    from .io import path_problem

    path = Path(path)
    if problem := path_problem(path):
        raise GalaInputError(f"manifest {problem}")
    base = base or AlignParams()
    with io.StringIO(_decode_text(path.read_bytes(), f"manifest {path}"), newline="") as fh:
        reader = csv.DictReader(fh)
        cols = [c.strip().lower() for c in (reader.fieldnames or [])]
        missing = [c for c in ("image", "h5ad") if c not in cols]
        if missing:
            raise GalaInputError(
                f"manifest {path} lacks column(s) {missing}; it needs a header row with image,h5ad "
                "(and optionally section,params,signal,dx,feature,landmarks,landmarks_mode,init_transform)."
            )
        raw_rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in reader]
    if not raw_rows:
        raise GalaInputError(f"manifest {path} has no rows; add one line per section.")
    rows: list[ManifestRow] = []
    used: set[str] = set()  # case-folded: on case-insensitive file systems X.h5ad is x.h5ad
    for i, r in enumerate(raw_rows, start=1):
        stem = _safe_name(r.get("section") or Path(r.get("h5ad") or f"row{i}").stem)
        name, k = stem, 1
        while name.casefold() in used:
            k += 1
            name = f"{stem}_{k}"
        used.add(name.casefold())
        paths = {}
        for key in ("image", "h5ad"):
            p = Path(r.get(key, ""))
            paths[key] = str(p if p.is_absolute() else (path.parent / p)) if r.get(key) else ""
        row = ManifestRow(name, paths["image"], paths["h5ad"])
        try:
            if not row.image or not row.h5ad:
                raise GalaInputError(f"row {i} has an empty image or h5ad path.")
            row.params = _row_params(r.get("params", ""), path.parent, base).to_dict()
            value = r.get("params", "").strip()
            if value.lower().endswith(".toml"):
                row.params_path = str(Path(value) if Path(value).is_absolute() else path.parent / value)
            if r.get("signal"):
                row.options["signal"] = r["signal"]
            if r.get("feature"):
                row.options["feature"] = r["feature"]
            for key in ("landmarks", "init_transform"):  # landmark pairs / a Xenium Explorer matrix per section
                if r.get(key):
                    p = Path(r[key])
                    row.options[key] = str(p if p.is_absolute() else path.parent / p)
            if r.get("landmarks_mode"):
                row.options["landmarks_mode"] = r["landmarks_mode"]
            for key in ("channel", "series", "plane"):  # which part of the image (read_image)
                if r.get(key):
                    if not r[key].isdigit():
                        raise GalaInputError(f"row {i}: {key} must be a whole number ≥ 0, got {r[key]!r}.")
                    row.options[key] = int(r[key])
            if r.get("dx"):
                try:
                    row.options["dx"] = float(r["dx"])
                except ValueError:
                    raise GalaInputError(f"row {i}: dx must be a number (µm), got {r['dx']!r}.") from None
        except GalaInputError as exc:
            row.error = str(exc)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- batch


def section_outputs(out_dir: str | os.PathLike[str], section: str, *, csv: bool = False,
                    zarr: bool = False) -> dict[str, Path]:
    """The per-section files a batch writes into ``out_dir``: ``h5ad`` (``<section>.h5ad``), ``xenium_matrix``
    (``<section>_xenium_matrix.csv``) and, when asked, ``csv`` (``<section>.csv``) and ``zarr`` (``<section>.zarr``)."""
    out = Path(out_dir)
    paths = {"h5ad": out / f"{section}.h5ad", "xenium_matrix": out / f"{section}_xenium_matrix.csv"}
    if csv:
        paths["csv"] = out / f"{section}.csv"
    if zarr:
        paths["zarr"] = out / f"{section}.zarr"
    return paths


def _check_batch_outputs(rows: list[ManifestRow], out: Path, *, report: bool, overwrite: bool,
                         protect: Iterable[str | os.PathLike[str] | None], csv: bool = False,
                         zarr: bool = False) -> None:
    """Every file the batch writes, checked against every row's inputs before any section starts."""
    from .outputs import check_outputs, check_store_output

    outputs: list[tuple[str, Path]] = [("summary", out / "summary.csv")]
    if report:
        _report_folder(out / "reports", "--out")
    stores: list[tuple[str, Path]] = []
    labels = {"h5ad": "output", "xenium_matrix": "Xenium matrix", "csv": "cells CSV (--csv)"}
    for row in rows:
        if row.error:
            continue
        paths = section_outputs(out, row.section, csv=csv, zarr=zarr)
        outputs += [(f"section {row.section!r}: {labels[k]}", p) for k, p in paths.items() if k != "zarr"]
        if "zarr" in paths:
            stores.append((f"section {row.section!r}: SpatialData store (--zarr)", paths["zarr"]))
        if report:
            outputs += [(f"section {row.section!r}: report", p) for p in report_paths(out / "reports", row.section)]
    inputs = [p for row in rows for p in (row.image, row.h5ad, row.params_path, row.options.get("landmarks"),
                                          row.options.get("init_transform"))] + list(protect)
    check_outputs(outputs, inputs, overwrite=overwrite)
    for label, store in stores:  # a folder each: never an input, nor a folder holding one
        check_store_output(label, store, inputs, overwrite=overwrite)


def _failed(section: str, error: str) -> dict[str, Any]:
    """A summary row for a section that did not align (the summary CSV's columns, all present)."""
    return {"section": section, "status": "failed", "fitness": "", "qc": "", "runtime_s": "", "error": error,
            "output": ""}


def _align_row(row: ManifestRow, out_dir: str, report: bool, torch_threads: int | None,
               overwrite: bool = False, csv: bool = False, zarr: bool = False) -> dict[str, Any]:
    """Worker task: align one row; never raises (a failure is a summary row)."""
    start = time.perf_counter()
    rec = _failed(row.section, row.error)
    if row.error:
        return rec
    try:
        if torch_threads:
            import torch

            torch.set_num_threads(int(torch_threads))
        paths = section_outputs(out_dir, row.section, csv=csv, zarr=zarr)
        res = align_files(
            row.image,
            row.h5ad,
            paths["h5ad"],
            AlignParams.from_dict(row.params),
            report_dir=Path(out_dir) / "reports" if report else None,
            report_name=row.section,
            overwrite=overwrite,
            csv=paths.get("csv"),
            zarr=paths.get("zarr"),
            **row.options,
        )
        rec.update(status="ok", fitness=f"{res['fitness']:.6g}", qc=res["qc"]["verdict"], error="", output=res["output"])
    except GalaInputError as exc:
        rec["error"] = str(exc)
    except Exception as exc:  # noqa: BLE001 - one section must never stop the others
        last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
        where = f" (at {Path(last[0].filename).name}:{last[0].lineno})" if last else ""
        rec["error"] = f"{type(exc).__name__}: {exc}{where}"
    rec["runtime_s"] = f"{time.perf_counter() - start:.2f}"
    rec["error"] = " ".join(str(rec["error"]).split())  # one line in the CSV
    return rec


def write_summary(records: list[dict[str, Any]], path: str | os.PathLike[str]) -> Path:
    """Write the batch summary CSV (columns :data:`SUMMARY_COLUMNS`) atomically."""
    from .outputs import temp_prefix

    dest = Path(path)
    tmp = dest.with_name(f"{temp_prefix(dest)}summary.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(SUMMARY_COLUMNS), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(records)
    os.replace(tmp, dest)
    return dest


def run_batch(
    rows: list[ManifestRow],
    out_dir: str | os.PathLike[str],
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    processes: bool = True,
    report: bool = False,
    on_done: Callable[[dict[str, Any]], None] | None = None,
    connect_timeout: str = "10s",
    overwrite: bool = False,
    protect: Iterable[str | os.PathLike[str] | None] = (),
    csv: bool = False,
    zarr: bool = False,
) -> list[dict[str, Any]]:
    """Align every row on Dask distributed and write ``out_dir/summary.csv``.

    Parameters
    ----------
    rows
        From :func:`read_manifest`.
    out_dir
        Receives ``<section>.h5ad`` per section (:func:`section_outputs`), ``reports/`` (with ``report``) and
        ``summary.csv``.
    scheduler
        Address of a running Dask scheduler (e.g. ``tcp://host:8786``); its workers must see the
        input paths and ``out_dir``. ``None``: a ``LocalCluster`` on this machine.
    n_workers
        LocalCluster workers (default: min(sections, CPUs / 2, 4), at least 1); one thread each.
    processes
        LocalCluster workers as processes (the engine's GA seeds NumPy's global state, so threads
        within one process are not independent).
    on_done
        Called with each summary record as its section finishes (e.g. a progress bar).
    connect_timeout
        How long to try reaching ``scheduler``.
    overwrite
        Replace existing outputs (never inputs): without it, a batch whose outputs exist is refused.
    protect
        More inputs to never overwrite (the manifest, the base parameter file).
    csv, zarr
        Also write each section's cells as ``<section>.csv`` and / or a SpatialData store ``<section>.zarr``
        beside its ``.h5ad`` (as ``align --csv`` / ``--zarr``, :func:`align_files`; :func:`section_outputs`).

    Raises
    ------
    GalaInputError
        Before any work: an output is any row's input or another protected file, a folder or special
        file, exists (without ``overwrite``), or ``out_dir`` cannot be written.

    Returns
    -------
    list of dict
        One record per row, in manifest order (see :data:`SUMMARY_COLUMNS`).
    """
    from dask.distributed import Client, LocalCluster, as_completed

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GalaInputError(f"--out {out} is a file; give a folder.")
    out.mkdir(parents=True, exist_ok=True)
    _check_batch_outputs(rows, out, report=report, overwrite=overwrite, protect=protect, csv=csv, zarr=zarr)
    records: dict[int, dict[str, Any]] = {}
    cluster = None
    torch_threads: int | None = None
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise GalaInputError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
    else:
        cpus = os.cpu_count() or 1
        n = n_workers or max(1, min(len(rows), cpus // 2, 4))
        torch_threads = max(1, cpus // n)
        cluster = LocalCluster(
            n_workers=n, threads_per_worker=1, processes=processes, dashboard_address=None, silence_logs=40
        )
        client = Client(cluster)
    try:
        futures = {}
        for i, row in enumerate(rows):
            fut = client.submit(
                _align_row,
                row,
                str(out.resolve()),
                report,
                torch_threads if processes else None,
                overwrite,
                csv,
                zarr,
                key=f"gala-align-{i}-{row.section}",
                pure=False,
            )
            futures[fut] = i
        for fut in as_completed(futures):
            i = futures[fut]
            try:
                rec = fut.result()
            except Exception as exc:  # noqa: BLE001 - a worker died; the section fails alone
                rec = _failed(rows[i].section, " ".join(f"{type(exc).__name__}: {exc}".split()))
            records[i] = rec
            if on_done is not None:
                on_done(rec)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    ordered = [records[i] for i in range(len(rows))]
    from .outputs import write_or_rescue

    write_or_rescue(lambda p: write_summary(ordered, p), out / "summary.csv", what="the batch summary")
    return ordered
