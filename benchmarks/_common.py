"""Helpers shared by the benchmark scripts: data location and result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"
RESULTS = REPO_ROOT / "benchmarks" / "results"


def model_benchmark_arguments(description: str):
    """Parsed ``--model``, ``--data`` and ``--bccd-crops`` of the classifier benchmarks."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="default")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--bccd-crops", type=Path, default=Path("runs/bccd_crops"))
    return parser.parse_args()


def model_files_arguments(description: str, models_help: str, result: str):
    """Parsed ``models`` (files), ``--data``, ``--bccd-crops`` and ``--result`` of the
    benchmarks that score given model files (the shared PBC and BCCD folders required)."""
    import argparse

    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("models", nargs="+", type=Path, help=models_help)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--bccd-crops", type=Path, default=Path("runs/bccd_crops"))
    parser.add_argument("--result", default=result, help="results file name")
    args = parser.parse_args()
    require(args.data / "pbc")
    require(args.bccd_crops)
    return parser, args


def require(path: Path) -> Path:
    """Exit cleanly (status 0, with a message) when a shared dataset is absent."""
    if not path.exists():
        print(f"skipped: {path} not available")
        sys.exit(0)
    return path


def relative_paths(value):
    """Paths under the project's parent folder rewritten relative to the repository root
    (results must not carry this machine's absolute paths)."""
    if isinstance(value, dict):
        return {key: relative_paths(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [relative_paths(item) for item in value]
    if isinstance(value, str) and value.startswith(f"{REPO_ROOT.parent}{os.sep}"):
        return os.path.relpath(value, REPO_ROOT)
    return value


def write_result(name: str, result: dict) -> Path:
    """Write ``benchmarks/results/<name>.json`` with the command, date and machine."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    record = {
        "command": "python " + " ".join(sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg()[0],
        },
        **result,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(relative_paths(record), indent=2))
    print(f"wrote {path}")
    return path
