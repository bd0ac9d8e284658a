"""Analysing files into an output folder: labels, overlays and the per-cell table.

Layout of ``out``::

    cells.csv               every finished input's rows, rebuilt from tables/ after each run
                            (and cells.parquet with pyarrow)
    tables/<stem>.csv       one input's rows; written last, it marks that input as finished
    labels/<stem>.tif       uint32 instance labels, (Y, X) or (T, Y, X) like the input
    overlays/<stem>.png     outlines coloured by class, of a single frame
    overlays/<stem>/tNNNN.png       … of a stack's first frames (a folder: no name can clash)
    run.json                the last run: parameters, model, inputs analysed, skipped, failed
    .parts/<stem>/          one input's work in progress, removed when it is finished

**Units of work** are (input, chunk of frames): one task each. Each input is opened
when the run reaches its first unit (an archive's thousands of stacks are not all
opened before the first unit starts). A unit reads its frames
from the lazy stack (:func:`~napari_bloodcell.reading.open_lazy`; it carries the
stack's dask graph culled to its own frames, so only the chunk is ever in memory and
sending a unit costs the same whatever the stack's length), analyses them one by one,
streams their labels to ``.parts/<stem>/`` with its overlays and returns its table
rows. When every unit of an input is done its labels are copied page by page into
``labels/<stem>.tif``, its overlays moved and its table written. Units run here one
after the other, or on a Dask cluster when a ``client`` is given
(:mod:`napari_bloodcell.distributed`, which keeps about two units per worker thread
submitted at a time, at least 32); both give the same files. On a cluster the workers must
see ``out`` and the inputs (a shared file system).

**Reruns** skip inputs that are finished in ``out`` (``summary.skipped`` says so) and
analyse the others; ``overwrite`` analyses every input again. An input is recognised by
its record (``tables/<stem>.input.json``): a copy or a moved file with the same size and
modification time is the same input; a file rewritten since its results were made fails
unless ``overwrite``; an input whose results were being moved into place when a run
stopped is analysed again. ``cells.csv`` always holds
every finished input. Every file is written under a temporary name and renamed, so
``out`` never holds a half-written file, and an input's old results are replaced only
once its new ones are complete: they are staged in ``.parts/<stem>/``, then renamed
into place, its table last (a table in ``tables/`` always belongs to the labels and
overlays beside it).

**Failures** (see ``docs/robustness.md``): an input that cannot be read, a frame that
fails (named in the message, whatever the exception) or results that cannot be written
(disk full, read-only folder) fail that input only; its work in progress is removed and
the other inputs go on. An interrupt (Ctrl-C, or SIGTERM through the CLI) — or any
unforeseen error — removes the work in progress, rebuilds ``cells.csv`` from the finished
inputs (those with labels beside their table) and re-raises.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .errors import BloodcellError, InputImageError, OutputExistsError, one_line
from .overlays import save_overlay_png
from .pipeline import AnalysisSettings, concat_tables, iter_analyze_stack
from .reading import LazyImage, PartOfAnotherFileError, open_lazy, recorded_frame_interval_s
from .table import parquet_available, read_table, write_table

MAX_OVERLAYS_PER_INPUT = 10
FRAMES_PER_UNIT = 8
"""Frames analysed by one unit of work: memory per worker grows with it, overhead shrinks."""
PARTS_FOLDER = ".parts"
STAGED_LABELS = "labels.tif"
STAGED_TABLE = "table.csv"


@dataclass
class BatchSummary:
    """What a batch run did: per-input outcome, the table, timings.

    ``table`` holds the rows of this run's inputs, analysed now or skipped as finished.
    """

    out: Path
    table: pd.DataFrame
    processed: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    parts: dict[str, str] = field(default_factory=dict)
    """Later files of a multi-file OME-TIFF whose first file is an input too (its frames
    are that input's rows): input → why it was left out."""
    modalities: dict[str, str] = field(default_factory=dict)
    pixel_sizes_um: dict[str, float | None] = field(default_factory=dict)
    """µm per pixel each analysed input was measured with (given, or from its file)."""
    frame_intervals_s: dict[str, float | None] = field(default_factory=dict)
    """Seconds between frames each input's file records (None: not recorded), for the
    inputs analysed and those skipped as finished (their tables are tracked too)."""
    axes: dict[str, str] = field(default_factory=dict)
    """The axes each analysed input was read with (given, from its file, or its shape's)."""
    n_frames: int = 0
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)

    @property
    def seconds_per_frame(self) -> float:
        return self.seconds / self.n_frames if self.n_frames else float("nan")


@dataclass(frozen=True)
class BatchProgress:
    """Progress after a unit of work: this input's frames, and the frames of the inputs
    opened so far (inputs are opened as the run reaches them: ``total_frames`` grows
    until ``inputs_opened == inputs_to_open``)."""

    source: str
    frames_done: int
    n_frames: int
    total_done: int
    total_frames: int
    inputs_opened: int
    inputs_to_open: int

    @property
    def fraction(self) -> float:
        """The run's estimated fraction done (the inputs not yet opened counted as long as
        the average opened one)."""
        if self.total_frames == 0:
            return 0.0
        opened = max(self.inputs_opened, 1)
        return self.total_done / self.total_frames * opened / max(self.inputs_to_open, opened)


