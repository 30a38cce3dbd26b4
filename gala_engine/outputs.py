"""Output paths: checked before any work, written without losing anything.

Every command (``align``, ``batch``, ``params``, the API's :func:`gala_engine.batch.align_files` and
:func:`~gala_engine.batch.run_batch`) calls :func:`check_outputs` with all the paths it will write and
all the paths it reads, before it starts: an output may not be an input, a folder, a special file
(FIFO, device, socket), an existing file unless ``overwrite``, or in a folder that cannot be written.
:func:`write_or_rescue` writes a finished result and, when the destination fails late (full disk,
permissions changed during the run), keeps it in the temporary folder and says where. Temporary files
are named ``.<name>.<pid>-<random>.tmp``; those of processes that are gone (``kill -9``) are removed by
:func:`clean_stale_temps`, which :func:`check_outputs` runs for every output.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .errors import GalaInputError

__all__ = [
    "check_outputs",
    "check_store_output",
    "clean_stale_temps",
    "is_zarr_store",
    "json_default",
    "temp_prefix",
    "write_dir_atomic",
    "write_or_rescue",
    "write_text_atomic",
]

def json_default(obj: Any) -> Any:
    """``json.dumps``' ``default``: numpy arrays as lists, numpy scalars as Python numbers, anything else as text."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    return str(obj)


_LEGACY_TEMP_AGE_S = 3600.0  # temporaries without an owner pid (older versions) are stale after an hour


def temp_prefix(dest: Path) -> str:
    """Prefix of this process's temporary files for ``dest`` (see :func:`clean_stale_temps`)."""
    return f".{dest.name}.{os.getpid()}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_stale_temps(dest: str | os.PathLike[str]) -> list[Path]:
    """Remove temporary files left beside ``dest`` by writers that died (returns those removed)."""
    dest = Path(dest)
    removed: list[Path] = []
    head = f".{dest.name}."
    try:
        candidates = [p for p in dest.parent.iterdir() if p.name.startswith(head) and p.name.endswith(".tmp")]
    except OSError:
        return removed
    for p in candidates:
        middle = p.name[len(head) : -len(".tmp")]
        m = re.match(r"(\d+)-", middle)
        try:
            st = p.lstat()
            if not stat.S_ISREG(st.st_mode):
                continue
            stale = (not _pid_alive(int(m.group(1)))) if m else time.time() - st.st_mtime > _LEGACY_TEMP_AGE_S
            if stale and not (m and int(m.group(1)) == os.getpid()):
                p.unlink()
                removed.append(p)
        except OSError:
            continue
    return removed


