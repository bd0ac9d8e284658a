"""Writing and reading the per-cell table (CSV and Parquet), without napari."""

from __future__ import annotations

import pandas as pd
import pytest

from napari_bloodcell.errors import BloodcellError
from napari_bloodcell.table import (
    BASE_COLUMNS,
    add_physical_units,
    as_categories,
    read_table,
    write_table,
)


def _table(n_rows: int) -> pd.DataFrame:
    row = {"source": "a.tif", "frame": 0, "label": 1, "cell_type": "wbc", "cell_class": "x"}
    columns = {c: [row.get(c, 1.5)] * n_rows for c in [*BASE_COLUMNS, "p_x"]}
    for c in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1", "area_px"):
        columns[c] = [4] * n_rows
    return add_physical_units(pd.DataFrame(columns), 0.5)


def test_a_table_without_rows_keeps_its_column_types_through_csv_and_parquet(tmp_path):
    """An input without cells left a tables/<stem>.csv header that read back as text
    columns; the run's cells.parquet built from it stored them as Arrow ``null``, which no
    table with rows matches (pyarrow refuses to concatenate the two)."""
    with_rows = read_table(write_table(_table(2), tmp_path / "rows.csv"))
    without = read_table(write_table(_table(2).iloc[:0], tmp_path / "none.csv"))
    assert list(without.columns) == list(with_rows.columns)
    pd.testing.assert_series_equal(without.dtypes, with_rows.dtypes)
    pq = pytest.importorskip("pyarrow.parquet")
    write_table(without, tmp_path / "none.parquet")
    write_table(with_rows, tmp_path / "rows.parquet")
    assert pq.read_schema(tmp_path / "none.parquet").equals(
        pq.read_schema(tmp_path / "rows.parquet"), check_metadata=False
    )
    pd.testing.assert_series_equal(read_table(tmp_path / "none.parquet").dtypes, with_rows.dtypes)


def test_a_cells_layer_without_rows_writes_text_class_columns_to_parquet(tmp_path):
    """A cells layer's class columns are categories; empty ones (a batch without cells)
    were stored as Arrow ``null``: reading such a file first in a dataset with a full
    one made every class of the full one null."""
    pq = pytest.importorskip("pyarrow.parquet")
    write_table(as_categories(_table(2)), tmp_path / "rows.parquet")
    without = (
        _table(2)
        .iloc[:0]
        .assign(  # as a napari layer without points holds them
            **{c: pd.Categorical([]) for c in ("source", "cell_type", "cell_class")}
        )
    )
    write_table(without, tmp_path / "none.parquet")
    assert pq.read_schema(tmp_path / "none.parquet").equals(
        pq.read_schema(tmp_path / "rows.parquet"), check_metadata=False
    )
    # a user's own text column, empty (and untyped), was stored as null too
    notes = without.assign(notes=pd.Series([], dtype=object), tag=pd.Categorical([]))
    write_table(notes, tmp_path / "notes.parquet")
    schema = pq.read_schema(tmp_path / "notes.parquet")
    assert "string" in str(schema.field("notes").type)  # (string or large_string), not null
    assert "string" in str(schema.field("tag").type.value_type)


def test_an_export_asked_as_parquet_without_pyarrow_is_refused_not_written_as_csv(
    tmp_path, monkeypatch
):
    from napari_bloodcell import table as table_module
    from napari_bloodcell._napari import _writer

    monkeypatch.setattr(table_module, "parquet_available", lambda: False)
    monkeypatch.setattr(_writer, "parquet_available", lambda: False)
    with pytest.raises(BloodcellError, match="needs pyarrow"):
        _writer.export_table(tmp_path / "cells.parquet", _table(2), {})
    assert list(tmp_path.iterdir()) == []


def test_text_that_pandas_takes_for_a_gap_reads_back_as_written(tmp_path):
    """A class or file named "NA", "None", "null" or "nan" read back from CSV as ""."""
    table = _table(4).assign(
        source=["NA", "None", "a.tif", ""], cell_class=["nan", "null", "NA", "x"]
    )
    table.loc[1, "p_x"] = float("nan")
    read = read_table(write_table(table, tmp_path / "t.csv"))
    assert read["source"].tolist() == ["NA", "None", "a.tif", ""]
    assert read["cell_class"].tolist() == ["nan", "null", "NA", "x"]
    assert read["p_x"].isna().tolist() == [False, True, False, False]
    (tmp_path / "r.csv").write_text("source,cell_class,confidence\nNA,x,NA\nb,y,0.5\n")
    from_r = read_table(tmp_path / "r.csv")  # R's write.csv writes NA for a missing number
    assert from_r["confidence"].isna().tolist() == [True, False]
    assert from_r["source"].tolist() == ["NA", "b"]