@dataclass(frozen=True)
class InputJob:
    """What every unit of work on one input needs (sent to the workers)."""

    source: str
    stem: str
    input_record: str  # what identifies the input file (see recorded_input), when opened
    axes: str  # the input's axes as read (e.g. "TYXC")
    parts: Path
    n_frames: int
    frame_shape: tuple[int, int]
    settings: AnalysisSettings
    model_path: Path | None
    model_stamp: tuple[int, int] | None  # the model file as chosen at the start of the run
    max_overlays: int
    frame_interval_s: float | None = None  # recorded in the file (a stack's only)


@dataclass(frozen=True)
class FrameChunk:
    """Frames ``first … first + n − 1`` of a lazy stack, read when a unit runs (on its
    worker): ``frames`` is the stack's dask array sliced and culled to those frames."""

    frames: object  # dask array (n, Y, X, C)
    first: int

    def read(self) -> np.ndarray:
        """The (n, Y, X, C) frames, computed here (in this worker's process)."""
        return np.asarray(self.frames.compute(scheduler="sync"))


@dataclass
class UnitResult:
    """One unit's outcome: the table rows of its frames and the modalities found."""

    first_frame: int
    n_frames: int
    table: pd.DataFrame
    modalities: set[str]
    seconds: float


def check_inputs(inputs: list[str | Path], out: Path) -> list[Path]:
    """The inputs, each file once (overlapping patterns name files twice), or an error for
    an empty list, colliding input names and an ``out`` that is a file."""
    inputs = _once_each([Path(p) for p in inputs])
    if not inputs:
        raise InputImageError("no input files given")
    stems: dict[str, Path] = {}
    for path in inputs:
        key = path.stem.casefold()  # one file name on macOS and Windows file systems
        if key in stems:
            raise InputImageError(
                f"{stems[key]} and {path} share the name {path.stem!r}; their results would "
                f"overwrite each other: analyse them into different --out folders"
            )
        stems[key] = path
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out}: exists and is not a folder")
    return inputs


def _once_each(paths: list[Path]) -> list[Path]:
    """``paths`` without repeats of one file (the same path once ``..`` and links are
    resolved), in their first order."""
    first: dict[Path, Path] = {}
    for path in paths:
        first.setdefault(path.resolve(), path)
    return list(first.values())


def _skipped_or_failed(
    path: Path, out: Path, overwrite: bool, choices: dict, summary: BatchSummary
) -> bool:
    """Whether ``path`` is finished in ``out`` (recorded in ``summary.skipped``) or its
    record cannot be read (``summary.failures``); else it is to be analysed."""
    try:
        record = read_input_record(out, path.stem)
        recorded = recorded_input(path, out, record)
        reason = None if overwrite else finished_reason(path, out, recorded)
    except BloodcellError as exc:
        summary.failures[str(path)] = str(exc)
        return True
    if reason is None:
        return False
    differing = other_choices(record, choices)
    if differing:
        reason += (
            f" (they were made with another {', '.join(differing)}: "
            f"--overwrite analyses it with this run's)"
        )
    summary.skipped[str(path)] = reason
    # tracked again: the interval recorded with its results (results of older versions:
    # the file read again)
    kept = record or {}
    summary.frame_intervals_s[str(path)] = (
        kept["frame_interval_s"] if "frame_interval_s" in kept else recorded_frame_interval_s(path)
    )
    return True


def read_input_record(out: Path, stem: str) -> dict | None:
    """The record of the results of ``stem`` in ``out`` (see :func:`_input_record`), or
    None when there is none readable (none yet, or an older version's results)."""
    try:
        record = json.loads(_input_record_path(out, stem).read_text())
    except (OSError, ValueError):
        return None
    readable = isinstance(record, dict) and isinstance(record.get("input"), str)
    return record if readable else None


def recorded_input(path: Path, out: Path, record: dict | None) -> str | None:
    """How the results in ``out`` named like ``path`` relate to it, by their ``record``
    (:func:`read_input_record`): None (no record), ``"same"`` (this file, as it was: the
    same file, or one moved or copied — a renamed folder, another mount, a staged copy —
    with its size and modification time) or ``"changed"`` (this file, rewritten since).
    Raises :class:`OutputExistsError` when they are another file's of that name (e.g.
    ``day1/movie.tif`` then ``day2/movie.tif``): they would be taken for ``path``'s, or
    replaced by them."""
    if record is None:
        return None
    recorded = Path(record["input"])
    try:
        stat = path.stat()
        as_recorded = [record.get("bytes"), record.get("mtime_ns")] == [
            stat.st_size,
            stat.st_mtime_ns,
        ]
        this_file = recorded.exists() and os.path.samefile(recorded, path)
    except OSError as exc:  # a missing input fails alone, whatever results carry its name
        raise InputImageError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if as_recorded:
        return "same"
    if this_file:
        return "changed"
    raise OutputExistsError(
        f"{out} holds the results of {recorded}, another file named {path.stem!r}; "
        f"analyse {path} into another --out folder (or delete those results)"
    )


