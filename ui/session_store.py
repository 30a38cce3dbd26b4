"""Sessions that survive a refresh, and session files ("Save session" / "Open session").

A session's work — where its data came from (and the uploaded files themselves), the raster settings, the
alignment settings, the runs and their results, the landmarks — is written after each script run that
changed it to a folder ``<store>/<id>/`` on the server; the id is in the page's URL (``?sid=…``), so a refresh
or a reconnect finds it again. The same layout in a zip is the session file a user saves and opens later.

Both are read back through the same checks, as hostile input: the id must be 32 hex digits (never a path);
a zip may only hold the expected member names (no folders of its own, no ``..``), within size limits that
are checked on the bytes actually read (not the sizes the zip claims); the manifest is JSON whose every
field is type- and range-checked; results go through :meth:`AlignmentResult.load_npz` (no pickle, bounded),
data files through the upload readers (``h5safety``), parameters through :class:`AlignParams`.

Old sessions expire (``GALA_SESSION_TTL_H``, default 72 h) and the store is size-capped
(``GALA_SESSION_STORE_GB``, default 4 GiB, oldest sessions removed first); a session whose uploaded files
exceed ``GALA_SESSION_MAX_MB`` (default 1024 MiB) keeps its runs but not the files.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import uuid
import weakref
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gala_engine.demo import DEMOS
from gala_engine.errors import GalaInputError
from gala_engine.outputs import json_default
from gala_engine.params import AlignParams
from gala_engine.section import AlignmentResult

FORMAT = "gala-studio-session"
VERSION = 1
MANIFEST = "manifest.json"
ROOT_ENV, TTL_ENV, STORE_CAP_ENV, SESSION_CAP_ENV = ("GALA_SESSION_DIR", "GALA_SESSION_TTL_H", "GALA_SESSION_STORE_GB",
                                                    "GALA_SESSION_MAX_MB")
ID_RE = re.compile(r"[0-9a-f]{32}")
UID_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
MEMBER_RE = re.compile(r"manifest\.json|results/run_[1-9][0-9]{0,5}\.npz|data/cells\.h5ad|data/image\.(png|jpe?g|tiff?)")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_MANIFEST_BYTES = 4 * 2**20
MAX_RESULT_BYTES = 64 * 2**20  # one compressed transform .npz (npzsafe bounds what it decompresses to)
MAX_MEMBERS = 600
MAX_RUNS = 500
MAX_TEXT = 1000
GENE_KEYS = ("angle_low", "angle_high", "sy_low", "sy_high", "sx_low", "sx_high", "ty_low", "ty_high", "tx_low",
             "tx_high")


class SessionError(Exception):
    """A session that cannot be restored or opened (message ready for the page)."""


def _env_float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return value if value > 0 and math.isfinite(value) else default


def ttl_s() -> float:
    """Seconds a session is kept after its last change."""
    return _env_float(TTL_ENV, 72.0) * 3600


def session_cap_bytes() -> int:
    """Most bytes of uploaded data one session keeps (its runs are always kept)."""
    return int(_env_float(SESSION_CAP_ENV, 1024.0) * 2**20)


def store_cap_bytes() -> int:
    """Most bytes the whole store holds; the oldest sessions are removed beyond it."""
    return int(_env_float(STORE_CAP_ENV, 4.0) * 2**30)


def store_root() -> Path:
    """The store's folder (``$GALA_SESSION_DIR``, default ``<tmp>/gala_studio_sessions``), created private."""
    root = Path(os.environ.get(ROOT_ENV, "").strip() or Path(tempfile.gettempdir()) / "gala_studio_sessions")
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def new_id() -> str:
    """A fresh session id: 128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def valid_id(text: Any) -> bool:
    """True for a well-formed id (checked before it is ever used in a path)."""
    return isinstance(text, str) and ID_RE.fullmatch(text) is not None


def session_dir(sid: str, *, root: Path | None = None) -> Path:
    """The folder of session ``sid`` (not created). Raises ValueError for a malformed id."""
    if not valid_id(sid):
        raise ValueError("malformed session id")
    return (root or store_root()) / sid


def _tree_bytes(path: Path) -> int:
    total = 0
    for p in path.rglob("*"):
        try:
            if p.is_file() and not p.is_symlink():
                total += p.stat().st_size
        except OSError:
            pass
    return total


def sweep(*, root: Path | None = None, keep: str | None = None, now: float | None = None) -> list[Path]:
    """Remove expired sessions, then the oldest ones while the store is over its size cap (never ``keep``)."""
    root = root or store_root()
    now = time.time() if now is None else now
    removed, live = [], []
    for path in root.iterdir():
        if not (path.is_dir() and not path.is_symlink() and valid_id(path.name)) or path.name == keep:
            continue
        try:
            age = now - path.stat().st_mtime
        except OSError:
            continue
        if age > ttl_s():
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        else:
            live.append((path.stat().st_mtime, path, _tree_bytes(path)))
    total = sum(size for *_, size in live) + (_tree_bytes(root / keep) if keep and valid_id(keep) else 0)
    for _, path, size in sorted(live):
        if total <= store_cap_bytes():
            break
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
        total -= size
    return removed


# ------------------------------------------------------------------------------------------------ writing


def state_keys() -> list[str]:
    """The session-state keys a session is made of (copy them into a plain dict for work outside a script run)."""
    from . import landmarks as lm
    from . import state
    from .budget import _USED

    return [state.DATA, state.SETTINGS, state.PARAMS, state.GENES, state.HISTORY, state.RESULTS, state.SELECTED_RUN,
            state.RUN_COUNTER, _USED, lm.PAIRS]


def manifest_from_state(ss: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON part of a session (everything but result arrays and data files)."""
    from . import landmarks as lm
    from . import state
    from .budget import _USED

    data = ss.get(state.DATA)
    spec: dict[str, Any] = {"kind": "none"}
    if data is not None:
        src = dict(getattr(data, "source", {}) or {})
        spec = {"kind": src.get("kind", "none"), "uid": data.uid, "name": data.name}
        if spec["kind"] == "demo":
            spec["demo"] = src.get("name")
        elif spec["kind"] == "upload":
            spec.update(cells_name=src.get("cells_name"), image_name=src.get("image_name"),
                        options=src.get("options", {}), image_suffix=Path(src.get("image_path", "x.png")).suffix.lower())
        elif spec["kind"] == "server":
            spec.update(cells=src.get("cells"), image=src.get("image"), options=src.get("options", {}))
    results = ss.get(state.RESULTS) or {}
    return {
        "format": FORMAT, "version": VERSION, "data": spec,
        "settings": dict(ss.get(state.SETTINGS) or {}), "params": dict(ss.get(state.PARAMS) or {}),
        "genes": dict(ss.get(state.GENES) or {}), "history": list(ss.get(state.HISTORY) or []),
        "results": {str(rid): uid for rid, (uid, _) in results.items()},
        "selected_run": ss.get(state.SELECTED_RUN), "run_counter": int(ss.get(state.RUN_COUNTER, 0) or 0),
        "budget_used_s": float(ss.get(_USED, 0.0) or 0.0),
        "landmarks": {uid: list(rows) for uid, rows in (ss.get(lm.PAIRS) or {}).items() if rows},
    }


