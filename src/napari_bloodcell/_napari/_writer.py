"""Writing the per-cell table of a cells (Points) layer, with the run's parameters.

``<name>.csv`` (and ``<name>.parquet`` when pyarrow is installed) hold the table;
``<name>.json`` next to them holds the parameters of the run (model name and version,
thresholds, pixel size …). :func:`export_table` never replaces an existing file unless
asked; the npe2 writer (File → Save Layers) writes the CSV napari asked for (after its own
overwrite prompt) and its JSON sidecar.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import BloodcellError, OutputExistsError
from ..table import write_table
from ._layers import METADATA_KEY


def _parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def export_paths(path: str | Path) -> list[Path]:
    """Files an export to ``path`` writes: the CSV, the Parquet copy if possible, the JSON."""
    stem = Path(path).with_suffix("")
    paths = [stem.with_suffix(".csv")]
    if _parquet_available():
        paths.append(stem.with_suffix(".parquet"))
    return [*paths, stem.with_suffix(".json")]


def export_table(
    path: str | Path, table: pd.DataFrame, parameters: dict, *, overwrite: bool = False
) -> list[Path]:
    """Write the table (CSV, Parquet if available) and the parameters sidecar JSON.

    Raises :class:`OutputExistsError` naming the existing files unless ``overwrite``.
    """
    paths = export_paths(path)
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(p.name for p in existing)} already exist(s) in {existing[0].parent}; "
            f"choose another file name"
        )
    *tables, sidecar = paths
    return _write(tables, sidecar, table, parameters)


def _write(tables: list[Path], sidecar: Path, table: pd.DataFrame, parameters: dict) -> list[Path]:
    for table_path in tables:
        write_table(table, table_path)
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    tmp.write_text(json.dumps(parameters, indent=2, default=str))
    os.replace(tmp, sidecar)
    return [*tables, sidecar]


def write_cells_table(path: str, data, attributes: dict) -> list[str]:
    """npe2 writer: the per-cell table of a napari-bloodcell cells layer as ``path`` (.csv)."""
    features = attributes.get("features")
    if features is None or "cell_class" not in features:
        raise BloodcellError(
            f"layer {attributes.get('name')!r} holds no napari-bloodcell cell table; "
            f"save it with napari's built-in points writer"
        )
    parameters = (attributes.get("metadata") or {}).get(METADATA_KEY, {}).get("parameters", {})
    csv, sidecar = Path(path), Path(path).with_suffix(".json")
    if sidecar.exists() and not csv.exists():  # napari asked about replacing the CSV only
        raise OutputExistsError(
            f"{sidecar.name} already exists in {sidecar.parent} and is not the sidecar of "
            f"{csv.name}; choose another file name"
        )
    return [str(p) for p in _write([csv], sidecar, features, parameters)]
