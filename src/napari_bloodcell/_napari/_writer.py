"""Writing the per-cell table of a cells (Points) layer, with the run's parameters.

``<name>.csv`` (and ``<name>.parquet`` when Parquet can be written) hold the table;
``<name>.json`` next to them holds the parameters of the run (model name and version,
thresholds, pixel size …). :func:`export_table` never replaces an existing file unless
asked; the npe2 writer (File → Save Layers) writes the ``.csv`` or ``.parquet`` napari asked
for (after its own overwrite prompt), its JSON sidecar and the copy in the other format an
earlier export left beside it — files beside it that are not an earlier export of it (a
JSON this plugin did not write) are refused, never replaced. The table is the layer's now:
points moved by hand move their cells; points added by hand are refused.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from pathlib import Path

import pandas as pd

from .. import __version__
from ..errors import BloodcellError, OutputExistsError
from ..table import TABLE_SUFFIXES, check_table_path, parquet_available, write_table
from ._layers import METADATA_KEY, cells_table

VERSION_KEY = "napari_bloodcell_version"
"""Key of the plugin's version in every sidecar it writes: how a sidecar is known as its own."""


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

    Raises :class:`OutputExistsError` naming the existing files unless ``overwrite``, and
    :class:`BloodcellError` for a path that is not a table's (:func:`check_table_path`), also a
    ``.parquet`` without pyarrow: not a CSV alone in its place.
    """
    paths = export_paths(check_table_path(path))
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{', '.join(p.name for p in existing)} already exist(s) in {existing[0].parent}; "
            f"choose another file name"
        )
    *tables, sidecar = paths
    return _write(tables, sidecar, table, parameters)


def _write(tables: list[Path], sidecar: Path, table: pd.DataFrame, parameters: dict) -> list[Path]:
    """Write the table files and the sidecar. If one fails, the files this call created are
    removed again (a next export is not refused for them); files that were there before
    are never removed."""
    paths = [*tables, sidecar]
    created = [p for p in paths if not p.exists()]
    tmp = sidecar.with_name(f".{sidecar.name}.tmp")
    try:
        for table_path in tables:
            write_table(table, table_path)
        marked = {VERSION_KEY: __version__, **parameters}  # a run's parameters name it already
        tmp.write_text(json.dumps(marked, indent=2, default=str))
        os.replace(tmp, sidecar)
    except BaseException:  # also an interrupted export
        for path in [*created, tmp]:
            with suppress(OSError):  # must not hide the error that stopped the export
                path.unlink(missing_ok=True)
        raise
    return paths


def _written_by_us(sidecar: Path) -> bool:
    """Whether ``sidecar`` is a JSON sidecar this plugin wrote (it names the version)."""
    try:
        content = json.loads(sidecar.read_text())
    except (OSError, ValueError):  # absent, unreadable, not JSON
        return False
    # an object naming the version (a JSON text that merely holds the key's name is not)
    return isinstance(content, dict) and VERSION_KEY in content


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
    copies = [other for other in others if other.exists()]
    # napari asked about `requested` only: the files beside it are replaced only when they
    # are an earlier export of it (that export's sidecar, its copy in the other format)
    earlier_export = requested.exists() and _written_by_us(sidecar)
    strangers = [] if earlier_export else [p for p in (sidecar, *copies) if p.exists()]
    if strangers:
        raise OutputExistsError(
            f"{strangers[0].name} already exists in {strangers[0].parent} and does not belong "
            f"to {requested.name}; choose another file name"
        )
    for copy in copies:  # must not keep the old table
        if copy.suffix.lower() == ".parquet" and not parquet_available():
            raise OutputExistsError(
                f"{copy.name} beside {requested.name} holds an earlier table and cannot be "
                f"updated without pyarrow; remove it or choose another file name"
            )
    return [str(p) for p in _write([requested, *copies], sidecar, table, parameters)]