def _input_record(path: Path, choices: dict, frame_interval_s: float | None) -> str:
    """What :func:`recorded_input` recognises a file by, the run's ``choices``
    (:func:`run_choices`) its results were made with, and the frame interval the file
    records (for ``track`` on cells.csv, whichever run analysed the input; JSON)."""
    stat = path.stat()
    return json.dumps(
        {
            "input": str(path.resolve()),
            "bytes": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "choices": choices,
            "frame_interval_s": frame_interval_s,
        }
    )


def run_choices(settings: AnalysisSettings, classifier, axes: str | None = None) -> dict:
    """What a run was asked for that shapes an input's results (JSON-ready): the settings
    as given (a pixel size read from a file is the file's, not a choice), the ``axes``
    given (None: from the file or its shape) and the model file, by name and stamp
    (modification time in ns, size)."""
    return {
        "axes": axes,
        "modality": settings.modality,
        "channels": dict(settings.channels) if settings.channels else None,
        "pixel_size_um": settings.pixel_size_um,
        "uncertain_threshold": settings.uncertain_threshold,
        "model": None
        if classifier is None
        else {"name": classifier.name, "stamp": list(classifier.stamp)},
    }


def other_choices(record: dict | None, choices: dict) -> list[str]:
    """The choices (:func:`run_choices`) that differ from those in an input's ``record``
    (none when it records none: results of an older version)."""
    recorded = (record or {}).get("choices")
    if not isinstance(recorded, dict):
        return []
    return [name for name, value in choices.items() if recorded.get(name) != value]


def finished_reason(path: Path, out: Path, recorded: str | None) -> str | None:
    """Why ``path`` needs no analysis into ``out`` (its results exist), or None (analyse
    it); ``recorded`` is :func:`recorded_input`'s answer.

    Labels without a table after a run that recorded this file were being moved into
    place when that run stopped: analysed again. Raises :class:`OutputExistsError`, which
    only ``overwrite`` may pass, for results of a file rewritten since, and for labels
    without a table and without a record (an older version's interrupted run).
    """
    table, labels = _table_path(out, path.stem), _labels_path(out, path.stem)
    if table.exists() and recorded == "changed":
        raise OutputExistsError(
            f"{path} changed after {out} got its results (its size or modification time "
            f"differ); pass --overwrite to analyse it again"
        )
    if table.exists() and not labels.exists():
        raise OutputExistsError(
            f"{out} holds {table.relative_to(out)} without {labels.relative_to(out)} "
            f"(deleted?), so its cells are not in cells.csv; pass --overwrite to analyse it "
            f"again"
        )
    if table.exists():
        return (
            f"skipped: {out} already holds its results ({labels.relative_to(out)}, "
            f"{table.relative_to(out)}); pass --overwrite to analyse it again"
        )
    if labels.exists() and recorded is None:
        raise OutputExistsError(
            f"{labels} exists without {table.relative_to(out)} (an older or interrupted "
            f"run); pass --overwrite to replace it"
        )
    return None


