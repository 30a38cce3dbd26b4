"""Per-session temporary folders that disappear with their session.

Streamlit has no reliable "session ended" hook, so a :class:`SessionFolder` is kept in the session's
state: when Streamlit drops the session (tab closed and the reconnect window over), the object is
garbage collected and a ``weakref.finalize`` removes the folder; finalizers also run when the server
exits. Folders left by a crashed server, or whose finalizer did not run, are removed by
:func:`sweep_stale` whenever a new session folder is made.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import weakref
from pathlib import Path

PREFIX = "gala_studio_"
_LEGACY_MAX_AGE_S = 24 * 3600  # folders without an owner pid (older versions) are removed after a day
_LIVE: weakref.WeakValueDictionary[str, SessionFolder] = weakref.WeakValueDictionary()
_LOCK = threading.Lock()


class SessionFolder:
    """A temporary folder ``<tmp>/gala_studio_<pid>_<random>`` owned by one session.

    Removed when this object is garbage collected, when :meth:`remove` is called, or at interpreter exit.
    """

    def __init__(self, base: str | os.PathLike[str] | None = None) -> None:
        with _LOCK:
            self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}_", dir=base))
            _LIVE[str(self.path)] = self
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)

    def remove(self) -> None:
        """Delete the folder now (idempotent)."""
        self._finalizer()

    def __repr__(self) -> str:
        return f"SessionFolder({str(self.path)!r})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_stale(path: Path) -> bool:
    rest = path.name[len(PREFIX):]
    pid_text, sep, _ = rest.partition("_")
    if not (sep and pid_text.isdigit()):  # an older folder name without the owner's pid
        try:
            return time.time() - path.stat().st_mtime > _LEGACY_MAX_AGE_S
        except OSError:
            return False
    pid = int(pid_text)
    if pid == os.getpid():
        return str(path) not in _LIVE  # ours, but no live session holds it
    return not _pid_alive(pid)


def sweep_stale(base: str | os.PathLike[str] | None = None) -> list[Path]:
    """Remove session folders in ``base`` (default: the system temp folder) whose session is gone.

    Returns
    -------
    list of Path
        The folders removed.
    """
    root = Path(base or tempfile.gettempdir())
    removed = []
    with _LOCK:
        for path in root.glob(f"{PREFIX}*"):
            if path.is_dir() and not path.is_symlink() and _is_stale(path):
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed
