"""Files of a batch run and of a training run: never over files they do not own."""

from pathlib import Path

import numpy as np
import tifffile

from napari_bloodcell import batch


def test_large_label_stacks_are_written_as_bigtiff(tmp_path, monkeypatch):
    frames = np.arange(3 * 16 * 20, dtype=np.uint32).reshape(3, 16, 20)
    small = batch.write_label_stack(tmp_path / "small.tif", iter(frames), n_frames=3,
                                    frame_shape=(16, 20))  # fmt: skip
    monkeypatch.setattr(batch, "BIGTIFF_FROM_BYTES", frames.nbytes)  # as if it were 4 GiB
    large = batch.write_label_stack(tmp_path / "large.tif", iter(frames), n_frames=3,
                                    frame_shape=(16, 20))  # fmt: skip
    with tifffile.TiffFile(small) as tif:
        assert not tif.is_bigtiff
    with tifffile.TiffFile(large) as tif:
        assert tif.is_bigtiff
        np.testing.assert_array_equal(tif.asarray(), frames)


def test_learning_curves_of_a_dotted_model_name_keep_the_whole_name(tmp_path):
    from napari_bloodcell.classification.training import write_learning_curves

    (tmp_path / "run.csv").write_text("a user's table")
    history = {"loss": [1.0, 0.5], "val_loss": [1.1, 0.6], "accuracy": [0.5, 0.7]}
    written = write_learning_curves(history, tmp_path / "run.1_history")
    assert [p.name for p in written] == ["run.1_history.csv", "run.1_history.png"]
    assert (tmp_path / "run.csv").read_text() == "a user's table"


def test_a_model_replaced_during_a_run_is_refused_never_mixed_in(tmp_path, tiny_model):
    """A worker loading the model after it was replaced used the new file's network with
    the run's classes; now it refuses the input, and the units already classified keep the
    model the run chose."""
    import imageio.v3 as iio

    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.synthetic import make_smear

    from .helpers import model_copy

    model = model_copy(tiny_model, tmp_path)
    inputs = []
    for seed in (1, 2):
        inputs.append(tmp_path / f"smear{seed}.png")
        smear = make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=2, seed=seed)
        iio.imwrite(inputs[-1], smear.image)

    replaced = []

    def replace_the_model(_progress) -> None:
        if not replaced:
            replaced.append(model_copy(tiny_model, tmp_path, uncertain_threshold=0.99))
            batch.cached_classifier.cache_clear()  # as a new Dask worker process would start

    summary = batch.analyze_files(
        inputs, tmp_path / "out", AnalysisSettings(), model=model, on_progress=replace_the_model
    )
    assert list(summary.failures) == [str(inputs[1])]
    assert "changed on disk after it was chosen" in summary.failures[str(inputs[1])]
    assert summary.table["p_lobed"].notna().any()  # the first input, classified


def _smears(folder, names):
    import imageio.v3 as iio

    from napari_bloodcell.synthetic import make_smear

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed, name in enumerate(names, start=1):
        paths.append(folder / f"{name}.png")
        image = make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=2, seed=seed).image
        iio.imwrite(paths[-1], image)
    return paths


