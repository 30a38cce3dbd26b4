"""Refuse HDF5 files that reach outside themselves, before anndata (or h5py's high level) reads them.

An uploaded ``.h5ad`` is untrusted: HDF5 can make a reader open other files on the server — external
links (a group member that lives in another file), external storage (a dataset whose bytes are read
from raw files), virtual datasets (a dataset mapped from other HDF5 files), and filter plugins (a
compression filter loaded as a shared library from ``HDF5_PLUGIN_PATH``). :func:`check_self_contained`
walks every link of the file with the low-level API, never following an external or soft link and never
reading a dataset's data, and raises :class:`~gala_engine.errors.GalaInputError` at the first such
feature. Soft links are allowed only when they point inside the file (they are paths in it).
"""

from __future__ import annotations

import os
from typing import Any

from .errors import GalaInputError

__all__ = ["check_self_contained"]

_MAX_OBJECTS = 200_000  # links walked before the file is refused as unreasonable for an .h5ad
# filters h5py / HDF5 ship with (no plugin library is loaded for these): deflate, shuffle, fletcher32,
# szip, nbit, scaleoffset, lzf
_BUILTIN_FILTERS = frozenset({1, 2, 3, 4, 5, 6, 32000})
_WHAT_TO_DO = (
    "Such files make the reader open other files; save a self-contained copy with anndata "
    "(adata = anndata.read_h5ad(path); adata.write_h5ad('cells.h5ad')) on your own machine and load that."
)


def check_self_contained(path: str | os.PathLike[str], name: str | None = None) -> None:
    """Raise :class:`GalaInputError` when the HDF5 file at ``path`` refers to anything outside itself.

    Parameters
    ----------
    path
        An HDF5 file (already known to be HDF5).
    name
        How to call the file in messages (default: ``path``).
    """
    import h5py

    label = name or str(path)
    try:
        with h5py.File(path, "r") as f:
            _walk(f.id, label)
    except GalaInputError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        if "truncated" in str(exc).lower():
            raise truncated_error(label, exc) from None
        raise GalaInputError(
            f"{label} is HDF5 but its structure cannot be read ({type(exc).__name__}: {exc}); "
            "re-save it with adata.write_h5ad(...)."
        ) from None


def _refuse(label: str, where: str, what: str) -> GalaInputError:
    return GalaInputError(f"{label} is refused: '{where}' is {what}. {_WHAT_TO_DO}")


def _walk(fid: Any, label: str) -> None:
    from h5py import h5, h5g, h5l, h5o

    root = h5g.open(fid, b"/")
    seen: set[tuple[int, ...]] = set()
    stack: list[tuple[Any, str]] = [(root, "/")]
    count = 0
    while stack:
        group, gpath = stack.pop()
        names: list[bytes] = []
        group.links.iterate(names.append, idx_type=h5.INDEX_NAME)
        for raw in names:
            count += 1
            if count > _MAX_OBJECTS:
                raise GalaInputError(
                    f"{label} has more than {_MAX_OBJECTS:,} HDF5 objects, far more than an .h5ad needs; "
                    "re-save it with adata.write_h5ad(...)."
                )
            where = gpath.rstrip("/") + "/" + raw.decode("utf-8", "replace")
            info = group.links.get_info(raw)
            if info.type == h5l.TYPE_EXTERNAL:
                raise _refuse(label, where, "an external link to another file")
            if info.type == h5l.TYPE_SOFT:
                continue  # a path inside this file: the object it names is walked where it lives
            if info.type != h5l.TYPE_HARD:
                raise _refuse(label, where, "a user-defined link (it may point outside the file)")
            obj = h5o.open(group, raw)
            oinfo = h5o.get_info(obj)
            key = (oinfo.fileno, oinfo.addr)
            if key in seen:  # a second hard link to an object already walked
                continue
            seen.add(key)
            if oinfo.type == h5o.TYPE_GROUP:
                stack.append((obj, where))
            elif oinfo.type == h5o.TYPE_DATASET:
                _check_dataset(obj, label, where)


def _check_dataset(dset: Any, label: str, where: str) -> None:
    from h5py import h5d

    dcpl = dset.get_create_plist()
    if dcpl.get_layout() == h5d.VIRTUAL:
        raise _refuse(label, where, "a virtual dataset mapped from other files")
    if dcpl.get_external_count() > 0:
        raise _refuse(label, where, "stored in external raw files")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in _BUILTIN_FILTERS:
            raise _refuse(label, where, f"compressed with HDF5 filter {code}, which loads a plugin library")


def truncated_error(label: str, exc: BaseException) -> GalaInputError:
    """The message for an HDF5 file that ends early (an interrupted copy, download or upload)."""
    return GalaInputError(f"{label} is truncated or damaged (the HDF5 file ends early: {exc}); an interrupted copy, "
                          "download or upload? Copy or export it again.")
