"""Writing the per-cell table of a cells (Points) layer, with the run's parameters.

``<name>.csv`` (and ``<name>.parquet`` when pyarrow is installed) hold the table;
``<name>.json`` next to them holds the parameters of the run (model name and version,
thresholds, pixel size …). :func:`export_table` never replaces an existing file unless
asked; the npe2 writer (File → Save Layers) writes the CSV napari asked for (after its own
overwrite prompt), its JSON sidecar and a Parquet copy already there. The table is the
layer's now: points moved by hand move their cells; points added by hand are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import BloodcellError, OutputExistsError
from ..table import write_table
from ._layers import METADATA_KEY, cells_table


def _parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def export_paths(path: str | Path) -> list[Path]:
    """Files an export to ``path`` writes: the CSV, the Parquet copy if possible, the JSON
    (``run.2.csv`` → ``run.2.csv``, ``run.2.parquet``, ``run.2.json``)."""
    paths = [companion(path, ".csv")]
    if _parquet_available():
        paths.append(companion(path, ".parquet"))
    return [*paths, companion(path, ".json")]


def companion(path: str | Path, suffix: str) -> Path:
    """``path`` with its last suffix replaced (``Path.with_suffix`` of a suffix-less stem
    would eat a dot of the name: ``run.2`` → ``run.csv``)."""
    stem = Path(path).with_suffix("")
    return stem.with_name(stem.name + suffix)


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
    """npe2 writer: the per-cell table of a napari-bloodcell cells layer as ``path`` (.csv),
    its JSON sidecar, and the Parquet copy an earlier export left beside it (kept in step)."""
    features = attributes.get("features")
    if features is None or "cell_class" not in features:
        raise BloodcellError(
            f"layer {attributes.get('name')!r} holds no napari-bloodcell cell table; "
            f"save it with napari's built-in points writer"
        )
    metadata = attributes.get("metadata") or {}
    table = cells_table(data, features, metadata)
    parameters = metadata.get(METADATA_KEY, {}).get("parameters", {})
    csv = Path(path)
    sidecar, parquet = companion(csv, ".json"), companion(csv, ".parquet")
    for other in (sidecar, parquet):
        if other.exists() and not csv.exists():  # napari asked about replacing the CSV only
            raise OutputExistsError(
                f"{other.name} already exists in {other.parent} and does not belong to "
                f"{csv.name}; choose another file name"
            )
    tables = [csv]
    if parquet.exists():  # an earlier export's copy: it must not keep the old table
        if not _parquet_available():
            raise OutputExistsError(
                f"{parquet.name} beside {csv.name} holds an earlier table and cannot be "
                f"updated without pyarrow; remove it or choose another file name"
            )
        tables.append(parquet)
    return [str(p) for p in _write(tables, sidecar, table, parameters)]
