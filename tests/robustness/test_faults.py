"""Faults while analysing: disk full, a failing frame, SIGINT / SIGTERM mid-run.

Policy (docs/robustness.md): a fault fails the input it hits, with one message naming
the input (and the frame); the other inputs are finished; no partial file is left; an
interrupt keeps every finished input, with a cells.csv that matches its label files.
A killed Dask worker: tests/test_distributed.py::test_a_killed_worker_is_survived; a
cancelled napari batch: tests/test_napari_widgets.py::
test_cancelling_a_batch_keeps_exactly_the_finished_frames.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_bloodcell import batch, pipeline
from napari_bloodcell.batch import analyze_files
from napari_bloodcell.cli import main
from napari_bloodcell.errors import InputImageError
from napari_bloodcell.pipeline import AnalysisSettings
from napari_bloodcell.synthetic import make_timelapse

from .corpus import smear_rgb

N_FRAMES = 4


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> list[Path]:
    """A 4-frame fluorescence stack between two smear frames."""
    folder = tmp_path_factory.mktemp("inputs")
    first, last = folder / "first.png", folder / "last.png"
    iio.imwrite(first, smear_rgb())
    iio.imwrite(last, smear_rgb()[::-1])
    movie = folder / "movie.tif"
    tifffile.imwrite(movie, make_timelapse(n_frames=N_FRAMES, shape=(64, 80), seed=2).image)
    return [first, movie, last]


def assert_consistent(out: Path) -> set[str]:
    """Only complete files: no temporary file, no work in progress, and cells.csv, tables/
    and labels/ name the same inputs with the same labels. Returns the finished stems."""
    leftovers = [p for p in out.rglob("*") if ".tmp" in p.name or p.name == batch.PARTS_FOLDER]
    assert leftovers == []
    tables = {p.stem for p in (out / "tables").glob("*.csv")}
    assert {p.stem for p in (out / "labels").glob("*.tif")} == tables
    cells = pd.read_csv(out / "cells.csv") if tables else pd.DataFrame({"source": []})
    assert {Path(s).stem for s in cells["source"]} == tables
    for stem in tables:
        labels = tifffile.imread(out / "labels" / f"{stem}.tif")
        rows = cells[cells["source"].map(lambda s, stem=stem: Path(s).stem == stem)]
        assert set(np.unique(labels)) - {0} == set(rows["label"])
    return tables


def test_disk_full_fails_that_input_only_and_leaves_no_partial_file(tmp_path, inputs, monkeypatch):
    write_table = batch.write_table

    def full_for_the_movie(table, path):
        if path.parent.name == "movie":  # the movie's staged table in .parts/movie/
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_table(table, path)

    monkeypatch.setattr(batch, "write_table", full_for_the_movie)
    out = tmp_path / "out"
    summary = analyze_files(inputs, out, AnalysisSettings(), model=None)
    assert summary.processed == [str(inputs[0]), str(inputs[2])]
    message = summary.failures[str(inputs[1])]
    assert "movie.tif" in message and "No space left on device" in message
    assert assert_consistent(out) == {"first", "last"}
    assert not list((out / "overlays").glob("movie*"))
    monkeypatch.undo()  # space again: the rerun finishes the movie only
    again = analyze_files(inputs, out, AnalysisSettings(), model=None)
    assert again.processed == [str(inputs[1])] and len(again.skipped) == 2
    assert assert_consistent(out) == {"first", "last", "movie"}


def test_a_disk_full_cells_table_is_one_clear_cli_error(tmp_path, inputs, monkeypatch, capsys):
    write_table = batch.write_table

    def full_for_cells(table, path):
        if path.name == "cells.csv":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return write_table(table, path)

    monkeypatch.setattr(batch, "write_table", full_for_cells)
    out = tmp_path / "out"
    assert main(["analyze", str(inputs[0]), "--out", str(out), "--no-classify"]) == 2
    err = capsys.readouterr().err
    assert "cannot write cells.csv" in err and "No space left" in err and "Traceback" not in err
    assert (out / "tables" / "first.csv").is_file() and not (out / "cells.csv").exists()


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A real 64 KiB file system (root only): full after the first overlay."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)]
    if os.geteuid() != 0 or subprocess.run(mount, capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_really_full_disk_reports_every_input_and_leaves_nothing(tiny_tmpfs, inputs, capsys):
    args = ["analyze", *map(str, inputs), "--out", str(tiny_tmpfs), "--no-classify"]
    assert main(args) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == len(inputs) and all("No space left on device" in line for line in err)
    assert [p for p in tiny_tmpfs.rglob("*") if p.is_file()] == []


@pytest.mark.parametrize(
    "error", [RuntimeError("boom"), InputImageError("no good")], ids=["bug", "bad frame"]
)
def test_a_failing_frame_fails_its_input_naming_the_frame(
    tmp_path, inputs, monkeypatch, capsys, error
):
    segment_frame, calls = pipeline.segment_frame, []

    def fails_on_movie_frame_2(frame, *args, **kwargs):
        calls.append(frame.shape)
        if len(calls) == 1 + 1 + 2:  # first.png, then movie frames 0, 1, 2
            raise error
        return segment_frame(frame, *args, **kwargs)

    monkeypatch.setattr(pipeline, "segment_frame", fails_on_movie_frame_2)
    out = tmp_path / "out"
    assert main(["analyze", *map(str, inputs), "--out", str(out), "--no-classify"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"{inputs[1]}: frame 2: " in line and str(error) in line
    if isinstance(error, RuntimeError):
        assert "unexpected RuntimeError" in line and "report" in line
    assert assert_consistent(out) == {"first", "last"}
    run = json.loads((out / "run.json").read_text())
    assert list(run["failures"]) == [str(inputs[1])]


def _wait_for(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        time.sleep(0.02)


def test_an_interrupt_just_after_an_input_is_committed_keeps_it_in_cells_csv(
    tmp_path, inputs, monkeypatch
):
    finish_input = batch._finish_input

    def interrupted_after_the_first(job, unit_results, out):
        finish_input(job, unit_results, out)  # the table is in place...
        raise KeyboardInterrupt  # ...and the signal arrives before the loop records it

    monkeypatch.setattr(batch, "_finish_input", interrupted_after_the_first)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        analyze_files(inputs, out, AnalysisSettings(), model=None)
    assert assert_consistent(out) == {inputs[0].stem}


@pytest.mark.parametrize(
    ("signum", "cluster"),
    [(signal.SIGINT, []), (signal.SIGTERM, []), (signal.SIGINT, ["--workers", "1"])],
    ids=["SIGINT", "SIGTERM", "Ctrl-C on a local cluster"],
)
def test_an_interrupted_run_keeps_complete_results_and_the_rerun_resumes(
    tmp_path, signum, cluster, capsys
):
    """Ctrl-C reaches the whole process group: on a local cluster its workers too, which
    each printed tracebacks, and units still running failed noisily on their removed
    parts."""
    folder = tmp_path / "in"
    folder.mkdir()
    iio.imwrite(folder / "smear_00.png", smear_rgb())
    inputs = [folder / "smear_00.png"]
    for i in range(1, 48):  # enough that a loaded machine cannot finish them all before the signal
        inputs.append(Path(shutil.copy(inputs[0], folder / f"smear_{i:02d}.png")))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_bloodcell.cli", "analyze", *map(str, inputs)]
    process = subprocess.Popen(
        [*command, "--out", str(out), "--no-classify", *cluster],
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a process group of its own, as a terminal's job has
    )
    try:
        _wait_for(lambda: any((out / "tables").glob("*.csv")), timeout=60)
        os.killpg(process.pid, signum)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum
    assert f"interrupted ({signal.Signals(signum).name})" in err
    assert "Traceback" not in err and "ERROR" not in err
    finished = assert_consistent(out)
    assert 1 <= len(finished) < len(inputs)
    assert json.loads((out / "run.json").read_text())["failures"]  # the unfinished ones

    assert main(["analyze", *map(str, inputs), "--out", str(out), "--no-classify"]) == 0
    assert capsys.readouterr().err.count("skipped") == len(finished)
    assert assert_consistent(out) == {p.stem for p in inputs}