def analyze_files(
    inputs: list[Path],
    out: Path,
    settings: AnalysisSettings,
    *,
    model: str | Path | None = "default",
    axes: str | None = None,
    overwrite: bool = False,
    max_overlays: int = MAX_OVERLAYS_PER_INPUT,
    frames_per_unit: int = FRAMES_PER_UNIT,
    client=None,
    on_progress: Callable[[BatchProgress], None] | None = None,
) -> BatchSummary:
    """Analyse every input file into ``out``; a bad input is reported and the others go on.

    Inputs are opened lazily and analysed in units of ``frames_per_unit`` frames, here
    or on the Dask cluster of ``client`` (a ``distributed.Client``). Finished inputs are
    skipped unless ``overwrite``. ``on_progress`` is called after each unit of work.
    """
    out = Path(out).absolute()  # Dask workers may run in other working folders
    inputs = check_inputs(inputs, out)
    if frames_per_unit < 1:
        raise BloodcellError(f"frames per unit must be at least 1, got {frames_per_unit}")
    classifier = _model_metadata(model)
    started, started_ns = time.perf_counter(), time.time_ns()
    committing: tuple[InputJob, list[UnitResult]] | None = None  # the input being moved in
    summary = BatchSummary(out=out, table=pd.DataFrame())
    choices = run_choices(settings, classifier, axes)
    to_open = {  # each input and its absolute path (the working folder may change)
        path: path.absolute()
        for path in inputs
        if not _skipped_or_failed(path, out, overwrite, choices, summary)
    }
    if to_open:
        check_writable(out)
        if classifier is not None:  # a bad network fails the run at once, not every input
            _load_network_once(classifier, client)
    input_files = {path.resolve() for path in inputs}  # (a multi-file OME-TIFF's first file?)
    jobs: list[InputJob] = []
    results: dict[str, list[UnitResult]] = {}
    n_units: dict[str, int] = {}
    not_opened, total_frames, total_done = 0, 0, 0  # not_opened: failed, or parts
    progress: BatchProgress | None = None  # the last reported

    def units() -> Iterator[tuple[FrameChunk, InputJob]]:
        """Each input opened when its first unit's turn comes (an archive's thousands of
        stacks are not all read before the first unit starts), then its units."""
        nonlocal not_opened, total_frames
        for path, absolute in to_open.items():
            try:
                image = open_lazy(absolute, axes=axes)
                job = _input_job(path, absolute, out, image, settings, classifier, max_overlays,
                                 choices)  # fmt: skip
            except PartOfAnotherFileError as exc:
                not_opened += 1
                if exc.first_file.resolve() in input_files:
                    summary.parts[str(path)] = (
                        f"part of the multi-file OME-TIFF {exc.first_file.name}, analysed "
                        f"with it (the frames of all its files are its rows)"
                    )
                else:
                    summary.failures[str(path)] = str(exc)
                continue
            except Exception as exc:  # this input fails, not the run (failure_message)
                not_opened += 1
                summary.failures[str(path)] = failure_message(str(path), exc)
                continue
            job_chunks = _chunks(image, frames_per_unit)
            jobs.append(job)  # before its work folder exists: a stop from here removes it
            # made here, never by a unit: one still running after a stop finds it gone
            shutil.rmtree(job.parts, ignore_errors=True)  # (leftovers of an interrupted run)
            job.parts.mkdir(parents=True, exist_ok=True)
            results[job.source], n_units[job.source] = [], len(job_chunks)
            total_frames += job.n_frames
            for chunk in job_chunks:
                yield chunk, job

    def failed_unit(unit: tuple[FrameChunk, InputJob]) -> bool:
        return unit[1].source in summary.failures

    computed = _computed(units(), client, skip=failed_unit)
    try:
        for (_, job), outcome in computed:
            if job.source in summary.failures:
                continue
            if isinstance(outcome, BaseException):
                summary.failures[job.source] = failure_message(job.source, outcome)
                continue
            results[job.source].append(outcome)
            total_done += outcome.n_frames
            if on_progress is not None:
                done = sum(r.n_frames for r in results[job.source])
                still_to_open = len(to_open) - not_opened
                progress = BatchProgress(
                    job.source,
                    done,
                    job.n_frames,
                    total_done,
                    total_frames,
                    len(jobs),
                    still_to_open,
                )
                on_progress(progress)
            if len(results[job.source]) == n_units[job.source]:
                unit_results = sorted(results.pop(job.source), key=lambda r: r.first_frame)
                committing = job, unit_results
                try:
                    summary.written += _finish_input(job, unit_results, out)
                except BloodcellError as exc:
                    committing = None
                    summary.failures[job.source] = str(exc)
                    continue
                _count_processed(summary, job, unit_results)
                committing = None
    except BaseException as exc:  # Ctrl-C, or anything unforeseen: the same cleanup
        computed.close()  # no more units start (on a cluster: the queued ones are cancelled)
        for job in jobs:
            _remove_parts(job)
        job = committing[0] if committing is not None else None
        if job and job.source not in summary.processed and _committed(job, out, started_ns):
            _count_processed(summary, *committing)  # interrupted just after its table moved in
        ended = {*summary.processed, *summary.failures, *summary.parts}
        unfinished = [str(path) for path in to_open if str(path) not in ended]
        stopped = (
            "interrupted"
            if isinstance(exc, KeyboardInterrupt)
            else f"the run stopped ({type(exc).__name__}: {exc})"
        )
        summary.failures.update(dict.fromkeys(unfinished, stopped))
        try:
            _record_run(summary, inputs, settings, classifier, client, out, started)
        except (BloodcellError, OSError) as record_error:  # the interrupt stays what is raised
            warnings.warn(f"the run could not be recorded: {record_error}", stacklevel=2)
        raise
    if progress is not None and progress.fraction < 1:  # the last inputs could not be opened
        on_progress(replace(progress, inputs_to_open=len(to_open) - not_opened))
    for job in jobs:
        if job.source in summary.failures:  # its units that ran have all finished by now
            _remove_parts(job)
    _record_run(summary, inputs, settings, classifier, client, out, started)
    return summary


def _count_processed(summary: BatchSummary, job: InputJob, unit_results: list[UnitResult]):
    """Record an input whose results were moved into the output folder."""
    summary.processed.append(job.source)
    summary.modalities[job.source] = "+".join(
        sorted(set().union(*(r.modalities for r in unit_results)))
    )
    summary.pixel_sizes_um[job.source] = job.settings.pixel_size_um
    summary.frame_intervals_s[job.source] = job.frame_interval_s
    summary.axes[job.source] = job.axes
    summary.n_frames += job.n_frames


def _committed(job: InputJob, out: Path, since_ns: int) -> bool:
    """Whether ``job``'s table was moved into ``out`` since ``since_ns`` (time.time_ns)."""
    try:
        return _table_path(out, job.stem).stat().st_mtime_ns >= since_ns
    except OSError:
        return False


