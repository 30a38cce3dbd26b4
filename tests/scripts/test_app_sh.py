"""scripts/app.sh installs only when the requirements changed, and starts quietly."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

FAKE_SETUP = """#!/usr/bin/env bash
set -e
cd "$(dirname "$0")/.."
echo run >> setup_calls.txt
[ -f fail ] && { echo "pip: no matching distribution" >&2; exit 3; }
mkdir -p .venv/bin
printf '#!/usr/bin/env bash\\necho "streamlit $*"\\n' > .venv/bin/streamlit
chmod +x .venv/bin/streamlit
echo "DEPRECATION: setuptools noise"
"""


def _checkout(tmp: Path) -> Path:
    (tmp / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "app.sh", tmp / "scripts" / "app.sh")
    (tmp / "scripts" / "setup.sh").write_text(FAKE_SETUP)
    (tmp / "scripts" / "setup.sh").chmod(stat.S_IRWXU)
    (tmp / "requirements.txt").write_text("streamlit==1.67.0\n")
    (tmp / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    return tmp


def _start(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "app.sh"), *args], capture_output=True, text=True,
                          timeout=60)


def _calls(root: Path) -> int:
    f = root / "setup_calls.txt"
    return len(f.read_text().split()) if f.exists() else 0


def test_installs_once_then_skips_until_requirements_change(tmp_path):
    root = _checkout(tmp_path)
    first = _start(root, "--server.port", "9")
    assert first.returncode == 0, first.stderr
    assert _calls(root) == 1
    assert "streamlit run app.py --server.port 9" in first.stdout
    assert "DEPRECATION" not in first.stdout + first.stderr  # the installer's noise stays in its log

    second = _start(root)
    assert second.returncode == 0 and _calls(root) == 1  # nothing changed: no pip
    assert second.stdout.strip() == "streamlit run app.py"

    (root / "requirements.txt").write_text("streamlit==1.67.0\nnumpy==2.3.5\n")
    assert _start(root).returncode == 0 and _calls(root) == 2  # a changed pin installs again
    assert _start(root).returncode == 0 and _calls(root) == 2


def test_failed_install_shows_its_log_and_stamps_nothing(tmp_path):
    root = _checkout(tmp_path)
    (root / "fail").write_text("")
    out = _start(root)
    assert out.returncode == 1
    assert "no matching distribution" in out.stderr and "Installing failed" in out.stderr
    assert not (root / ".venv" / ".gala-installed").exists()