def _upload_files(data: Any) -> dict[str, Path]:
    """Member name → file of an uploaded dataset's two inputs (empty for demo/server data or missing files)."""
    src = getattr(data, "source", {}) or {}
    if src.get("kind") != "upload":
        return {}
    cells, image = Path(src.get("cells_path", "")), Path(src.get("image_path", ""))
    suffix = image.suffix.lower()
    if not (cells.is_file() and image.is_file() and suffix in IMAGE_SUFFIXES):
        return {}
    return {"data/cells.h5ad": cells, f"data/image{suffix}": image}


def _atomic_write(dest: Path, payload: bytes | Path) -> None:
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        if isinstance(payload, Path):
            shutil.copyfile(payload, tmp)
        else:
            tmp.write_bytes(payload)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def save_dir(folder: Path, ss: Mapping[str, Any]) -> dict[str, Any]:
    """Write the session into ``folder`` (created): new results, the data files once, the manifest last.

    Returns the manifest written."""
    from . import state

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    (folder / "results").mkdir(exist_ok=True)
    (folder / "data").mkdir(exist_ok=True)
    manifest = manifest_from_state(ss)
    results = ss.get(state.RESULTS) or {}
    wanted = {f"run_{int(rid)}.npz" for rid in results}
    for rid, (_, result) in results.items():
        dest = folder / "results" / f"run_{int(rid)}.npz"
        if not dest.exists():
            with tempfile.TemporaryDirectory(dir=folder) as tmp:
                _atomic_write(dest, result.save_npz(Path(tmp) / "r.npz"))
    for old in (folder / "results").glob("run_*.npz"):
        if old.name not in wanted:
            old.unlink(missing_ok=True)
    files = _upload_files(ss.get(state.DATA))
    kept = manifest["data"].get("kind") == "upload" and files
    if kept:
        size = sum(p.stat().st_size for p in files.values())
        if size > session_cap_bytes():
            kept = False
            manifest["data"]["not_kept"] = f"the uploaded files ({size / 2**20:.0f} MB) exceed what a session keeps"
    marker = folder / "data" / "uid.txt"
    if kept and (not marker.is_file() or marker.read_text() != manifest["data"]["uid"]):
        for old in (folder / "data").iterdir():
            old.unlink(missing_ok=True)
        for name, src in files.items():
            dest = folder / name
            if src.resolve() != dest.resolve():
                _atomic_write(dest, src)
        _atomic_write(marker, manifest["data"]["uid"].encode())
    manifest["data"]["files"] = bool(kept)
    _atomic_write(folder / MANIFEST, json.dumps(manifest, default=json_default).encode("utf-8"))
    return manifest


def session_zip(ss: Mapping[str, Any]) -> bytes:
    """The session as a zip (the "Save session" file): manifest, result transforms, uploaded data files."""
    from . import state

    manifest = manifest_from_state(ss)
    files = _upload_files(ss.get(state.DATA)) if manifest["data"].get("kind") == "upload" else {}
    if files and sum(p.stat().st_size for p in files.values()) > session_cap_bytes():
        manifest["data"]["not_kept"] = "the uploaded files are too large for a session file"
        files = {}
    manifest["data"]["files"] = bool(files)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, tempfile.TemporaryDirectory() as tmp:
        zf.writestr(MANIFEST, json.dumps(manifest, default=json_default, indent=1), compress_type=zipfile.ZIP_DEFLATED)
        for rid, (_, result) in (ss.get(state.RESULTS) or {}).items():
            zf.write(result.save_npz(Path(tmp) / f"run_{int(rid)}.npz"), f"results/run_{int(rid)}.npz")
        for name, path in files.items():
            zf.write(path, name, compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ reading


class _DirSource:
    """Members of a store folder (ours, still checked: names, plain files, sizes)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def names(self) -> set[str]:
        out = set()
        for p in self.root.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if MEMBER_RE.fullmatch(rel) and p.is_file() and not p.is_symlink():
                out.add(rel)
        return out

    def read(self, name: str, limit: int) -> bytes:
        p = self.root / name
        if p.stat().st_size > limit:
            raise SessionError(f"'{name}' is larger than {limit:,} bytes.")
        return p.read_bytes()

    def file(self, name: str, limit: int, workdir: Path) -> Path:
        p = self.root / name
        if p.stat().st_size > limit:
            raise SessionError(f"'{name}' is larger than {limit:,} bytes.")
        return p


class _ZipSource:
    """Members of an uploaded session zip: only the expected names, each read with a hard size limit."""

    def __init__(self, raw: bytes) -> None:
        try:
            self.zf = zipfile.ZipFile(io.BytesIO(raw))
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as err:
            raise SessionError(f"it is not a GALA session file (not a readable zip: {err}).") from None
        if len(infos) > MAX_MEMBERS:
            raise SessionError(f"it holds {len(infos)} entries; a session file holds at most {MAX_MEMBERS}.")
        self.infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            if info.is_dir() and info.filename.rstrip("/") in ("results", "data"):
                continue
            if not MEMBER_RE.fullmatch(info.filename):
                shown = info.filename[:80].encode("ascii", "replace").decode()
                raise SessionError(f"it holds an unexpected entry '{shown}' (only manifest.json, results/run_<n>.npz "
                                   "and data/cells.h5ad, data/image.<ext> belong in a session file).")
            if info.filename in self.infos:
                raise SessionError(f"it holds '{info.filename}' twice.")
            if info.flag_bits & 0x1:
                raise SessionError("it is encrypted; save the session again from GALA Studio.")
            self.infos[info.filename] = info

    def names(self) -> set[str]:
        return set(self.infos)

    def read(self, name: str, limit: int) -> bytes:
        info = self.infos[name]
        if info.file_size > limit:
            raise SessionError(f"'{name}' is larger than {limit:,} bytes.")
        try:
            with self.zf.open(info) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError) as err:
            raise SessionError(f"'{name}' cannot be read from the zip ({type(err).__name__}).") from None
        if len(data) > limit:  # the zip lied about the size
            raise SessionError(f"'{name}' is larger than {limit:,} bytes.")
        return data

    def file(self, name: str, limit: int, workdir: Path) -> Path:
        dest = workdir / name.replace("/", "_")  # our own name (the member name is one of the fixed patterns)
        dest.write_bytes(self.read(name, limit))
        return dest


@dataclass
class Bundle:
    """A checked session: plain values, results and (for uploads) the data files to read again."""

    data: dict[str, Any]
    data_files: dict[str, Path] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    genes: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    results: dict[int, tuple[str, AlignmentResult]] = field(default_factory=dict)
    selected_run: int | None = None
    run_counter: int = 0
    budget_used_s: float = 0.0
    landmarks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _text(value: Any, what: str, *, limit: int = MAX_TEXT, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise SessionError(f"{what} must be text of at most {limit} characters.")
    return value


def _number(value: Any, what: str, *, optional: bool = True, lo: float | None = None) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SessionError(f"{what} must be a finite number.")
    if lo is not None and value < lo:
        raise SessionError(f"{what} must be at least {lo}.")
    return value


def _int(value: Any, what: str, *, lo: int = 0, hi: int = 10**6, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise SessionError(f"{what} must be a whole number from {lo} to {hi}.")
    return value


def _row(row: Any, what: str) -> dict[str, Any]:
    if not isinstance(row, dict) or len(row) > 60:
        raise SessionError(f"{what} must be a table row.")
    out = {}
    for k, v in row.items():
        _text(k, f"{what}: a column name", limit=80)
        if isinstance(v, str):
            v = _text(v, f"{what}: '{k}'")
        elif v is not None and not isinstance(v, bool):
            v = _number(v, f"{what}: '{k}'") if isinstance(v, int | float) else _fail(f"{what}: '{k}' is not a value")
        out[k] = v
    return out


def _fail(message: str) -> Any:
    raise SessionError(message)


def _options(value: Any) -> dict[str, int]:
    if not isinstance(value, dict) or set(value) - {"channel", "series", "plane"}:
        raise SessionError("data.options must hold only channel, series and plane.")
    return {k: int(_int(v, f"data.options.{k}", hi=100_000)) for k, v in value.items()}


def _check_data(spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise SessionError("'data' must be a table.")
    kind = spec.get("kind")
    out: dict[str, Any] = {"kind": kind}
    if kind == "none":
        return out
    out["uid"] = _text(spec.get("uid"), "data.uid", limit=64)
    if not UID_RE.fullmatch(out["uid"]):
        raise SessionError("data.uid has characters a dataset id never has.")
    out["name"] = _text(spec.get("name"), "data.name", limit=600)
    out["not_kept"] = _text(spec.get("not_kept"), "data.not_kept", optional=True)
    if kind == "demo":
        if spec.get("demo") not in DEMOS:
            raise SessionError(f"data.demo must be one of {list(DEMOS)}.")
        out["demo"] = spec["demo"]
    elif kind == "upload":
        for key in ("cells_name", "image_name"):  # shown to the user only; never a path here
            out[key] = Path(_text(spec.get(key), f"data.{key}", limit=255).replace("\\", "/")).name or key
        out["options"] = _options(spec.get("options", {}))
        out["files"] = spec.get("files") is True
    elif kind == "server":
        out["cells"] = _text(spec.get("cells"), "data.cells")
        out["image"] = _text(spec.get("image"), "data.image")
        out["options"] = _options(spec.get("options", {}))
    else:
        raise SessionError("data.kind must be 'none', 'demo', 'upload' or 'server'.")
    return out


def _check_settings(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SessionError("'settings' must be a table.")
    out: dict[str, Any] = {}
    if "signal" in value:
        out["signal"] = _text(value["signal"], "settings.signal", limit=300)
    if "dx" in value:
        out["dx"] = _number(value["dx"], "settings.dx", lo=1e-3)
    if "feature" in value:
        out["feature"] = _text(value["feature"], "settings.feature", limit=40)
    if "reduce" in value:
        out["reduce"] = _int(value["reduce"], "settings.reduce", lo=1, hi=4096, optional=True)
    return out


def _check_genes(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or set(value) - {*GENE_KEYS, "flips"}:
        raise SessionError("'genes' must hold only the search ranges (angle_low … tx_high) and flips.")
    out: dict[str, Any] = {}
    for k, v in value.items():
        if k == "flips":
            if not isinstance(v, bool):
                raise SessionError("genes.flips must be true or false.")
            out[k] = v
        else:
            out[k] = _number(v, f"genes.{k}")
    return out


def _check_params(value: Any, notes: list[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SessionError("'params' must be a table.")
    try:
        return AlignParams.from_dict({**AlignParams().to_dict(), **value}).to_dict()
    except (GalaInputError, TypeError) as err:
        notes.append(f"The saved settings were not valid ({err}); the standard settings are used instead.")
        return AlignParams().to_dict()


def read_bundle(source: _DirSource | _ZipSource, workdir: Path) -> Bundle:
    """Check and read a session (store folder or zip); data files are left for :func:`restore` to read."""
    names = source.names()
    if MANIFEST not in names:
        raise SessionError("it has no manifest.json: not a GALA session.")
    try:
        m = json.loads(source.read(MANIFEST, MAX_MANIFEST_BYTES).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SessionError(f"its manifest.json is not valid JSON ({type(err).__name__}).") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT:
        raise SessionError("its manifest.json is not a GALA Studio session.")
    if m.get("version") != VERSION:
        raise SessionError(f"it is session format version {m.get('version')!r}; this GALA Studio reads {VERSION}.")
    b = Bundle(data=_check_data(m.get("data")))
    if b.data["kind"] == "upload" and b.data.get("files"):
        images = sorted(n for n in names if n.startswith("data/image"))
        if "data/cells.h5ad" not in names or len(images) != 1:
            raise SessionError("it says it holds the uploaded files, but data/cells.h5ad or data/image is missing.")
        cap = session_cap_bytes()
        b.data_files = {"cells": source.file("data/cells.h5ad", cap, workdir),
                        "image": source.file(images[0], cap, workdir)}
    b.settings = _check_settings(m.get("settings", {}))
    b.params = _check_params(m.get("params", {}), b.notes)
    b.genes = _check_genes(m.get("genes", {}))
    history = m.get("history", [])
    if not isinstance(history, list) or len(history) > MAX_RUNS:
        raise SessionError(f"'history' must be a list of at most {MAX_RUNS} runs.")
    b.history = [_row(r, f"history row {i + 1}") for i, r in enumerate(history)]
    index = m.get("results", {})
    if not isinstance(index, dict) or len(index) > MAX_RUNS:
        raise SessionError(f"'results' must map at most {MAX_RUNS} run numbers to dataset ids.")
    for key, uid in index.items():
        if not (isinstance(key, str) and key.isdigit()):
            raise SessionError("'results' keys must be run numbers.")
        rid = _int(int(key), "a run number", lo=1, hi=999_999)
        if not (isinstance(uid, str) and UID_RE.fullmatch(uid)):
            raise SessionError(f"run {rid}: its dataset id has characters a dataset id never has.")
        name = f"results/run_{rid}.npz"
        if name not in names:
            raise SessionError(f"run {rid} is listed but {name} is missing.")
        path = source.file(name, MAX_RESULT_BYTES, workdir)
        try:
            b.results[rid] = (uid, AlignmentResult.load_npz(path))
        except GalaInputError as err:
            raise SessionError(f"{name}: {err}") from None
    b.selected_run = _int(m.get("selected_run"), "selected_run", hi=999_999, optional=True)
    b.run_counter = max([_int(m.get("run_counter", 0), "run_counter", hi=999_999), *b.results])
    b.budget_used_s = float(_number(m.get("budget_used_s", 0.0), "budget_used_s", optional=False, lo=0.0))
    lms = m.get("landmarks", {})
    if not isinstance(lms, dict) or len(lms) > 100:
        raise SessionError("'landmarks' must map dataset ids to pairs.")
    for uid, rows in lms.items():
        if not (isinstance(uid, str) and UID_RE.fullmatch(uid)) or not isinstance(rows, list) or len(rows) > 1000:
            raise SessionError("'landmarks' must map dataset ids to at most 1000 pairs each.")
        b.landmarks[uid] = [_row(r, "a landmark pair") for r in rows]
    return b


def read_dir(folder: Path) -> Bundle:
    """A store folder's session, checked."""
    return read_bundle(_DirSource(folder), folder)


def read_zip(raw: bytes, workdir: Path, *, max_bytes: int | None = None) -> Bundle:
    """A session file's content, checked; member files are written (under fixed names) into ``workdir``."""
    limit = max_bytes or session_cap_bytes() + MAX_RUNS * MAX_RESULT_BYTES
    if len(raw) > limit:
        raise SessionError(f"it is {len(raw):,} bytes; a session file is at most {limit:,}.")
    workdir.mkdir(parents=True, exist_ok=True)
    return read_bundle(_ZipSource(raw), workdir)


# ------------------------------------------------------------------------------------------------ jobs across a refresh

_JOBS: weakref.WeakValueDictionary[str, Any] = weakref.WeakValueDictionary()
_JOBS_LOCK = threading.Lock()


def register_job(sid: str, job: Any) -> None:
    """Remember the session's running job, so a refreshed page (a new Streamlit session) can follow it."""
    with _JOBS_LOCK:
        _JOBS[sid] = job


def job_of(sid: str) -> Any:
    """The job registered for ``sid`` that no page has recorded yet, or None."""
    with _JOBS_LOCK:
        job = _JOBS.get(sid)
    return job if job is not None and not job.reported else None
