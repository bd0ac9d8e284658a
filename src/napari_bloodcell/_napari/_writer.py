"""Writing the per-cell table of a cells (Points) layer, with the run's parameters.

``<name>.csv`` (and ``<name>.parquet`` when Parquet can be written) hold the table;
``<name>.json`` next to them holds the parameters of the run (model name and version,
thresholds, pixel size …). :func:`export_table` never replaces an existing file unless
asked; the npe2 writer (File → Save Layers) writes the ``.csv`` or ``.parquet`` napari asked
for (after its own overwrite prompt), its JSON sidecar and the copy in the other format an
earlier export left beside it. The table is the layer's now: points moved by hand move
their cells; points added by hand are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from ..errors import BloodcellError, OutputExistsError
from ..table import TABLE_SUFFIXES, check_table_path, parquet_available, write_table
from ._layers import METADATA_KEY, cells_table


def export_paths(path: str | Path) -> list[Path]:
    """Files an export to ``path`` writes: the CSV, the Parquet copy if possible, the JSON
    (``run.2.csv`` → ``run.2.csv``, ``run.2.parquet``, ``run.2.json``)."""
    paths = [companion(path, ".csv")]
    if parquet_available():
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
    """npe2 writer: the per-cell table of a napari-bloodcell cells layer as ``path`` (.csv or
    .parquet), its JSON sidecar, and the copy in the other format that an earlier export
    left beside it (kept in step)."""
    requested = check_table_path(path)  # a table's suffix, Parquet only with pyarrow
    features = attributes.get("features")
    if features is None or "cell_class" not in features:
        raise BloodcellError(
            f"layer {attributes.get('name')!r} holds no napari-bloodcell cell table; "
            f"save it with napari's built-in points writer"
        )
    metadata = attributes.get("metadata") or {}
    table = cells_table(data, features, metadata)
    parameters = metadata.get(METADATA_KEY, {}).get("parameters", {})
    sidecar = companion(requested, ".json")
    others = [companion(requested, s) for s in TABLE_SUFFIXES if s != requested.suffix.lower()]
    for other in (sidecar, *others):
        if other.exists() and not requested.exists():  # napari asked about `requested` only
            raise OutputExistsError(
                f"{other.name} already exists in {other.parent} and does not belong to "
                f"{requested.name}; choose another file name"
            )
    copies = [other for other in others if other.exists()]  # an earlier export's copies
    for copy in copies:  # must not keep the old table
        if copy.suffix.lower() == ".parquet" and not parquet_available():
            raise OutputExistsError(
                f"{copy.name} beside {requested.name} holds an earlier table and cannot be "
                f"updated without pyarrow; remove it or choose another file name"
            )
    return [str(p) for p in _write([requested, *copies], sidecar, table, parameters)]