def test_a_missing_input_whose_name_has_results_fails_alone(tmp_path):
    """It raised FileNotFoundError from the check of the recorded input: no input ran."""
    from napari_bloodcell.pipeline import AnalysisSettings

    a, b = _smears(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    moved = tmp_path / "elsewhere" / "a.png"  # a typo, or a file moved since
    summary = batch.analyze_files([moved, b], out, AnalysisSettings(), model=None)
    assert "cannot read it" in summary.failures[str(moved)]
    assert summary.processed == [str(b)]


def test_relative_paths_hold_wherever_the_units_run(tmp_path, monkeypatch):
    """Relative inputs and out were resolved in the worker's working folder (on a Dask
    worker started elsewhere every input failed, its files written there)."""
    from napari_bloodcell.pipeline import AnalysisSettings

    _smears(tmp_path / "project" / "in", ["a", "b"])
    monkeypatch.chdir(tmp_path / "project")
    elsewhere = tmp_path / "worker"
    elsewhere.mkdir()

    def move_away(_progress) -> None:  # the next units run from another folder
        os.chdir(elsewhere)

    import os

    summary = batch.analyze_files(
        ["in/a.png", "in/b.png"], "results", AnalysisSettings(), model=None, on_progress=move_away
    )
    assert summary.failures == {} and len(summary.processed) == 2
    assert (tmp_path / "project" / "results" / "tables" / "b.csv").is_file()
    assert not any(elsewhere.iterdir())


def test_input_names_differing_only_in_case_are_refused(tmp_path):
    """On macOS and Windows file systems they are one results file."""
    import pytest

    from napari_bloodcell.errors import InputImageError

    with pytest.raises(InputImageError, match="share the name"):
        batch.check_inputs([tmp_path / "d1" / "Sample.tif", tmp_path / "d2" / "sample.tif"],
                           tmp_path / "out")  # fmt: skip


def test_an_interrupted_run_that_finished_nothing_keeps_the_record_of_the_results(tmp_path):
    import json

    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings

    a, b = _smears(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(pixel_size_um=0.5), model=None)
    record = (out / "run.json").read_text()

    def ctrl_c(_progress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.analyze_files([a, b], out, AnalysisSettings(), model=None, on_progress=ctrl_c)
    assert (out / "run.json").read_text() == record
    assert json.loads(record)["settings"]["pixel_size_um"] == 0.5
    assert not (out / "tables" / "b.csv").exists()


def test_a_failure_while_results_are_moved_in_is_analysed_again_by_the_next_run(
    tmp_path, monkeypatch
):
    """The old table went first, then the move failed: the input was left with labels and
    no table, out of cells.csv, and every later run refused it without --overwrite."""
    import errno

    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.table import read_table

    a, b = _smears(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    batch.analyze_files([a, b], out, AnalysisSettings(), model=None)
    move_overlays = batch._move_overlays

    def disk_full_for_b(job, out_dir):
        if job.stem == "b":
            raise OSError(errno.ENOSPC, "No space left on device")
        return move_overlays(job, out_dir)

    monkeypatch.setattr(batch, "_move_overlays", disk_full_for_b)
    summary = batch.analyze_files([a, b], out, AnalysisSettings(), model=None, overwrite=True)
    assert list(summary.failures) == [str(b)] and not (out / "tables" / "b.csv").exists()
    monkeypatch.setattr(batch, "_move_overlays", move_overlays)
    summary = batch.analyze_files([a, b], out, AnalysisSettings(), model=None)  # no overwrite
    assert summary.failures == {} and summary.processed == [str(b)]
    assert set(read_table(out / "cells.csv")["source"].map(lambda s: s.split("/")[-1])) == {
        "a.png",
        "b.png",
    }


def test_an_input_rewritten_since_its_results_is_not_skipped_and_a_copy_is_the_same(tmp_path):
    """A file re-exported in place was skipped as finished (stale results kept), and an
    identical copy elsewhere (size and time kept) was refused as another file."""
    import shutil

    import imageio.v3 as iio
    import pytest

    from napari_bloodcell.errors import OutputExistsError
    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.synthetic import make_smear

    (a,) = _smears(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    (tmp_path / "scratch").mkdir()
    copy = Path(shutil.copy2(a, tmp_path / "scratch" / "a.png"))  # staged: size, time kept
    summary = batch.analyze_files([copy], out, AnalysisSettings(), model=None)
    assert summary.failures == {} and list(summary.skipped) == [str(copy)]
    iio.imwrite(a, make_smear(shape=(240, 320), n_rbc=3, n_wbc=1, n_platelets=0, seed=9).image)
    summary = batch.analyze_files([a], out, AnalysisSettings(), model=None)
    assert "changed after" in summary.failures[str(a)] and "--overwrite" in summary.failures[str(a)]
    summary = batch.analyze_files([a], out, AnalysisSettings(), model=None, overwrite=True)
    assert summary.processed == [str(a)]
    with pytest.raises(OutputExistsError, match="another file named 'a'"):
        other = _smears(tmp_path / "day2", ["a"])[0]  # another file of that name
        batch.recorded_input(other, out, batch.read_input_record(out, "a"))


def test_a_run_stopped_before_cells_csv_was_rewritten_is_completed_by_the_next(
    tmp_path, monkeypatch
):
    """Ctrl-C (or a kill) after the last input's table moved in, while cells.csv was being
    rewritten, left cells.csv without the run's inputs; the next run found every input
    finished ("nothing to do") and never rebuilt it."""
    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.table import read_table

    a, b, c = _smears(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    record = (out / "run.json").read_text()

    def ctrl_c(*_args):
        raise KeyboardInterrupt

    with monkeypatch.context() as patched:
        patched.setattr(batch, "_write_run_tables", ctrl_c)  # at the end of the run
        with pytest.raises(KeyboardInterrupt):
            batch.analyze_files([a, b, c], out, AnalysisSettings(), model=None)
    assert set(read_table(out / "cells.csv")["source"]) == {"a.png"}  # as it was stopped
    summary = batch.analyze_files([a, b, c], out, AnalysisSettings(), model=None)
    assert not summary.processed and len(summary.skipped) == 3
    assert set(read_table(out / "cells.csv")["source"]) == {"a.png", "b.png", "c.png"}
    if (out / "cells.parquet").exists():
        assert read_table(out / "cells.parquet").equals(read_table(out / "cells.csv"))
    assert (out / "run.json").read_text() == record  # the record of the last analysing run
    (out / "cells.csv").unlink()  # killed before the first cells.csv
    batch.analyze_files([a, b, c], out, AnalysisSettings(), model=None)
    assert len(set(read_table(out / "cells.csv")["source"])) == 3
    written = (out / "cells.csv").stat().st_mtime_ns
    batch.analyze_files([a, b, c], out, AnalysisSettings(), model=None)
    assert (out / "cells.csv").stat().st_mtime_ns == written  # up to date: not rewritten
    # with a damaged table: a stale cells.csv keeps its rows (and says so), a missing one
    # is rebuilt without the damaged table (it stayed missing)
    (out / "tables" / "c.csv").write_text("")
    summary = batch.analyze_files([a, b], out, AnalysisSettings(), model=None)
    assert "not rebuilt" in summary.failures[str(out / "cells.csv")]
    assert len(set(read_table(out / "cells.csv")["source"])) == 3
    (out / "cells.csv").unlink()
    summary = batch.analyze_files([a, b], out, AnalysisSettings(), model=None)
    assert "left out of cells.csv" in summary.failures[str(out / "tables" / "c.csv")]
    assert set(read_table(out / "cells.csv")["source"]) == {"a.png", "b.png"}


def test_cells_csv_holds_only_finished_inputs_and_parquet_never_goes_stale(tmp_path, monkeypatch):
    """A CSV of one's own in tables/ was merged into cells.csv (or, unreadable, failed every
    run); without pyarrow a later run left the old cells.parquet beside the new cells.csv."""
    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.table import read_table

    a, b = _smears(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    (out / "tables" / "notes.csv").write_text("")  # unreadable
    (out / "tables" / "counts_by_hand.csv").write_text("slide,neutrophils\n1,5\n")
    parquet = out / "cells.parquet"
    monkeypatch.setattr(batch, "parquet_available", lambda: False)
    summary = batch.analyze_files([a, b], out, AnalysisSettings(), model=None)
    assert summary.failures == {}
    cells = read_table(out / "cells.csv")
    assert "neutrophils" not in cells and cells["source"].nunique() == 2
    assert not parquet.exists()


def test_an_unforeseen_error_leaves_no_work_in_progress_and_records_the_run(tmp_path, monkeypatch):
    """Only Ctrl-C was cleaned up: any other exception (e.g. a unit cancelled by the Dask
    scheduler) left .parts behind and cells.csv / run.json without the finished inputs."""
    import json

    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings

    a, b = _smears(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"

    def lost_after_a(progress) -> None:
        if progress.source == str(b):
            raise RuntimeError("scheduler connection lost")

    with pytest.raises(RuntimeError, match="connection lost"):
        batch.analyze_files([a, b], out, AnalysisSettings(), model=None, on_progress=lost_after_a)
    assert not (out / ".parts").exists()
    run = json.loads((out / "run.json").read_text())
    assert [Path(p).name for p in run["inputs"]] == ["a.png"]
    assert "the run stopped (RuntimeError: scheduler connection lost)" in run["failures"][str(b)]


def test_a_file_named_twice_is_analysed_once(tmp_path, monkeypatch):
    """Overlapping patterns (in/*.png in/a*) aborted the whole run: 'share the name'."""
    from napari_bloodcell.pipeline import AnalysisSettings

    a, b = _smears(tmp_path / "in", ["a", "b"])
    monkeypatch.chdir(tmp_path)
    inputs = [a, b, Path("in/a.png"), Path("in/../in/b.png")]  # (`..`: refused as another)
    summary = batch.analyze_files(inputs, tmp_path / "out", AnalysisSettings(), model=None)
    assert summary.failures == {} and summary.processed == [str(a), str(b)]


def test_a_finished_input_skipped_under_other_settings_says_so(tmp_path):
    """A rerun with another pixel size or model skipped finished inputs silently:
    cells.csv then mixed results of two settings while run.json described only the last."""
    from napari_bloodcell.pipeline import AnalysisSettings

    (a,) = _smears(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(pixel_size_um=0.5), model=None)
    same = batch.analyze_files([a], out, AnalysisSettings(pixel_size_um=0.5), model=None)
    assert "another" not in same.skipped[str(a)]
    other = batch.analyze_files([a], out, AnalysisSettings(pixel_size_um=0.3), model=None)
    assert other.skipped[str(a)].endswith(
        "(they were made with another pixel_size_um: --overwrite analyses it with this run's)"
    )
    # the axes decide the whole result too (a 3-plane stack: 3 frames or 3 channels)
    axes = batch.analyze_files([a], out, AnalysisSettings(pixel_size_um=0.5), model=None,
                               axes="YXC")  # fmt: skip
    assert "another axes:" in axes.skipped[str(a)]


def test_each_finished_table_is_read_once_at_the_end_of_a_run(tmp_path, monkeypatch):
    """The run's table and cells.csv each read every table (~1 ms each: 45 s a run at
    20,000 inputs)."""
    from napari_bloodcell.pipeline import AnalysisSettings

    a, b, c = _smears(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    reads = []
    read_table = batch.read_table
    monkeypatch.setattr(batch, "read_table", lambda path: reads.append(path) or read_table(path))
    batch.analyze_files([b, c], out, AnalysisSettings(), model=None)
    assert sorted(p.name for p in reads) == ["a.csv", "b.csv", "c.csv"]


def test_run_json_records_the_axes_each_input_was_read_with(tmp_path):
    """Whether a 3-plane stack was read as frames or channels was recorded nowhere."""
    import json

    from napari_bloodcell.pipeline import AnalysisSettings

    (a,) = _smears(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    assert json.loads((out / "run.json").read_text())["axes"] == {str(a): "YXC"}


def test_a_finished_input_whose_labels_were_deleted_is_not_said_to_be_in_cells_csv(tmp_path):
    """It was skipped as finished ("its results are there") while cells.csv, which counts
    only inputs with labels, silently lost its cells."""
    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.table import read_table

    a, b = _smears(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    (out / "labels" / "a.tif").unlink()
    summary = batch.analyze_files([a, b], out, AnalysisSettings(), model=None)
    assert str(a) not in summary.skipped
    assert "holds tables/a.csv without labels/a.tif" in summary.failures[str(a)]
    assert "--overwrite" in summary.failures[str(a)]
    assert read_table(out / "cells.csv")["source"].unique().tolist() == ["b.png"]
    again = batch.analyze_files([a], out, AnalysisSettings(), model=None, overwrite=True)
    assert again.processed == [str(a)] and (out / "labels" / "a.tif").is_file()


def test_an_unreadable_finished_table_is_left_out_and_reported_not_fatal(tmp_path):
    """One damaged table failed every later run (exit 2 before cells.csv and run.json
    were written, whatever the inputs) and replaced Ctrl-C's exit with its own error."""
    import json

    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.table import read_table

    a, b, c = _smears(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"
    batch.analyze_files([a], out, AnalysisSettings(), model=None)
    (out / "tables" / "a.csv").write_text("")  # truncated by a full disk
    summary = batch.analyze_files([b], out, AnalysisSettings(), model=None)
    assert summary.processed == [str(b)]
    message = summary.failures[str(out / "tables" / "a.csv")]
    assert "not a readable CSV table" in message and "left out of cells.csv" in message
    assert read_table(out / "cells.csv")["source"].unique().tolist() == ["b.png"]
    assert json.loads((out / "run.json").read_text())["inputs"] == [str(b)]
    (out / "tables" / "b.csv").write_text("")  # a run that rebuilds no cells.csv says so
    rows_before = len(read_table(out / "cells.csv"))
    nothing_new = batch.analyze_files([b], out, AnalysisSettings(), model=None)
    message = nothing_new.failures[str(out / "tables" / "b.csv")]
    assert "cannot be read; pass --overwrite" in message and "left out" not in message
    assert len(read_table(out / "cells.csv")) == rows_before  # kept, not emptied

    def interrupt(_progress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.analyze_files([c], out, AnalysisSettings(), model=None, on_progress=interrupt)


def test_a_unit_still_running_after_the_run_stopped_writes_nothing(tmp_path):
    """On a cluster, Ctrl-C cancels the queued units but not the running ones, which
    re-created .parts/<input> after the run had removed it."""
    import pytest

    from napari_bloodcell.errors import BloodcellError
    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.reading import open_lazy

    (a,) = _smears(tmp_path / "in", ["a"])
    out = tmp_path / "out"
    image = open_lazy(a)
    job = batch._input_job(a, a, out, image, AnalysisSettings(), None, 10, {})
    (chunk,) = batch._chunks(image, batch.FRAMES_PER_UNIT)
    with pytest.raises(BloodcellError, match="the run was stopped"):
        batch.analyze_unit(chunk, job)  # its work folder removed by the stopped run
    assert not out.exists()


def test_overlays_of_frames_past_9999_are_replaced_with_the_others(tmp_path):
    frames = tmp_path / "overlays" / "movie"
    frames.mkdir(parents=True)
    for name in ("t0000.png", "t9999.png", "t10000.png", "notes.png", "t12.png"):
        (frames / name).write_bytes(b"")
    old = sorted(p.name for p in batch._old_overlays("movie", tmp_path) if p.parent == frames)
    assert old == ["t0000.png", "t10000.png", "t9999.png"]


def test_a_network_that_does_not_load_leaves_no_work_folders(tmp_path, tiny_model):
    import pytest

    from napari_bloodcell.errors import ModelError
    from napari_bloodcell.pipeline import AnalysisSettings

    from .helpers import model_copy

    (a,) = _smears(tmp_path / "in", ["a"])
    bad = model_copy(tiny_model, tmp_path, classes=["lobed", "round", "third"])
    out = tmp_path / "out"
    with pytest.raises(ModelError, match="does not match its metadata"):
        batch.analyze_files([a], out, AnalysisSettings(), model=bad)
    assert not (out / ".parts").exists()


def test_inputs_are_opened_as_the_run_reaches_them(tmp_path, monkeypatch):
    """All inputs were opened (a TIFF stack read for its intensity sample) before the
    first unit started: an archive of thousands of stacks waited minutes for nothing."""
    from napari_bloodcell.pipeline import AnalysisSettings

    paths = _smears(tmp_path / "in", ["a", "b", "c"])
    opened, seen = [], []
    open_lazy = batch.open_lazy

    def recording_open(path, axes=None):
        opened.append(Path(path).stem)
        return open_lazy(path, axes=axes)

    def at_each_unit(progress) -> None:
        seen.append((Path(progress.source).stem, list(opened), progress))

    monkeypatch.setattr(batch, "open_lazy", recording_open)
    batch.analyze_files(paths, tmp_path / "out", AnalysisSettings(), model=None,
                        on_progress=at_each_unit)  # fmt: skip
    assert [(source, names) for source, names, _ in seen] == [
        ("a", ["a"]),
        ("b", ["a", "b"]),
        ("c", ["a", "b", "c"]),
    ]
    first, last = seen[0][2], seen[-1][2]
    assert (first.inputs_opened, first.inputs_to_open, first.total_frames) == (1, 3, 1)
    assert first.fraction == 1 / 3 and last.fraction == 1


def test_an_interrupted_run_reports_the_inputs_it_had_not_opened_yet(tmp_path):
    import json

    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings

    a, b, c = _smears(tmp_path / "in", ["a", "b", "c"])
    out = tmp_path / "out"

    def ctrl_c_in_b(progress) -> None:
        if progress.source == str(b):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.analyze_files([a, b, c], out, AnalysisSettings(), model=None,
                            on_progress=ctrl_c_in_b)  # fmt: skip
    run = json.loads((out / "run.json").read_text())
    assert run["inputs"] == [str(a)]
    assert run["failures"] == {str(b): "interrupted", str(c): "interrupted"}
    assert not (out / batch.PARTS_FOLDER).exists()


def test_an_interrupt_just_after_an_input_gets_its_work_folder_removes_it(tmp_path, monkeypatch):
    """Ctrl-C handled right after the next input's work folder was made (the moment an
    input's table appears: a CI test's signal) left .parts/<stem> behind: the input was
    not yet among those the cleanup knows."""
    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings

    a, b = _smears(tmp_path / "in", ["a", "b"])
    out = tmp_path / "out"
    mkdir = Path.mkdir

    def ctrl_c_after_making_b(self, *args, **kwargs):
        mkdir(self, *args, **kwargs)
        if self.name == "b" and self.parent.name == batch.PARTS_FOLDER:
            raise KeyboardInterrupt

    monkeypatch.setattr(Path, "mkdir", ctrl_c_after_making_b)
    with pytest.raises(KeyboardInterrupt):
        batch.analyze_files([a, b], out, AnalysisSettings(), model=None)
    assert not (out / batch.PARTS_FOLDER).exists()


def test_the_parts_of_a_multi_file_ome_tiff_are_analysed_once_with_its_first_file(tmp_path):
    """`analyze dir/*.ome.tif` analysed Micro-Manager's second file again: its frames
    counted twice (as frames 0… of a stack of its own, or as the whole acquisition)."""
    from napari_bloodcell.pipeline import AnalysisSettings
    from napari_bloodcell.synthetic import make_timelapse

    from .helpers import write_ome_set

    movie = make_timelapse(4, (64, 80), n_leukocytes=1, n_platelets=0, seed=3).image
    frames = (movie[..., 1].astype(np.uint16) * 16) + 100  # the leukocyte channel, 12-bit
    first, part = write_ome_set(tmp_path, frames, binary_only=True)
    summary = batch.analyze_files([first, part], tmp_path / "out", AnalysisSettings(),
                                  model=None)  # fmt: skip
    assert summary.processed == [str(first)] and not summary.failures
    assert "part of the multi-file OME-TIFF exp_MMStack.ome.tif" in summary.parts[str(part)]
    assert sorted(summary.table["frame"].unique()) == [0, 1, 2, 3]
    alone = batch.analyze_files([part], tmp_path / "out2", AnalysisSettings(), model=None)
    assert "analyse exp_MMStack.ome.tif" in alone.failures[str(part)]


def test_the_progress_ends_complete_when_the_last_input_cannot_be_opened(tmp_path):
    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings

    a, b = _smears(tmp_path / "in", ["a", "b"])
    broken = tmp_path / "in" / "c.png"
    broken.write_bytes(b"not a picture")
    seen = []
    summary = batch.analyze_files([a, b, broken], tmp_path / "out", AnalysisSettings(),
                                  model=None, on_progress=seen.append)  # fmt: skip
    assert list(summary.failures) == [str(broken)]
    assert [p.fraction for p in seen] == pytest.approx([1 / 3, 2 / 3, 1])  # c never counts
    assert (seen[-1].inputs_opened, seen[-1].inputs_to_open) == (2, 2)


def test_an_unexpected_error_opening_an_input_fails_that_input_only(tmp_path, monkeypatch):
    """Opening happens while the run goes on: an unforeseen error there stopped the run
    (and on a cluster cancelled the units of the inputs before it)."""
    from napari_bloodcell.pipeline import AnalysisSettings

    a, b, c = _smears(tmp_path / "in", ["a", "b", "c"])
    open_lazy = batch.open_lazy

    def failing_for_b(path, axes=None):
        if Path(path).stem == "b":
            raise RuntimeError("a reader bug")
        return open_lazy(path, axes=axes)

    monkeypatch.setattr(batch, "open_lazy", failing_for_b)
    summary = batch.analyze_files([a, b, c], tmp_path / "out", AnalysisSettings(), model=None)
    assert summary.processed == [str(a), str(c)]
    assert "unexpected RuntimeError (a reader bug)" in summary.failures[str(b)]


def test_an_interrupted_run_never_lists_a_part_of_a_multi_file_ome_tiff_as_failed(tmp_path):
    import json

    import pytest

    from napari_bloodcell.pipeline import AnalysisSettings

    from .helpers import write_ome_set

    frames = np.full((4, 64, 80), 100, np.uint16)
    frames[:, 20:40, 20:40] = 3000
    first, part = write_ome_set(tmp_path, frames, binary_only=True)
    a, b = _smears(tmp_path / "in", ["a", "b"])

    def ctrl_c_in_b(progress) -> None:
        if progress.source == str(b):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        batch.analyze_files([first, part, a, b], tmp_path / "out", AnalysisSettings(),
                            model=None, on_progress=ctrl_c_in_b)  # fmt: skip
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["parts_of_other_inputs"] == [str(part)]
    assert run["failures"] == {str(b): "interrupted"}