def _record_run(summary, inputs, settings, classifier, client, out, started) -> None:
    """Fill in the summary's timing and table; write cells.csv and run.json when an input
    was processed (else they stay the record of the results already there, but cells.csv
    is rebuilt when it misses finished inputs' tables: a run stopped after an input's
    table moved in, before cells.csv was rewritten)."""
    summary.seconds = time.perf_counter() - started
    order = {str(p): i for i, p in enumerate(inputs)}
    summary.processed.sort(key=order.__getitem__)  # cluster: completion order
    processed = set(summary.processed)  # (lists: quadratic in an archive's inputs)
    finished = [p.stem for p in inputs if str(p) in processed or str(p) in summary.skipped]
    tables = _read_tables(finished, out, summary.failures)
    summary.table = _joined(tables)
    if summary.processed:  # (each table read once: an archive holds thousands)
        summary.written += _write_run_tables(summary, settings, classifier, client, out, tables)
    elif _cells_tables_stale(out):
        unreadable: dict[str, str] = {}
        every = _read_tables([t.stem for t in _finished_tables(out)], out, unreadable, tables)
        cells_csv = out / "cells.csv"
        if unreadable and cells_csv.exists():  # rebuilt, it would lose their rows
            summary.failures.update(unreadable | summary.failures)  # (this run's reports stay)
            summary.failures[str(cells_csv)] = (
                "older than the finished tables, not rebuilt: it would lose the rows of the "
                "unreadable tables reported; analyse their inputs again (--overwrite)"
            )
        else:  # (unreadable tables are left out of a missing cells.csv, and reported)
            summary.written += _write_cells_tables(summary, out, every)


def _finished_tables(out: Path) -> list[Path]:
    """The tables of the finished inputs in ``out`` (a table with labels beside it: another
    CSV put in ``tables/`` is not one)."""
    return sorted(
        (
            table
            for table in (out / "tables").glob("*.csv")
            if _labels_path(out, table.stem).exists()
        ),
        key=lambda table: table.stem,
    )


def _cells_tables_stale(out: Path) -> bool:
    """Whether cells.csv (or cells.parquet, where it can be written) is missing or older
    than a finished input's table."""
    try:
        tables = _finished_tables(out)
        if not tables:
            return False
        newest = max(table.stat().st_mtime_ns for table in tables)
        joined = [out / "cells.csv", *([out / "cells.parquet"] if parquet_available() else [])]
        return any(not path.exists() or path.stat().st_mtime_ns < newest for path in joined)
    except OSError:  # (a table removed meanwhile: the next run looks again)
        return False


def check_writable(out: Path) -> None:
    """Create ``out`` and prove a file can be written in it, or raise :class:`BloodcellError`."""
    import tempfile

    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise BloodcellError(f"{out}: cannot write results there ({exc.strerror or exc})") from None


def failure_message(source: str, error: BaseException) -> str:
    """One line for an input that failed: a :class:`BloodcellError`'s own message, else
    the unexpected exception's type and message (a bug, worth reporting)."""
    if isinstance(error, BloodcellError):
        return str(error)
    return f"{source}: {_unexpected(error)}"


def _unexpected(error: BaseException) -> str:
    return f"unexpected {type(error).__name__} ({error}); please report this bug"


def _computed(
    units: Iterator[tuple[FrameChunk, InputJob]], client, skip: Callable[[tuple], bool]
) -> Iterator[tuple[tuple[FrameChunk, InputJob], object]]:
    """``(unit, result or the exception raised)`` per unit as each finishes: here one
    after the other, or on the cluster of ``client``. ``units`` is drawn from only as
    units are started; those for which ``skip(unit)`` is true when their turn comes are
    not run (those of an input that failed)."""
    if client is not None:
        from .distributed import compute_on_cluster

        yield from compute_on_cluster(analyze_unit, units, client, skip)
        return
    for unit in units:
        if skip(unit):
            continue
        try:
            result = analyze_unit(*unit)
        except Exception as exc:  # the unit's input fails, not the run (failure_message)
            result = exc
        yield unit, result


def analyze_unit(chunk: FrameChunk, job: InputJob) -> UnitResult:
    """Read and analyse one chunk of frames of one input, writing their labels and
    overlays under ``job.parts``; returns their table rows.

    The classifier is loaded once per process (see :func:`cached_classifier`), so a Dask
    worker loads the network for its first unit only. Any error in a frame raises a
    :class:`BloodcellError` naming the input and the frame; an error writing raises one
    naming the input (the half-written part is removed).
    """
    classifier = (
        cached_classifier(job.model_path, job.model_stamp) if job.model_path is not None else None
    )
    frames, first_frame = chunk.read(), chunk.first
    tables, modalities, seconds = [], set(), 0.0

    def labels_of_each_frame() -> Iterator[np.ndarray]:
        nonlocal seconds
        results = iter_analyze_stack(
            frames, classifier, job.settings, source=Path(job.source).name, first_frame=first_frame
        )
        for t in range(first_frame, first_frame + len(frames)):
            try:
                result = next(results)
            except Exception as exc:  # any failure fails this input, naming the frame
                raise _frame_error(job.source, t, exc) from exc
            tables.append(result.table)
            modalities.add(result.modality)
            seconds += result.seconds
            if t < job.max_overlays:
                overlay = job.parts / f"overlay_{t:06d}.png"
                save_overlay_png(overlay, frames[t - first_frame], result.labels, result.table)
            yield result.labels

    if not job.parts.is_dir():
        raise BloodcellError(f"{job.source}: the run was stopped (its work folder is gone)")
    try:
        write_label_stack(
            job.parts / f"labels_{first_frame:06d}.tif",
            labels_of_each_frame(),
            n_frames=len(frames),
            frame_shape=job.frame_shape,
        )
    except OSError as exc:
        raise _write_error(job.source, exc) from exc
    return UnitResult(first_frame, len(frames), concat_tables(tables), modalities, seconds)


