"""The Makefile's install of the project's dependencies (everything but torch), through pip against
through uv, each into a fresh virtual environment that already holds torch, same run.

    python -m benchmarks.install [--python python3]   (from the repository root; about 3 minutes)

torch and torchvision go in through pip in both cases (pip reads this machine's configuration, which
is where its torch wheels are), and are timed apart. The figures include downloads, so they depend on
the network and on the package caches: uv's first run fills its cache (~/.cache/uv) the way the
first ``make`` on a fresh machine does, so run this on a machine where uv has not run yet for the
figure a fresh clone sees.
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


def _venv_with_torch(python: str, where: Path) -> tuple[Path, float]:
    """A new venv at ``where`` with torch installed by pip; (its python, seconds for torch)."""
    subprocess.run([python, "-m", "venv", str(where)], check=True)
    py = where / "bin" / "python"
    return py, _timed([str(py), "-m", "pip", "install", "-q", *TORCH])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--python", default="python3", help="interpreter the venvs are made from")
    args = parser.parse_args()
    project = f"{REPO}[dev]"
    with tempfile.TemporaryDirectory() as tmp:
        py_pip, torch_pip = _venv_with_torch(args.python, Path(tmp) / "pip")
        pip_s = _timed([str(py_pip), "-m", "pip", "install", "-q", "-e", project])
        py_uv, torch_uv = _venv_with_torch(args.python, Path(tmp) / "uv")
        uv_s = _timed([str(py_uv), "-m", "pip", "install", "-q", "uv"])
        uv_s += _timed([str(py_uv), "-m", "uv", "pip", "install", "-q", "--python", str(py_uv),
                        "--compile-bytecode", "-e", project])  # fmt: skip
    print(f"torch + torchvision through pip: {torch_pip:.1f} s / {torch_uv:.1f} s (the two venvs)")
    print(f"the project's dependencies, pip: {pip_s:.1f} s")
    print(f"the project's dependencies, uv (installing uv included): {uv_s:.1f} s ({uv_s / pip_s:.2f}x)")


if __name__ == "__main__":
    main()