def _same(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _probe_folder(folder: Path, label: str) -> None:
    """The folder exists and a file can be created in it (tried, not guessed from permission bits)."""
    if not folder.exists():
        raise GalaInputError(f"{label}: the folder {folder} does not exist; create it first.")
    if not folder.is_dir():
        raise GalaInputError(f"{label}: {folder} is not a folder; give a path in an existing folder.")
    try:
        fd, name = tempfile.mkstemp(prefix=".gala_write_test.", dir=folder)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise GalaInputError(
            f"{label}: cannot write into the folder {folder} ({exc.strerror or exc}); choose a writable folder."
        ) from None


def check_outputs(
    outputs: Sequence[tuple[str, str | os.PathLike[str]]],
    inputs: Iterable[str | os.PathLike[str] | None] = (),
    *,
    overwrite: bool = False,
) -> None:
    """Refuse, before any work, output paths that would lose or damage something.

    Parameters
    ----------
    outputs
        ``(label, path)`` of every file the command will write; ``label`` names it in messages (e.g.
        ``"--out"``).
    inputs
        Every file the command reads (``None`` entries are skipped).
    overwrite
        Allow replacing existing regular files (never inputs, folders or special files).

    Raises
    ------
    GalaInputError
        An output is an input, a folder, a special file, an existing file (without ``overwrite``), two
        outputs are the same file, or an output's folder is missing or cannot be written.
    """
    ins = [Path(p) for p in inputs if p]
    seen: dict[Path, str] = {}
    probed: set[Path] = set()
    for label, raw in outputs:
        path = Path(raw)
        for p in ins:
            if _same(path, p):
                raise GalaInputError(f"{label} {path} is an input file ({p.name}); choose another output name.")
        key = path.resolve()
        if key in seen:
            raise GalaInputError(f"{label} and {seen[key]} are the same file {path}; give them different names.")
        seen[key] = label
        try:
            st = path.stat()
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise GalaInputError(f"{label} {path} cannot be used ({exc.strerror or exc}); choose another path.") from None
        if st is not None:
            if stat.S_ISDIR(st.st_mode):
                raise GalaInputError(f"{label} {path} is a folder; give a file name.")
            if not stat.S_ISREG(st.st_mode):
                raise GalaInputError(f"{label} {path} is {_kind(st.st_mode)}; give a regular file name.")
            if not overwrite:
                raise GalaInputError(
                    f"{label} {path} already exists; pass --overwrite to replace it, or choose another name."
                )
        parent = path.parent if str(path.parent) else Path(".")
        if parent.resolve() not in probed:
            _probe_folder(parent, label)
            probed.add(parent.resolve())
        clean_stale_temps(path)


def write_or_rescue(write: Callable[[Path], Path], dest: str | os.PathLike[str], *, what: str = "the result") -> Path:
    """``write(dest)``; if that fails with an OS error, ``write`` a copy into the temporary folder.

    Raises
    ------
    GalaInputError
        The destination could not be written; the message says where the copy was kept (or that no copy
        could be kept either).
    """
    dest = Path(dest)
    try:
        return write(dest)
    except OSError as exc:
        reason = exc.strerror or str(exc)
    for folder in (Path(tempfile.gettempdir()), Path.home()):
        rescue = folder / f"gala_rescued_{time.strftime('%Y%m%d-%H%M%S')}_{os.getpid()}_{dest.name}"
        try:
            write(rescue)
        except OSError:
            continue
        raise GalaInputError(
            f"could not write {what} to {dest} ({reason}); it was kept in {rescue}: move it from there "
            "(and free space or fix the folder's permissions for the next run)."
        )
    raise GalaInputError(
        f"could not write {what} to {dest} ({reason}), nor a copy into {tempfile.gettempdir()}; free disk space "
        "and run again."
    )


def write_text_atomic(text: str, dest: str | os.PathLike[str], *, protect: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """Write UTF-8 ``text`` to ``dest`` via a temporary file in the same folder and a rename (readers never see
    a half-written file); never over a path in ``protect``."""
    dest = Path(dest)
    for p in protect:
        if p and _same(dest, Path(p)):
            raise GalaInputError(f"refusing to overwrite the input file {p}; choose another output name.")
    clean_stale_temps(dest)
    fd, tmp_name = tempfile.mkstemp(prefix=temp_prefix(dest), suffix=".tmp", dir=dest.parent if str(dest.parent) else ".")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dest


# --- folders (a SpatialData .zarr store is a folder) -------------------------------------------------------

_STORE_MARKERS = ("zarr.json", ".zgroup", ".zattrs")  # a zarr store's top-level files


def is_zarr_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding a zarr store (v2 or v3) at its top."""
    path = Path(path)
    return path.is_dir() and any((path / m).is_file() for m in _STORE_MARKERS)


def check_store_output(label: str, dest: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str] | None] = (),
                       *, overwrite: bool = False) -> None:
    """Refuse, before any work, a folder output (a ``.zarr`` store) that would lose something: an input or a
    folder holding an input, an existing path unless ``overwrite`` — and even then only an existing zarr store
    is replaced, never another folder or a file — or a folder that cannot be written."""
    dest = Path(dest)
    for p in (Path(p) for p in inputs if p):
        if _same(dest, p) or dest.resolve() in p.resolve().parents:
            raise GalaInputError(f"{label} {dest} is (or holds) the input {p.name}; choose another output name.")
    if dest.exists() or dest.is_symlink():
        if not overwrite:
            raise GalaInputError(f"{label} {dest} already exists; pass --overwrite to replace it, or choose another name.")
        if dest.is_symlink() or not is_zarr_store(dest):
            raise GalaInputError(f"{label} {dest} exists and is not a zarr store; it is never replaced: choose another "
                                 "name.")
    parent = dest.parent if str(dest.parent) else Path(".")
    _probe_folder(parent, label)
    _clean_stale_temp_dirs(dest)


def _clean_stale_temp_dirs(dest: Path) -> None:
    """Remove temporary store folders (``.<name>.<pid>-<random>.tmp``) left beside ``dest`` by dead writers."""
    import shutil

    head = f".{dest.name}."
    try:
        candidates = [p for p in dest.parent.iterdir() if p.name.startswith(head) and p.name.endswith(".tmp")]
    except OSError:
        return
    for p in candidates:
        m = re.match(r"(\d+)-", p.name[len(head) : -len(".tmp")])
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))) and p.is_dir() \
                and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)


def write_dir_atomic(write: Callable[[Path], Any], dest: str | os.PathLike[str], *, overwrite: bool = False) -> Path:
    """``write(tmp)`` into a new temporary folder beside ``dest``, then rename it to ``dest``: readers never see
    a half-written store. With ``overwrite``, an existing zarr store at ``dest`` is replaced (moved aside first,
    removed after the rename); anything else there is refused (:func:`check_store_output`)."""
    import shutil

    dest = Path(dest)
    check_store_output("output", dest, overwrite=overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), suffix=".tmp", dir=dest.parent if str(dest.parent) else "."))
    old: Path | None = None
    try:
        inner = tmp / dest.name
        write(inner)
        if dest.exists():
            old = Path(tempfile.mkdtemp(prefix=temp_prefix(dest), suffix=".tmp", dir=tmp.parent))
            os.replace(dest, old / dest.name)
        os.replace(inner, dest)
    except BaseException:
        if old is not None and (old / dest.name).exists() and not dest.exists():
            os.replace(old / dest.name, dest)  # put the previous store back
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        raise
    shutil.rmtree(tmp, ignore_errors=True)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dest