def _frame_error(source: str, t: int, error: Exception) -> BloodcellError:
    """A frame's failure as a :class:`BloodcellError` naming the input and the frame."""
    if isinstance(error, BloodcellError):
        return type(error)(f"{source}: frame {t}: {error}")
    return BloodcellError(f"{source}: frame {t}: {_unexpected(error)}")


def _write_error(source: str, error: OSError) -> BloodcellError:
    return BloodcellError(f"{source}: cannot write its results ({error})")


BIGTIFF_FROM_BYTES = 2**32 - 2**25
"""Label stacks this large (uncompressed) are written as BigTIFF: classic TIFF offsets end
at 4 GiB, and compressed labels might still pass it."""


def write_label_stack(
    path: Path, frames: Iterator[np.ndarray], *, n_frames: int, frame_shape: tuple[int, int]
) -> Path:
    """Write uint32 (Y, X) label frames page by page (never all in memory), atomically,
    as (Y, X) when there is one frame, else (T, Y, X), into ``path``'s existing folder."""
    import tifffile

    tmp = path.with_name(f".{path.name}.tmp.tif")
    shape = tuple(frame_shape) if n_frames == 1 else (n_frames, *frame_shape)
    raw_bytes = int(np.prod(shape)) * np.dtype(np.uint32).itemsize
    try:
        tifffile.imwrite(
            tmp,
            (np.asarray(frame, dtype=np.uint32) for frame in frames),
            shape=shape,
            dtype=np.uint32,
            compression="zlib",
            # tifffile picks BigTIFF by itself only for uncompressed data
            bigtiff=raw_bytes >= BIGTIFF_FROM_BYTES,
            photometric="minisblack",  # never read a 3- or 4-frame stack as RGB(A)
            metadata={"axes": "YX" if n_frames == 1 else "TYX"},
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@functools.lru_cache(maxsize=4)
def cached_classifier(model_path: Path, chosen_stamp: tuple[int, int]):
    """The classifier of a model file as it was when the run chose it (its ``stamp``),
    loaded once per process: a Dask worker keeps its network for all the units it runs.
    A file replaced since is refused (:class:`ModelError`) by a process that has not
    loaded it yet, so one run never mixes two models."""
    from .classification.inference import CellClassifier

    return CellClassifier(model_path, chosen_stamp=chosen_stamp)


def load_network(model_path: Path, chosen_stamp: tuple[int, int]) -> None:
    """Load the run's network in this process (:func:`cached_classifier`: a Dask worker
    keeps it for the units it runs)."""
    cached_classifier(model_path, chosen_stamp).load()


def _load_network_once(classifier, client) -> None:
    """Load the network here, or on one worker of ``client``'s cluster, before any unit
    runs: a network that does not load (:class:`ModelError`) stops the run before it
    starts instead of failing every input on the workers."""
    if client is None:
        load_network(classifier.path, classifier.stamp)
    else:
        loaded = client.submit(load_network, classifier.path, classifier.stamp, pure=False)
        try:
            loaded.result()
        finally:
            loaded.release()  # not kept by the client (nor by the error's traceback)


def _model_metadata(model):
    """The model's classifier object for its path, classes and metadata (no network load)."""
    if model is None:
        return None
    from .classification.inference import CellClassifier

    return CellClassifier(model)


def _input_job(
    path, absolute, out, image: LazyImage, settings, classifier, max_overlays, choices: dict
) -> InputJob:
    """The job of input ``path`` (as given; ``absolute`` is where it is)."""
    if settings.pixel_size_um is None and image.pixel_size_um is not None:
        settings = replace(settings, pixel_size_um=image.pixel_size_um)
    frame_interval_s = recorded_frame_interval_s(absolute) if image.n_frames > 1 else None
    return InputJob(
        source=str(path),
        stem=path.stem,
        input_record=_input_record(absolute, choices, frame_interval_s),
        axes=image.original_axes,
        parts=out / PARTS_FOLDER / path.stem,
        n_frames=image.n_frames,
        frame_shape=tuple(image.data.shape[1:3]),
        settings=settings,
        model_path=classifier.path.absolute() if classifier is not None else None,
        model_stamp=classifier.stamp if classifier is not None else None,
        max_overlays=max_overlays,
        frame_interval_s=frame_interval_s,
    )


def _chunks(image: LazyImage, frames_per_unit: int) -> list[FrameChunk]:
    """The stack cut into chunks of ``frames_per_unit`` frames, each with its own culled
    graph (reading them stays lazy).

    The stack's graph is optimised once and each chunk takes only the tasks its frames
    depend on (optimising each chunk's slice went over the whole stack's graph every time:
    time ∝ frames², ~9 s at 8,000 frames). Frames are single blocks along T (see
    :func:`~napari_bloodcell.reading.lazy_image_from_array`)."""
    import dask
    from dask.array import Array
    from dask.base import tokenize
    from dask.optimization import cull

    stack = dask.optimize(image.data.rechunk({0: 1}))[0]  # (a no-op for open_lazy's)
    graph = dict(stack.__dask_graph__())
    inner = (0,) * (stack.ndim - 1)
    chunks = []
    for start in range(0, image.n_frames, frames_per_unit):
        n = min(frames_per_unit, image.n_frames - start)
        name = f"frames-{tokenize(stack.name, start, n)}"
        wanted = [(stack.name, start + i, *inner) for i in range(n)]
        tasks, _ = cull(graph, wanted)
        tasks.update({(name, i, *inner): key for i, key in enumerate(wanted)})  # aliases
        frames = Array(tasks, name, ((1,) * n, *stack.chunks[1:]), meta=stack._meta)
        chunks.append(FrameChunk(frames, start))
    return chunks


def _finish_input(job: InputJob, unit_results: list[UnitResult], out: Path) -> list[Path]:
    """Assemble one input's labels, overlays and table from its units (sorted by frame);
    returns the files written.

    Everything is first staged complete in ``job.parts`` (the old results untouched),
    then renamed into place: the old table goes first and the new one comes last, so a
    table always matches the labels beside it. Raises :class:`BloodcellError` (the
    staged files removed) if a file cannot be written; the input then has no table until
    the next run analyses it again (no ``overwrite`` needed).
    """
    parts = [job.parts / f"labels_{r.first_frame:06d}.tif" for r in unit_results]
    table = concat_tables([r.table for r in unit_results])
    labels, table_path = _labels_path(out, job.stem), _table_path(out, job.stem)
    try:
        staged_labels = write_label_stack(
            job.parts / STAGED_LABELS,
            _pages_of(parts),
            n_frames=job.n_frames,
            frame_shape=job.frame_shape,
        )
        staged_table = write_table(table, job.parts / STAGED_TABLE)
        staged_record = job.parts / "input.json"
        staged_record.write_text(job.input_record)
        for folder in (labels.parent, table_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        _remove_tracking(out, job.stem)  # (it tracked the results replaced now)
        table_path.unlink(missing_ok=True)
        # the record first: labels without a table beside a record of this input are an
        # interrupted move, analysed again by the next run (see finished_reason)
        written = [staged_record.replace(_input_record_path(out, job.stem))]
        written += [staged_labels.replace(labels), *_move_overlays(job, out)]
        written.append(staged_table.replace(table_path))
    except OSError as exc:
        raise _write_error(job.source, exc) from exc
    finally:
        _remove_parts(job)
    return written


def _remove_tracking(out: Path, stem: str) -> None:
    """Remove the tracking tables ``analyze --track`` wrote for input ``stem`` (other files
    in their folder stay): they would outlive the results they tracked (an ``--overwrite``
    run without ``--track`` left them, and a later ``--track`` run kept them)."""
    from .tracking import existing_tracking_files

    folder = out / "tracking" / stem
    for file in existing_tracking_files(folder):
        file.unlink()
    with contextlib.suppress(OSError):  # not there, or holding a file of the user's
        folder.rmdir()


def _remove_parts(job: InputJob) -> None:
    """Remove an input's work in progress (and the parts folder once empty)."""
    shutil.rmtree(job.parts, ignore_errors=True)
    if job.parts.parent.is_dir() and not any(job.parts.parent.iterdir()):
        with contextlib.suppress(OSError):  # a worker may just have started another input
            job.parts.parent.rmdir()


def _pages_of(paths: list[Path]) -> Iterator[np.ndarray]:
    """The pages of several TIFF files in order, one page in memory at a time."""
    import tifffile

    for path in paths:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                yield page.asarray()


def _move_overlays(job: InputJob, out: Path) -> list[Path]:
    """Replace the input's old overlays by the ones its units wrote."""
    folder = out / "overlays"
    for old in _old_overlays(job.stem, out):
        old.unlink(missing_ok=True)
    moved = []
    for overlay in sorted(job.parts.glob("overlay_*.png")):
        t = int(overlay.stem.removeprefix("overlay_"))
        target = (
            folder / job.stem / f"t{t:04d}.png" if job.n_frames > 1 else folder / f"{job.stem}.png"
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        moved.append(overlay.replace(target))
    return moved


def _old_overlays(stem: str, out: Path) -> list[Path]:
    """The overlays of ``stem`` in ``out``: its PNG, the frames in its folder, and the
    ``<stem>_tNNNN.png`` frames of earlier versions (not another input so named)."""
    folder = out / "overlays"
    if not folder.is_dir():
        return []
    frame_name = re.compile(r"t[0-9]{4,}\.png")  # t0000 … t9999, t10000 …
    own = [folder / f"{stem}.png"]
    if (folder / stem).is_dir():
        own += [p for p in (folder / stem).iterdir() if frame_name.fullmatch(p.name)]
    legacy = re.compile(re.escape(stem) + r"_t[0-9]{4}\.png")  # a stem may hold [ ] * ?
    own += [
        p
        for p in folder.iterdir()
        if legacy.fullmatch(p.name) and not _table_path(out, p.stem).exists()
    ]
    return own


def _labels_path(out: Path, stem: str) -> Path:
    return out / "labels" / f"{stem}.tif"


def _table_path(out: Path, stem: str) -> Path:
    return out / "tables" / f"{stem}.csv"


def _input_record_path(out: Path, stem: str) -> Path:
    """Which file the results of ``stem`` came from (``{"input": resolved path}``)."""
    return out / "tables" / f"{stem}.input.json"


def _read_tables(
    stems: list[str],
    out: Path,
    failures: dict[str, str],
    known: dict | None = None,
    *,
    for_cells_csv: bool = False,
) -> dict:
    """Finished inputs' tables by file stem, in the order given (those in ``known`` not
    read again). A table that cannot be read is left out and reported in ``failures``
    (by its path; ``for_cells_csv``: read to rebuild cells.csv, which it is left out of):
    one damaged file must not stop every later run of the folder."""
    known = known or {}
    tables = {}
    for stem in stems:
        if stem in known:
            tables[stem] = known[stem]
            continue
        path = _table_path(out, stem)
        try:
            tables[stem] = read_table(path)
        except (BloodcellError, OSError) as exc:
            consequence = "left out of cells.csv" if for_cells_csv else "cannot be read"
            failures[str(path)] = (
                f"{one_line(exc) or type(exc).__name__}: {consequence}; pass --overwrite "
                f"with its input to analyse {stem!r} again"
            )
    return tables


def _joined(tables: dict) -> pd.DataFrame:
    return concat_tables(list(tables.values())) if tables else pd.DataFrame()


def _write_cells_tables(summary: BatchSummary, out: Path, known_tables: dict) -> list[Path]:
    """cells.csv (+ .parquet) from every finished input in ``out`` (:func:`_finished_tables`;
    the tables of ``known_tables`` already read); a cells.parquet that cannot be rewritten
    (no pyarrow) is removed, never left disagreeing with cells.csv."""
    finished = [table.stem for table in _finished_tables(out)]
    cells = _joined(_read_tables(finished, out, summary.failures, known_tables, for_cells_csv=True))
    try:
        written = [write_table(cells, out / "cells.csv")]
        if parquet_available():
            written.append(write_table(cells, out / "cells.parquet"))
        else:
            (out / "cells.parquet").unlink(missing_ok=True)
    except OSError as exc:
        raise BloodcellError(f"{out}: cannot write cells.csv ({exc})") from exc
    return written


def _write_run_tables(
    summary: BatchSummary, settings, classifier, client, out: Path, known_tables: dict
):
    """cells.csv (+ .parquet: :func:`_write_cells_tables`) and run.json."""
    written = _write_cells_tables(summary, out, known_tables)
    processed_names = [Path(p).name for p in summary.processed]
    run = {
        "napari_bloodcell_version": __version__,
        "command": " ".join(sys.argv),
        "settings": {
            "modality": settings.modality,
            "channels": dict(settings.channels) if settings.channels else None,
            "pixel_size_um": settings.pixel_size_um,
            "uncertain_threshold": settings.uncertain_threshold
            if settings.uncertain_threshold is not None
            else (classifier.metadata.uncertain_threshold if classifier else None),
        },
        "model": None
        if classifier is None
        else {
            "path": str(classifier.path),
            "name": classifier.name,
            "version": classifier.metadata.version,
            "classes": classifier.classes,
            "test_time_views": classifier.metadata.test_time_views,
        },
        "dask": None if client is None else _cluster_record(client),
        "inputs": summary.processed,
        "skipped": list(summary.skipped),
        "parts_of_other_inputs": list(summary.parts),
        "modalities": summary.modalities,
        "pixel_sizes_um": summary.pixel_sizes_um,
        "frame_intervals_s": summary.frame_intervals_s,
        "axes": summary.axes,
        "failures": summary.failures,
        "n_frames": summary.n_frames,
        "n_cells": 0
        if summary.table.empty
        else int(summary.table["source"].isin(processed_names).sum()),
        "seconds": round(summary.seconds, 3),
        "seconds_per_frame": round(summary.seconds_per_frame, 4),
    }
    run_path = out / "run.json"
    tmp = run_path.with_name(".run.json.tmp")
    try:
        tmp.write_text(json.dumps(run, indent=2))
        os.replace(tmp, run_path)
    finally:
        tmp.unlink(missing_ok=True)
    written.append(run_path)
    return written


def _cluster_record(client) -> dict:
    info = client.scheduler_info()
    return {
        "scheduler": info.get("address"),
        "workers": len(info.get("workers", {})),
        "threads": sum(w.get("nthreads", 0) for w in info.get("workers", {}).values()),
    }
