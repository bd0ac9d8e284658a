"""The per-cell results table (pandas): one row per cell per frame.

Columns (units):

=====================  =======================================================
``source``             input file name (or layer name)
``frame``              frame index t (0-based)
``label``              instance label value in the label image of that frame
``centroid_y/_x``      cell centre, pixels (row, column), 0-based
``bbox_y0 … bbox_x1``  bounding box, pixels, half-open [y0, y1) × [x0, x1)
``area_px``            area, pixels
``diameter_px``        equivalent-circle diameter, pixels
``cell_type``          coarse type from segmentation: ``wbc``, ``rbc``, ``platelet``
``cell_class``         class from the CNN (or the channel role in fluorescence),
                       ``rbc`` for red cells, ``uncertain`` below the threshold
``confidence``         probability of ``cell_class`` (NaN when no CNN decided)
``novelty``            how unlike the model's training images the cell's crop looks:
                       > 1 = less familiar than 99 % of its validation crops (NaN
                       when no CNN decided; see ``classification/novelty.py``)
``p_<class>``          calibrated probability of each model class
``centroid_y_um`` …    the same in µm when a pixel size is known
=====================  =======================================================
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import BloodcellError, one_line

BASE_COLUMNS = [
    "source",
    "frame",
    "label",
    "centroid_y",
    "centroid_x",
    "bbox_y0",
    "bbox_x0",
    "bbox_y1",
    "bbox_x1",
    "area_px",
    "diameter_px",
    "cell_type",
    "cell_class",
    "confidence",
    "novelty",
]
CATEGORY_COLUMNS = ("source", "cell_type", "cell_class")
TABLE_SUFFIXES = (".csv", ".parquet")


def cell_columns(classes: list[str]) -> list[str]:
    return BASE_COLUMNS + [f"p_{c}" for c in classes]


INTEGER_COLUMNS = ("frame", "label", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area_px")
UNIT_COLUMNS = ("centroid_y_um", "centroid_x_um", "diameter_um", "area_um2")


def _typed_if_empty(table: pd.DataFrame, text: str | type = str) -> pd.DataFrame:
    """An empty table with the dtypes of its columns in a table with rows (int64, float64,
    ``text``, categories of ``text``): a CSV header alone reads as text, an empty column as
    float64 from Parquet, which stores empty untyped columns (also categories without
    categories, as a napari layer without points holds them) as ``null``."""
    if len(table):
        return table
    dtypes: dict = {
        c: "int64" if c in INTEGER_COLUMNS else "float64"
        for c in table.columns
        if c not in CATEGORY_COLUMNS
        and (c in BASE_COLUMNS or c in UNIT_COLUMNS or str(c).startswith("p_"))
    }
    for c in table.columns:
        if c in dtypes:
            continue
        dtype = table[c].dtype
        categorical = isinstance(dtype, pd.CategoricalDtype)
        untyped = not len(dtype.categories) if categorical else dtype.kind == "O"
        if c in CATEGORY_COLUMNS or untyped:
            # (a user's empty note column is text too: untyped, Parquet stored it as null)
            dtypes[c] = pd.CategoricalDtype(pd.Index([], dtype=text)) if categorical else text
    return table.astype(dtypes)


PARQUET_TEXT = "string"
"""The dtype of text columns of an empty table written to Parquet: pandas 2 keeps ``str``
ones as ``object``, which Parquet stores as ``null``."""


def add_physical_units(table: pd.DataFrame, pixel_size_um: float | None) -> pd.DataFrame:
    """Add ``centroid_y_um``, ``centroid_x_um``, ``diameter_um`` and ``area_um2`` columns."""
    if pixel_size_um is None:
        return table
    table = table.copy()
    table["centroid_y_um"] = table["centroid_y"] * pixel_size_um
    table["centroid_x_um"] = table["centroid_x"] * pixel_size_um
    table["diameter_um"] = table["diameter_px"] * pixel_size_um
    table["area_um2"] = table["area_px"] * pixel_size_um**2
    return table


def as_categories(table: pd.DataFrame) -> pd.DataFrame:
    """Class-like columns as pandas ``category`` (what napari layer features expect)."""
    table = table.copy()
    for column in CATEGORY_COLUMNS:
        if column in table:
            table[column] = table[column].astype("category")
    return table


def check_table_path(path: str | Path) -> Path:
    """The path of a table to write, or :class:`BloodcellError` when its suffix is not a
    table's, its folder does not exist or Parquet cannot be written here (checked before
    hours of work, not after)."""
    path = Path(path)
    if path.suffix.lower() not in TABLE_SUFFIXES:
        raise BloodcellError(f"{path}: table files must end in {' or '.join(TABLE_SUFFIXES)}")
    if not path.parent.is_dir():
        raise BloodcellError(f"{path}: the folder {path.parent} does not exist")
    if path.suffix.lower() == ".parquet" and not parquet_available():
        raise BloodcellError(PARQUET_NEEDS_PYARROW.format(path=path))
    return path


PARQUET_NEEDS_PYARROW = "{path}: writing Parquet needs pyarrow (pip install pyarrow)"


def parquet_available() -> bool:
    """Whether pandas can write Parquet here (pyarrow or fastparquet installed)."""
    return any(importlib.util.find_spec(engine) for engine in ("pyarrow", "fastparquet"))


def write_table(table: pd.DataFrame, path: str | Path) -> Path:
    """Write the table as CSV or Parquet (by suffix), atomically (temporary file + rename)."""
    path = check_table_path(path)
    suffix = path.suffix.lower()
    table = _typed_if_empty(table, PARQUET_TEXT if suffix == ".parquet" else str)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        if suffix == ".csv":
            table.to_csv(tmp, index=False)
        else:
            try:
                table.to_parquet(tmp, index=False)
            except ImportError as exc:
                raise BloodcellError(PARQUET_NEEDS_PYARROW.format(path=path)) from exc
            except (TypeError, ValueError) as exc:  # pyarrow's ArrowTypeError, ArrowInvalid
                raise BloodcellError(_parquet_refusal(table, path, exc)) from exc
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):  # must not hide the error that stopped the write
            tmp.unlink(missing_ok=True)
    return path


def _parquet_refusal(table: pd.DataFrame, path: Path, error: Exception) -> str:
    """Why ``table`` cannot be Parquet, naming its columns that mix Python types (e.g. a
    note column a user filled with texts and numbers)."""
    mixed = [
        str(column)
        for column in table.columns
        if table[column].dtype == object and table[column].dropna().map(type).nunique() > 1
    ]
    why = (
        f"column(s) {', '.join(map(repr, mixed))} mix texts and numbers; give each column "
        f"one type, or write CSV"
        if mixed
        else one_line(error)
    )
    return f"{path}: cannot write the table as Parquet: {why}"


PANDAS_NA_TEXT = (
    "", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN",
    "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null",
)  # fmt: skip
"""The texts pandas reads as missing by default (``read_csv``'s ``na_values``)."""


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a table written by :func:`write_table`.

    The text columns (``source``, ``cell_type``, ``cell_class``) are read as the text
    written (categories from Parquet): an empty one (e.g. the ``source`` of an array
    analysed without a name) as empty text, ``NA`` or ``None`` as those words, not as
    missing values; the other columns as pandas reads them, its usual missing-value texts
    (:data:`PANDAS_NA_TEXT`, e.g. R's ``NA``) missing (those of a table without rows as the
    numbers they hold in a table with rows).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".parquet":
            return _typed_if_empty(pd.read_parquet(path))
        columns = pd.read_csv(path, nrows=0).columns
        table = pd.read_csv(
            path,
            dtype={column: str for column in CATEGORY_COLUMNS},
            keep_default_na=False,  # a class or file named "NA" or "None" is no gap …
            na_values={  # … but "NA" in a number column (R's write.csv) is one
                column: [""] if column in CATEGORY_COLUMNS else PANDAS_NA_TEXT for column in columns
            },
        )
    except ImportError:
        raise BloodcellError(
            f"{path}: reading Parquet needs pyarrow (pip install pyarrow)"
        ) from None
    except (UnicodeDecodeError, pd.errors.EmptyDataError, pd.errors.ParserError, ValueError) as exc:
        kind = "Parquet" if path.suffix.lower() == ".parquet" else "CSV"
        raise BloodcellError(
            f"{path}: not a readable {kind} table ({type(exc).__name__}: {exc})"
        ) from None
    for column in CATEGORY_COLUMNS:
        if column in table:
            table[column] = table[column].fillna("")
    return _typed_if_empty(table)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Cells per type and class (a small table for the terminal)."""
    if table.empty:
        return pd.DataFrame({"cells": []})
    counts = table.groupby(["cell_type", "cell_class"], observed=True).size()
    return counts.rename("cells").reset_index()


def frame_counts(table: pd.DataFrame, n_frames: int | None = None) -> pd.DataFrame:
    """Cells per frame and class (rows: frames, columns: classes); with ``n_frames`` one
    row per frame 0 … n_frames − 1, frames without cells counting 0."""
    if table.empty:
        return pd.DataFrame(index=pd.RangeIndex(n_frames or 0, name="frame"))
    counts = table.pivot_table(
        index="frame",
        columns="cell_class",
        values="label",
        aggfunc="count",
        fill_value=0,
        observed=True,
    ).astype(np.int64)
    if n_frames is not None:
        counts = counts.reindex(pd.RangeIndex(n_frames, name="frame"), fill_value=0)
    return counts