def test_saving_a_layer_over_its_table_leaves_a_strangers_json_beside_it(tmp_path):
    """napari asks before replacing mine.csv only; a mine.json the plugin did not write
    was replaced by the sidecar (and any mine.parquet beside it by a copy)."""
    import json

    from napari_bloodcell._napari._writer import export_table, write_cells_table
    from napari_bloodcell.errors import OutputExistsError

    table = _table(2).assign(label=[1, 2])
    layer = {"name": "cells", "features": table, "metadata": {}}
    points = table[["centroid_y", "centroid_x"]].to_numpy(dtype=float)
    (tmp_path / "mine.csv").write_text("x\n1\n")  # napari asked: replace it? yes
    (tmp_path / "mine.json").write_text('{"user": "precious"}')
    with pytest.raises(OutputExistsError, match="mine.json already exists .* not belong"):
        write_cells_table(str(tmp_path / "mine.csv"), points, layer)
    assert json.loads((tmp_path / "mine.json").read_text()) == {"user": "precious"}
    (tmp_path / "mine.json").write_text('"notes on napari_bloodcell_version 1"')  # JSON text
    with pytest.raises(OutputExistsError, match="mine.json already exists"):
        write_cells_table(str(tmp_path / "mine.csv"), points, layer)
    assert (tmp_path / "mine.csv").read_text() == "x\n1\n"
    # an earlier export of the same name is the plugin's own: saved over, kept in step
    export_table(tmp_path / "ours.csv", table, {"pixel_size_um": 0.5})
    fewer = {**layer, "features": table[:1]}
    written = write_cells_table(str(tmp_path / "ours.csv"), points[:1], fewer)
    assert str(tmp_path / "ours.json") in written
    assert len(read_table(tmp_path / "ours.csv")) == 1
    assert "napari_bloodcell_version" in json.loads((tmp_path / "ours.json").read_text())


@pytest.mark.parametrize("failing", [".parquet", ".json"])
def test_a_failed_export_leaves_no_new_file_behind(tmp_path, monkeypatch, failing):
    """The CSV of an export whose Parquet copy or JSON sidecar failed stayed, and the next
    export to that name was refused: the file existed."""
    from types import SimpleNamespace

    from napari_bloodcell._napari import _writer

    if failing == ".parquet":
        pytest.importorskip("pyarrow")
    table = _table(2).assign(label=[1, 2])
    layer = {"name": "cells", "features": table, "metadata": {}}
    points = table[["centroid_y", "centroid_x"]].to_numpy(dtype=float)
    _writer.export_table(tmp_path / "earlier.csv", table, {})
    before = sorted(tmp_path.iterdir())

    def disk_full(*_args):
        raise OSError(28, "No space left on device")

    write_table = _writer.write_table
    monkeypatch.setattr(
        _writer,
        "write_table",
        lambda table, path: disk_full() if path.suffix == failing else write_table(table, path),
    )
    if failing == ".json":
        monkeypatch.setattr(_writer, "os", SimpleNamespace(replace=disk_full))
    with pytest.raises(OSError, match="No space"):
        _writer.export_table(tmp_path / "cells.csv", table, {})
    with pytest.raises(OSError, match="No space"):  # over an earlier export: it stays
        _writer.write_cells_table(str(tmp_path / "earlier.csv"), points, layer)
    assert sorted(tmp_path.iterdir()) == before
    monkeypatch.undo()
    assert _writer.export_table(tmp_path / "cells.csv", table, {})  # not refused


def test_physical_units_scale_lengths_once_and_areas_twice():
    table = pd.DataFrame(
        {"centroid_y": [10.0], "centroid_x": [4.0], "diameter_px": [8.0], "area_px": [50.0]}
    )
    measured = add_physical_units(table, 0.5).iloc[0]
    assert measured[["centroid_y_um", "centroid_x_um", "diameter_um"]].tolist() == [5.0, 2.0, 4.0]
    assert measured["area_um2"] == 12.5
    assert "area_um2" not in add_physical_units(table, None)


def test_a_column_mixing_texts_and_numbers_is_named_when_parquet_refuses_it(tmp_path):
    """A note column filled in napari's features table with texts and numbers made pyarrow
    raise ArrowTypeError from the Export button (a traceback; nothing saved)."""
    import numpy as np

    from napari_bloodcell._napari._writer import export_table

    pytest.importorskip("pyarrow")
    table = _table(2).assign(note=np.array(["check", 3], dtype=object))
    with pytest.raises(BloodcellError, match="column\\(s\\) 'note' mix texts and numbers"):
        write_table(table, tmp_path / "t.parquet")
    with pytest.raises(BloodcellError, match="'note' mix texts"):
        export_table(tmp_path / "e.csv", table, {})  # the CSV and its Parquet copy
    assert not list(tmp_path.iterdir())  # nothing half written, no temporary file
