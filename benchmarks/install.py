"""The Makefile's install, through pip against through uv, each into a fresh virtual environment,
same run: torch + torchvision (pinned), then the project with its dev extra.

    python -m benchmarks.install [--python python3]   (from the repository root; about 3 minutes)

uv reads no pip configuration, so, as the Makefile does, it is handed the find-links and extra indexes
pip is configured with (where this machine keeps its torch wheels). The figures include downloads, so
they depend on the network and on the package caches: uv's first run fills its cache (~/.cache/uv) the
way the first ``make`` on a fresh machine does, so run this on a machine where uv has not run yet for
the figure a fresh clone sees.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH = ["torch==2.14.1", "torchvision==0.29.1"]


def _timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def _pip_config(py: Path, key: str) -> list[str]:
    out = subprocess.run([str(py), "-m", "pip", "config", "get", key], check=False, capture_output=True, text=True)
    return out.stdout.split() if out.returncode == 0 else []


def pip_sources(py: Path) -> list[str]:
    """uv flags for the find-links and extra indexes pip is configured with (the Makefile's PIP_SOURCES)."""
    links = [arg for link in _pip_config(py, "global.find-links") for arg in ("--find-links", link)]
    return links + [arg for url in _pip_config(py, "global.extra-index-url") for arg in ("--extra-index-url", url)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="python3", help="interpreter the venvs are made from")
    args = parser.parse_args()
    project = f"{REPO}[dev]"
    with tempfile.TemporaryDirectory() as tmp:
        py_pip, py_uv = Path(tmp) / "pip" / "bin" / "python", Path(tmp) / "uv" / "bin" / "python"
        for py in (py_pip, py_uv):
            subprocess.run([args.python, "-m", "venv", str(py.parents[1])], check=True)
        torch_pip = _timed([str(py_pip), "-m", "pip", "install", "-q", *TORCH])
        rest_pip = _timed([str(py_pip), "-m", "pip", "install", "-q", "-e", project])
        uv = [str(py_uv), "-m", "uv", "pip", "install", "-q", "--python", str(py_uv), "--compile-bytecode"]
        get_uv = _timed([str(py_uv), "-m", "pip", "install", "-q", "uv"])
        torch_uv = _timed([*uv, *pip_sources(py_uv), *TORCH])
        rest_uv = _timed([*uv, "-e", project])
    print(f"torch + torchvision: pip {torch_pip:.1f} s, uv {torch_uv:.1f} s ({torch_uv / torch_pip:.2f}x)")
    print(f"the project's dependencies: pip {rest_pip:.1f} s, uv {rest_uv:.1f} s ({rest_uv / rest_pip:.2f}x)")
    total_pip, total_uv = torch_pip + rest_pip, get_uv + torch_uv + rest_uv
    print(f"all, installing uv included: pip {total_pip:.1f} s, uv {total_uv:.1f} s ({total_uv / total_pip:.2f}x)")


if __name__ == "__main__":
    main()
