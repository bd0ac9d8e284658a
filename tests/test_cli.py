"""The command line end to end: analyze, train, evaluate, predict, demo and bad input."""

import contextlib
import gc
import io
import json
import shlex
import shutil
import subprocess
import sys
import threading
import time

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.model_files import ModelMetadata
from napari_bloodcell.cli import check_not_folders, main
from napari_bloodcell.synthetic import make_smear, make_timelapse
from napari_bloodcell.table import BASE_COLUMNS

from .conftest import SHARED_DATA, requires_bccd


def run_cli(*args) -> int:
    return main([str(a) for a in args])


@pytest.fixture(scope="module")
def smear_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("in") / "smear.png"
    iio.imwrite(path, make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=3, seed=4).image)
    return path


def test_importing_the_package_does_not_import_tensorflow_or_qt():
    code = (
        "import sys, napari_bloodcell, napari_bloodcell.pipeline, napari_bloodcell.batch, "
        "napari_bloodcell.cli, napari_bloodcell.classification.inference, "
        "napari_bloodcell._napari.sample_data;"
        "heavy = ('tensorflow', 'keras', 'qtpy', 'PyQt6', 'napari');"
        "bad = [m for m in sys.modules if m.split('.')[0] in heavy];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_analyze_writes_table_labels_overlays_and_run_record(
    tmp_path, smear_png, tiny_model_with_novelty, capsys
):
    out = tmp_path / "out"
    assert run_cli("analyze", smear_png, "--out", out, "--model", tiny_model_with_novelty) == 0
    table = pd.read_csv(out / "cells.csv")
    assert list(table.columns[: len(BASE_COLUMNS)]) == BASE_COLUMNS
    assert {"p_lobed", "p_round"} <= set(table.columns)
    labels = tifffile.imread(out / "labels" / "smear.tif")
    assert labels.shape == (240, 320) and labels.dtype == np.uint32
    assert set(np.unique(labels)) - {0} == set(table["label"])
    assert (out / "overlays" / "smear.png").is_file()
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["classes"] == ["lobed", "round"] and run["failures"] == {}
    assert run["model"]["test_time_views"] == 8
    classified = table[table.cell_type == "wbc"]  # the model has no class for the others
    assert len(classified) and classified["confidence"].between(0, 1).all()
    assert (classified["novelty"] >= 0).all()
    others = table[table.cell_type != "wbc"]
    assert (others["cell_class"] == others["cell_type"]).all()
    assert others[["confidence", "novelty"]].isna().all().all()
    assert "ms/frame" in capsys.readouterr().out


def test_analyze_passes_the_whole_runs_novelty_to_the_warning(
    tmp_path, smear_png, tiny_model, capsys, monkeypatch
):
    import napari_bloodcell.classification.novelty as novelty

    seen = []
    monkeypatch.setattr(novelty, "novelty_warning", lambda v, cells: seen.append(v) or cells)
    out = tmp_path / "out"
    assert run_cli("analyze", smear_png, "--out", out, "--model", tiny_model) == 0
    assert "warning: these images: white cells" in capsys.readouterr().err
    table = pd.read_csv(out / "cells.csv")
    white = table.loc[table["cell_type"] == "wbc", "novelty"]  # (NaN here: no reference)
    assert len(white) and len(seen[0]) == len(white)  # the white cells of the run, no others
    other = tmp_path / "other.png"
    iio.imwrite(other, make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=3, seed=7).image)
    assert run_cli("analyze", smear_png, other, "--out", out, "--model", tiny_model) == 0
    table = pd.read_csv(out / "cells.csv")  # smear.png skipped as finished: not counted again
    assert len(seen[1]) == ((table["source"] == "other.png") & (table["cell_type"] == "wbc")).sum()


def test_rerun_skips_finished_inputs_and_overwrite_replaces_them(tmp_path, smear_png, capsys):
    out = tmp_path / "out"
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify") == 0
    labels = out / "labels" / "smear.tif"
    before = (out / "cells.csv").read_bytes(), labels.stat().st_mtime_ns
    other = tmp_path / "other.png"
    iio.imwrite(other, make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=3, seed=7).image)
    capsys.readouterr()
    assert run_cli("analyze", smear_png, other, "--out", out, "--no-classify") == 0
    err = capsys.readouterr().err
    assert "smear.png: skipped" in err and "--overwrite" in err and "other.png" not in err
    assert labels.stat().st_mtime_ns == before[1]  # not analysed again
    table = pd.read_csv(out / "cells.csv")
    assert set(table["source"]) == {"smear.png", "other.png"}  # finished inputs stay in
    assert json.loads((out / "run.json").read_text())["skipped"] == [str(smear_png)]
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify") == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify", "--overwrite") == 0
    assert labels.stat().st_mtime_ns != before[1]
    assert set(pd.read_csv(out / "cells.csv")["source"]) == {"smear.png", "other.png"}
    smear_rows = pd.read_csv(out / "tables" / "smear.csv")
    assert smear_rows.equals(pd.read_csv(io.BytesIO(before[0])))


def test_labels_of_an_older_run_are_never_replaced_without_overwrite(tmp_path, smear_png, capsys):
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "smear.tif").write_bytes(b"older results")
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify") == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "labels" / "smear.tif").read_bytes() == b"older results"
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify", "--overwrite") == 0


def test_analyze_on_a_local_dask_cluster(tmp_path, smear_png, capsys):
    out = tmp_path / "out"
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify", "--workers", "1") == 0
    err = capsys.readouterr().err
    assert "1 worker(s)" in err and "Dask dashboard: http" in err
    assert json.loads((out / "run.json").read_text())["dask"]["workers"] == 1
    assert len(pd.read_csv(out / "cells.csv")) > 0


def test_ctrl_c_raised_inside_a_gc_callback_still_stops_the_run(
    tmp_path, smear_png, capsys, monkeypatch
):
    """Python ignores exceptions of gc callbacks: Ctrl-C landing in one (Dask's scheduler
    times every collection) was printed as "Exception ignored" and the run went on."""
    from napari_bloodcell import pipeline

    def interrupted_while_collecting(phase, _info) -> None:
        if phase == "start":
            raise KeyboardInterrupt

    def segment_frame_collecting(*args, **kwargs):
        started = time.monotonic()
        gc.callbacks.append(interrupted_while_collecting)
        try:
            gc.collect()  # the interrupt lands in the callback
            gc.callbacks.remove(interrupted_while_collecting)
            time.sleep(4)  # segmenting a large frame: the interrupt must stop it, not wait
        finally:
            took.append(time.monotonic() - started)
            with contextlib.suppress(ValueError):  # (removed already)
                gc.callbacks.remove(interrupted_while_collecting)
        return segment_frame(*args, **kwargs)

    segment_frame, took = pipeline.segment_frame, []
    monkeypatch.setattr(pipeline, "segment_frame", segment_frame_collecting)
    code = run_cli("analyze", smear_png, "--out", tmp_path / "out", "--no-classify")
    err = capsys.readouterr().err
    assert code == 130 and "interrupted (SIGINT)" in err
    assert "Exception ignored" not in err
    assert took[0] < 2 and not list((tmp_path / "out").glob("tables/*.csv"))  # at once


def test_an_interrupt_sent_again_wakes_a_waiting_main_thread_and_never_comes_late():
    """Sent from another thread with raise_signal, the interrupt waited for a blocking
    call of the main thread (a wait for the cluster's units) to end by itself; one lost at
    the end of the run came after the CLI's handler, as a traceback."""
    from types import SimpleNamespace

    from napari_bloodcell.cli import _interrupts_not_lost

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt), _interrupts_not_lost():
        sys.unraisablehook(SimpleNamespace(exc_value=KeyboardInterrupt()))  # Python lost it
        threading.Event().wait(10)  # e.g. waiting for a unit to finish
    assert time.monotonic() - started < 5
    with pytest.raises(KeyboardInterrupt), _interrupts_not_lost():  # lost at the very end:
        sys.unraisablehook(SimpleNamespace(exc_value=KeyboardInterrupt()))
    time.sleep(0.3)  # raised when the block ended, and not once more after it (here)


def test_track_takes_the_frame_interval_of_inputs_analysed_by_earlier_runs(tmp_path, capsys):
    """run.json records only the last run's inputs: `track` on a cells.csv holding a movie
    analysed by an earlier run tracked it per frame ("none recorded in the file"), the
    other in minutes: one output, speeds in two units."""
    movie = make_timelapse(n_frames=3, shape=(96, 128), seed=1)
    out, roles = tmp_path / "out", ["--channel", "neutrophil=1", "--channel", "platelet=0"]
    for name in ("a", "b"):  # one run each
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, np.moveaxis(movie.image, -1, 1), imagej=True,
                         metadata={"axes": "TCYX", "finterval": 30.0})  # fmt: skip
        assert run_cli("analyze", path, "--out", out, *roles, "--no-classify") == 0
    assert json.loads((out / "run.json").read_text())["frame_intervals_s"] == {
        str(tmp_path / "b.tif"): 30.0
    }
    capsys.readouterr()
    assert run_cli("track", out / "cells.csv", "--out", tmp_path / "tracks") == 0
    for name in ("a", "b"):
        tracking = json.loads((tmp_path / "tracks" / name / "tracking.json").read_text())
        assert tracking["frame_interval_s"] == 30.0
    assert "no frame interval" not in capsys.readouterr().out


def test_results_replaced_by_overwrite_take_their_tracking_tables_with_them(tmp_path, capsys):
    """--overwrite replaced an input's labels and table but left tracking/<stem>/: tracks
    of cells that no longer exist, kept by a later --track run ("tracking tables exist,
    not replaced")."""
    movie = make_timelapse(n_frames=3, shape=(96, 128), seed=1)
    tifffile.imwrite(path := tmp_path / "movie.tif", movie.image)
    out, tracking = tmp_path / "out", tmp_path / "out" / "tracking" / "movie"
    args = ["--out", out, "--axes", "TYXC", "--no-classify"]
    assert run_cli("analyze", path, *args, "--track", "--pixel-size", "0.75") == 0
    assert json.loads((tracking / "tracking.json").read_text())["pixel_size_um"] == 0.75
    (tracking / "my notes.txt").write_text("mine")
    assert run_cli("analyze", path, *args, "--overwrite", "--pixel-size", "0.5") == 0
    assert [p.name for p in tracking.iterdir()] == ["my notes.txt"]  # the user's file stays
    assert run_cli("analyze", path, *args, "--track", "--pixel-size", "0.5") == 0
    assert json.loads((tracking / "tracking.json").read_text())["pixel_size_um"] == 0.5


def test_analyze_a_fluorescence_stack_with_a_channel_mapping(tmp_path):
    movie = make_timelapse(n_frames=4, shape=(96, 128), seed=1)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie.image)
    out = tmp_path / "out"
    args = ["--out", out, "--channel", "neutrophil=1", "--channel", "platelet=0", "--axes", "TYXC"]
    assert run_cli("analyze", path, *args, "--frames-per-task", "3") == 0  # two units
    labels = tifffile.imread(out / "labels" / "movie.tif")
    assert labels.shape == (4, 96, 128)
    table = pd.read_csv(out / "cells.csv")
    for t in range(4):  # each frame's rows are that frame's labels, across the units
        rows = table[table["frame"] == t]
        assert len(rows) and set(rows["label"]) == set(np.unique(labels[t])) - {0}
    assert set(table["cell_class"]) <= {"neutrophil", "platelet"}
    assert "platelet" in set(table["cell_class"])


def test_tracking_takes_the_frame_interval_an_ome_tiff_records(tmp_path, capsys):
    """analyze --track read the pixel size from the file but not the frame interval: the
    same movie gave µm/min in napari (the layer's time scale) and µm/frame here."""
    movie = make_timelapse(n_frames=4, shape=(96, 128), seed=1)
    path = tmp_path / "movie.ome.tif"
    metadata = {"axes": "TCYX", "TimeIncrement": 0.5, "TimeIncrementUnit": "min"}
    tifffile.imwrite(path, np.moveaxis(movie.image, -1, 1), metadata=metadata)
    out = tmp_path / "out"
    roles = ["--channel", "neutrophil=1", "--channel", "platelet=0", "--no-classify"]
    assert run_cli("analyze", path, "--out", out, *roles, "--track") == 0
    assert json.loads((out / "run.json").read_text())["frame_intervals_s"] == {str(path): 30.0}
    tracking = json.loads((out / "tracking" / "movie.ome" / "tracking.json").read_text())
    assert tracking["frame_interval_s"] == 30.0 and tracking["speed_unit"].endswith("per_min")
    assert run_cli("track", out / "cells.csv", "--out", tmp_path / "again") == 0  # run.json's
    assert (
        json.loads((tmp_path / "again" / "tracking.json").read_text())["frame_interval_s"] == 30.0
    )
    assert "no frame interval" not in capsys.readouterr().out
    (out / "tracking").rename(tmp_path / "first tracking")  # a rerun skips the analysed input
    assert run_cli("analyze", path, "--out", out, *roles, "--track") == 0
    tracking = json.loads((out / "tracking" / "movie.ome" / "tracking.json").read_text())
    assert tracking["frame_interval_s"] == 30.0
    tifffile.imwrite(plain := tmp_path / "plain.tif", movie.image)  # records none
    assert (
        run_cli("analyze", plain, "--out", tmp_path / "o2", *roles, "--axes", "TYXC", "--track")
        == 0
    )
    assert "no frame interval (--frame-interval not given" in capsys.readouterr().out


def _write_bad_input(tmp_path, kind):
    path = (
        tmp_path
        / {
            "empty": "e.png",
            "tiny": "t.png",
            "black": "b.png",
            "nan": "n.tif",
            "corrupt": "c.jpg",
            "axes": "a.tif",
        }[kind]
    )
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "tiny":
        iio.imwrite(path, np.array([[[200, 10, 10]]], dtype=np.uint8))
    elif kind == "black":
        iio.imwrite(path, np.zeros((64, 64, 3), np.uint8))
    elif kind == "nan":
        data = np.random.default_rng(0).random((64, 64, 3)).astype(np.float32)
        data[3, 3] = np.nan
        tifffile.imwrite(path, data)
    elif kind == "corrupt":
        path.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    elif kind == "axes":
        tifffile.imwrite(
            path, np.random.default_rng(1).integers(0, 255, (2, 3, 4, 16, 16), np.uint8)
        )
    return path


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("empty", "empty"),
        ("tiny", "need at least"),
        ("black", "constant"),
        ("nan", "NaN"),
        ("corrupt", "cannot be read"),
        ("axes", "axes"),
    ],
)
def test_bad_inputs_exit_2_with_one_clear_message_and_write_nothing(
    tmp_path, kind, message, capsys
):
    path = _write_bad_input(tmp_path, kind)
    out = tmp_path / "out"
    assert run_cli("analyze", path, "--out", out, "--no-classify") == 2
    err = capsys.readouterr().err
    assert path.name in err and message in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.rglob("*"))


def test_a_bad_input_does_not_stop_the_good_ones(tmp_path, smear_png, capsys):
    bad = _write_bad_input(tmp_path, "corrupt")
    out = tmp_path / "out"
    assert run_cli("analyze", bad, smear_png, "--out", out, "--no-classify") == 2
    assert "c.jpg" in capsys.readouterr().err
    assert set(pd.read_csv(out / "cells.csv")["source"]) == {"smear.png"}
    assert json.loads((out / "run.json").read_text())["failures"].keys() == {str(bad)}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel", "platelet=7", "--modality", "fluorescence", "--no-classify"], "channel"),
        (["--model", "missing-model"], "not found"),
        (["--pixel-size", "-1"], "positive"),
        (["--channel", "platelet"], "ROLE=INDEX"),
    ],
)
def test_bad_options_exit_2(tmp_path, smear_png, args, message, capsys):
    assert run_cli("analyze", smear_png, "--out", tmp_path / "o", *args) == 2
    assert message in capsys.readouterr().err


def test_a_channel_role_given_twice_is_refused(tmp_path, smear_png, capsys):
    args = ["--channel", "Neutrophil=1", "--channel", "neutrophil=0", "--no-classify"]
    assert run_cli("analyze", smear_png, "--out", tmp_path / "o", *args) == 2
    err = capsys.readouterr().err
    assert "'Neutrophil=1'" in err and "'neutrophil=0'" in err and "twice" in err
    assert not (tmp_path / "o").exists()


def test_two_leukocyte_roles_are_refused_before_inputs_or_a_cluster(tmp_path, monkeypatch, capsys):
    from napari_bloodcell import distributed

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(distributed, "open_client", no_cluster)
    args = ["--channel", "neutrophil=1", "--channel", "wbc=2", "--workers", "2"]
    assert run_cli("analyze", tmp_path / "not-opened.tif", "--out", tmp_path / "o", *args) == 2
    err = capsys.readouterr().err
    assert "'neutrophil' and 'wbc' are both leukocytes" in err
    assert "not-opened" not in err and "Traceback" not in err


def test_a_channel_out_of_range_is_named_by_the_users_role(tmp_path, smear_png, capsys):
    args = ["--channel", "neutrophil=5", "--modality", "fluorescence", "--no-classify"]
    assert run_cli("analyze", smear_png, "--out", tmp_path / "o", *args) == 2
    err = capsys.readouterr().err
    assert "channel 5 of role 'neutrophil' is out of range" in err
    assert "leukocyte" not in err


def test_a_folder_given_as_an_input_is_refused_naming_its_images(tmp_path, smear_png, capsys):
    folder = tmp_path / "frames"
    folder.mkdir()
    assert run_cli("analyze", smear_png, folder, "--out", tmp_path / "o") == 2
    assert f"{folder} is a folder; give its images (e.g. {folder}/*.tif)" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    (tmp_path / "stack.zarr").mkdir()
    check_not_folders([tmp_path / "stack.zarr"])  # a Zarr store is an image


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--frames-per-task", "0", "must be at least 1, got 0"),
        ("--workers", "0", "must be at least 1, got 0"),
        ("--max-overlays", "-5", "must be at least 0, got -5"),
        ("--max-overlays", "ten", "expected a whole number, got 'ten'"),
    ],
)
def test_bad_counts_are_refused_when_the_arguments_are_parsed(
    tmp_path, smear_png, option, value, message, capsys
):
    with pytest.raises(SystemExit) as exited:
        run_cli("analyze", smear_png, "--out", tmp_path / "o", option, value)
    assert exited.value.code == 2
    assert f"argument {option}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_max_overlays_0_writes_no_overlay_of_a_single_frame(tmp_path, smear_png):
    out = tmp_path / "o"
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify", "--max-overlays", 0) == 0
    assert (out / "cells.csv").is_file() and not (out / "overlays" / "smear.png").exists()


def test_a_bad_scheduler_address_from_dask_settings_names_the_variable(
    tmp_path, smear_png, monkeypatch, capsys
):
    import dask

    from napari_bloodcell import distributed

    def unreachable(address, timeout):
        raise OSError(f"Timed out trying to connect to {address} after {timeout}")

    monkeypatch.setattr(distributed, "Client", unreachable)
    for address, message in [
        ("nonsense", "'nonsense' is not a Dask scheduler address"),
        ("tcp://127.0.0.1:1", "cannot reach the Dask scheduler at tcp://127.0.0.1:1"),
    ]:
        with dask.config.set({"scheduler-address": address}):
            assert run_cli("analyze", smear_png, "--out", tmp_path / "o") == 2
        err = capsys.readouterr().err
        assert message in err and "the address comes from $DASK_SCHEDULER_ADDRESS" in err


def test_not_a_model_file_is_refused(tmp_path, smear_png, capsys):
    fake = tmp_path / "fake.keras"
    fake.write_text("not a model")
    assert run_cli("analyze", smear_png, "--out", tmp_path / "o", "--model", fake) == 2
    assert "fake.keras" in capsys.readouterr().err


def test_evaluate_writes_metrics_and_confusion_matrix(tmp_path, tiny_model, tiny_heldout):
    out = tmp_path / "eval"
    assert run_cli("evaluate", tiny_heldout, "--model", tiny_model, "--out", out) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"accuracy", "macro_f1", "per_class", "classes", "confusion_matrix"} <= set(metrics)
    assert set(metrics["per_class"]["round"]) == {
        "precision",
        "recall",
        "f1",
        "support",
        "precision_ci95",
        "recall_ci95",
        "f1_ci95",
    }
    assert {"ece", "uncertain_rate", "coverage_curve"} <= set(metrics)
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    assert (out / "reliability.png").stat().st_size > 1000
    (out / "metrics.json").write_text("{}")  # a result of the user's: never replaced unasked
    assert run_cli("evaluate", tiny_heldout, "--model", tiny_model, "--out", out) == 2
    assert (out / "metrics.json").read_text() == "{}"
    args = ["--model", tiny_model, "--out", out, "--overwrite"]
    assert run_cli("evaluate", tiny_heldout, *args) == 0
    assert "accuracy" in json.loads((out / "metrics.json").read_text())
    # the threshold of an analyze run, checked on crops: every answer withheld at 1.0
    assert run_cli("evaluate", tiny_heldout, *args, "--uncertain-threshold", "1.0") == 0
    assert json.loads((out / "metrics.json").read_text())["uncertain_rate"] == 1.0
    assert run_cli("evaluate", tiny_heldout, *args, "--uncertain-threshold", "1.5") == 2


def test_predict_applies_the_uncertain_threshold_given(tmp_path, tiny_model, tiny_heldout):
    table_path = tmp_path / "pred.csv"
    crops = tiny_heldout / "round"
    args = ["--model", tiny_model, "--out", table_path, "--overwrite"]
    assert run_cli("predict", crops, *args, "--uncertain-threshold", "1.0") == 0
    assert set(pd.read_csv(table_path)["cell_class"]) == {"uncertain"}
    assert run_cli("predict", crops, *args, "--uncertain-threshold", "0") == 0
    assert "uncertain" not in set(pd.read_csv(table_path)["cell_class"])
    assert run_cli("predict", crops, *args, "--uncertain-threshold", "-1") == 2


def test_evaluate_warns_when_it_scores_training_images(tmp_path, tiny_model, tiny_heldout, capsys):
    data = tiny_model.parent / "data"
    assert run_cli("evaluate", data, "--model", tiny_model, "--out", tmp_path / "e") == 2
    assert "learnt from every image" in capsys.readouterr().err
    args = ["--model", tiny_model, "--out", tmp_path / "e", "--all-images"]
    assert run_cli("evaluate", data, *args) == 0
    assert "96 images scored were used to train or calibrate" in capsys.readouterr().err
    args = ["--model", tiny_model, "--out", tmp_path / "e2"]
    assert run_cli("evaluate", data, tiny_heldout, *args) == 0
    err = capsys.readouterr().err
    assert f"{data}: left out 96 images the model learnt from or may have" in err
    assert "40 images scored as never seen have the source name" in err  # round0 … again


def test_evaluate_refuses_a_file_as_its_folder(tmp_path, tiny_model, tiny_heldout, capsys):
    (tmp_path / "e.json").write_text("mine")
    args = ["--model", tiny_model, "--out", tmp_path / "e.json"]
    assert run_cli("evaluate", tiny_heldout, *args) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "e.json").read_text() == "mine"


def test_evaluate_refuses_unknown_class_folders(tmp_path, tiny_model, tiny_heldout, capsys):
    """--ignore-unknown left a class folder out of the figures without a word."""
    basophils = tiny_heldout / "basophil"
    basophils.mkdir(exist_ok=True)
    shutil.copy(next((tiny_heldout / "round").iterdir()), basophils / "b.png")
    try:
        assert (
            run_cli("evaluate", tiny_heldout, "--model", tiny_model, "--out", tmp_path / "e") == 2
        )
        assert "basophil" in capsys.readouterr().err
        args = ["--model", tiny_model, "--out", tmp_path / "e", "--ignore-unknown"]
        assert run_cli("evaluate", tiny_heldout, *args) == 0
        assert "basophil: left out, not a class of the model (1 images" in capsys.readouterr().err
        metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
        assert metrics["other_class_folders"] == {str(basophils): 1}
    finally:
        shutil.rmtree(basophils)


def test_train_and_predict_commands(tmp_path, tiny_heldout):
    model = tmp_path / "m.keras"
    args = ["--out", model, "--epochs", "1", "--input-size", "32", "--batch-size", "8"]
    assert run_cli("train", tiny_heldout, *args) == 0
    assert model.is_file() and (tmp_path / "m_history.csv").is_file()
    assert (tmp_path / "m_history.png").is_file() and not list(tmp_path.glob(".training-*"))
    assert run_cli("train", tiny_heldout, *args) == 2  # exists: needs --overwrite
    assert run_cli("train", tiny_heldout, "--out", tmp_path / "h.keras", "--head-only") == 2
    tuned = tmp_path / "tuned.keras"
    assert run_cli("train", tiny_heldout, "--init", model, "--head-only", "--out", tuned,
                   "--epochs", "1", "--batch-size", "8") == 0  # fmt: skip
    tuned_config = CellClassifier(tuned).metadata.training["config"]
    assert tuned_config["train_body"] is False
    assert tuned_config["batch_size"] == 8 and tuned_config["epochs"] == 1  # as given
    assert tuned_config["patience"] == 10 and tuned_config["stain_jitter"] == 0.15  # recipe
    trained_config = CellClassifier(model).metadata.training["config"]
    assert trained_config["patience"] == 5 and trained_config["stain_jitter"] == 0.0
    assert run_cli("train", tiny_heldout, *args, "--overwrite", "--lamp-jitter", "-0.3") == 2
    assert run_cli("train", tiny_heldout, "--init", model, "--mixstyle", "0.5",
                   "--out", tmp_path / "mix.keras") == 2  # MixStyle: from scratch only  # fmt: skip
    for network_option in (["--arch", "coursework"], ["--normalization", "group"]):
        assert run_cli("train", tiny_heldout, "--init", model, *network_option,
                       "--out", tmp_path / "net.keras") == 2  # the --init model's  # fmt: skip
    for bad in (["--batch-size", "0"], ["--seed", "-1"]):
        assert run_cli("train", tiny_heldout, *args, "--overwrite", *bad) == 2
    # a numpy traceback (exit 1) that left the demo's inputs behind
    with pytest.raises(SystemExit, match="2"):  # argparse's usage error
        run_cli("demo", "--out", tmp_path / "demo", "--seed", "-1")
    assert not (tmp_path / "demo").exists()
    table_path = tmp_path / "pred.csv"
    for bad in (tmp_path / "pred.txt", tmp_path / "missing" / "pred.csv"):  # refused at once
        assert run_cli("predict", tiny_heldout / "round", "--model", model, "--out", bad) == 2
    assert run_cli("predict", tiny_heldout / "round", "--model", model, "--out", table_path) == 0
    table = pd.read_csv(table_path)
    assert len(table) == 20 and {"file", "cell_class", "confidence"} <= set(table.columns)
    assert run_cli("predict", tiny_heldout / "round", "--model", model, "--out", table_path) == 2
    assert len(pd.read_csv(table_path)) == 20  # kept: --overwrite replaces it


def test_predict_refuses_a_parquet_table_it_could_not_write_before_classifying(
    tmp_path, tiny_heldout, capsys, monkeypatch
):
    from napari_bloodcell import table
    from napari_bloodcell.classification import prediction

    monkeypatch.setattr(table, "parquet_available", lambda: False)
    monkeypatch.setattr(prediction, "predict_files", lambda *a: pytest.fail("classified"))
    assert run_cli("predict", tiny_heldout, "--out", tmp_path / "p.parquet") == 2
    assert "writing Parquet needs pyarrow" in capsys.readouterr().err


def test_train_keeps_a_model_saved_under_its_name_while_it_trained(tmp_path, monkeypatch):
    from napari_bloodcell.classification import model_files, training

    monkeypatch.setattr(model_files, "user_models_dir", lambda: tmp_path / "models")
    (tmp_path / "models").mkdir()

    def train_while_another_saves(data_dirs, out, config):
        out.write_bytes(b"trained")
        (tmp_path / "models" / "mine.keras").write_bytes(b"saved meanwhile")
        metadata = ModelMetadata(["a", "b"], 32, 2.2, "compact")
        metadata.training = {"epochs_run": 1, "best_val_loss": 0.5}
        return training.TrainingResult(out, {}, metadata, 1.0)

    monkeypatch.setattr(training, "train_classifier", train_while_another_saves)
    assert run_cli("train", tmp_path, "--name", "mine") == 0
    assert (tmp_path / "models" / "mine.keras").read_bytes() == b"saved meanwhile"
    assert (tmp_path / "models" / "mine-2.keras").read_bytes() == b"trained"
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["mine-2.keras", "mine.keras"]


def test_train_refuses_a_packaged_model_or_a_folder_as_out_before_training(
    tmp_path, monkeypatch, capsys
):
    """--out on the packaged default was refused only for existing (and replaced with
    --overwrite); a folder was told to pass --overwrite, then that it is no .keras file."""
    from napari_bloodcell.classification import model_files, training

    packaged = tmp_path / "package"
    packaged.mkdir()
    (packaged / "default.keras").write_bytes(b"shipped")
    monkeypatch.setattr(model_files, "packaged_models_dir", lambda: packaged)
    monkeypatch.setattr(training, "train_classifier", lambda *a, **k: pytest.fail("trained"))
    for flags in ([], ["--overwrite"]):
        assert run_cli("train", tmp_path, "--out", packaged / "default.keras", *flags) == 2
        assert "packaged with napari-bloodcell" in capsys.readouterr().err
        assert run_cli("train", tmp_path, "--out", tmp_path, *flags) == 2
        assert "must end in .keras" in capsys.readouterr().err
    assert (packaged / "default.keras").read_bytes() == b"shipped"


def test_predict_warns_when_many_crops_look_unlike_the_training_images(
    tmp_path, tiny_model_with_novelty, capsys
):
    from skimage import io

    # (that familiar images do not warn is tested on features in test_novelty.py: a reference
    # from the tiny model's 96 crops is too rough to say it of its own images)
    tiny_model = tiny_model_with_novelty
    rng = np.random.default_rng(0)
    for i in range(30):  # green blobs on grey: nothing like its stained nuclei
        image = np.full((40, 40, 3), 200, np.uint8)
        image[12:28, 12:28] = (0, rng.integers(120, 255), 0)
        io.imsave(tmp_path / f"green_{i}.png", image, check_contrast=False)
    assert run_cli("predict", tmp_path, "--model", tiny_model, "--out", tmp_path / "b.csv") == 0
    assert "30 classified cells" in capsys.readouterr().err
    assert (pd.read_csv(tmp_path / "b.csv")["novelty"] > 1).mean() > 0.5


def test_demo_runs_on_generated_data_and_scores_it(tmp_path, capsys):
    out = tmp_path / "demo"
    assert run_cli("demo", "--out", out) == 0
    report = json.loads((out / "demo_report.json").read_text())
    assert report["smear"]["modality"] == "smear"
    assert report["timelapse"]["modality"] == "fluorescence"
    scored = [row["cell_type"] for row in report["timelapse"]["detection"]]
    assert scored == ["wbc", "platelet", "all"]  # no red cells in a fluorescence movie
    assert "precision" in capsys.readouterr().out
    # the scores are those of the written results against the generated truth
    from napari_bloodcell.metrics import detection_by_type
    from napari_bloodcell.table import read_table

    truth = make_smear(seed=0)
    cells = read_table(out / "cells.csv")
    smear_cells = cells[cells["source"] == "synthetic_smear.png"]
    expected = detection_by_type(
        truth.labels,
        dict(zip(truth.cells["label"], truth.cells["cell_type"], strict=True)),
        tifffile.imread(out / "labels" / "synthetic_smear.tif"),
        dict(zip(smear_cells["label"], smear_cells["cell_type"], strict=True)),
    )
    for row in report["smear"]["detection"]:
        counts = expected.loc[row["cell_type"], ["tp", "fp", "fn"]].tolist()
        assert [row["tp"], row["fp"], row["fn"]] == counts, row["cell_type"]
    assert expected.loc["wbc", "tp"] > 0 and expected.loc["rbc", "fp"] < expected.loc["rbc", "tp"]
    # the packaged default model classified every white cell (the only CI run of it here)
    wbc = smear_cells[smear_cells["cell_type"] == "wbc"]
    model_classes = CellClassifier("default").classes
    assert len(wbc) and wbc["cell_class"].isin([*model_classes, "uncertain"]).all()
    assert (wbc["confidence"] > 0).all()
    p_columns = [f"p_{name}" for name in model_classes]
    np.testing.assert_allclose(wbc[p_columns].sum(axis=1), 1.0, atol=1e-3)
    assert run_cli("demo", "--out", out) == 2


def test_demo_after_an_interrupted_run_scores_its_own_inputs(tmp_path):
    """An interrupted demo leaves results but no report; the next run skipped those inputs
    as finished and scored their stale results against its new ground truth."""
    from napari_bloodcell.demo import run_demo

    run_demo(tmp_path / "first", seed=0, model=None)
    (tmp_path / "first" / "demo_report.json").unlink()  # interrupted before the report
    run_demo(tmp_path / "first", seed=1, model=None)
    run_demo(tmp_path / "fresh", seed=1, model=None)
    reports = [
        json.loads((tmp_path / d / "demo_report.json").read_text()) for d in ("first", "fresh")
    ]
    for report in reports:
        report.pop("seconds", None)
    assert reports[0]["smear"] == reports[1]["smear"]
    assert reports[0]["timelapse"] == reports[1]["timelapse"]


@requires_bccd
def test_analyze_real_bccd_frames_with_the_default_model(tmp_path):
    frames = [SHARED_DATA / "bccd" / "JPEGImages" / f"BloodImage_0000{i}.jpg" for i in (0, 3)]
    out = tmp_path / "out"
    assert run_cli("analyze", *frames, "--out", out) == 0
    table = pd.read_csv(out / "cells.csv")
    wbc = table[table.cell_type == "wbc"]
    assert set(wbc["source"]) == {"BloodImage_00000.jpg", "BloodImage_00003.jpg"}
    assert wbc["cell_class"].notna().all() and (wbc["confidence"] > 0).all()
    assert len(table[table.cell_type == "rbc"]) > 10
    assert tifffile.imread(out / "labels" / "BloodImage_00000.tif").shape == (480, 640)


def test_calibrate_needs_every_folder_the_model_was_trained_on(tmp_path, tiny_model, capsys):
    """Given part of the folders, the temperature was fitted on a handful of images."""
    from napari_bloodcell.classification.inference import CellClassifier
    from napari_bloodcell.classification.model_files import save_model

    trained = CellClassifier(tiny_model)
    metadata = trained.metadata
    metadata.training["data_dir_names"] = ["data", "bccd_crops"]
    copy = save_model(trained.keras_model(), tmp_path / "two.keras", metadata)
    assert run_cli("calibrate", copy, tiny_model.parent / "data") == 2
    assert "trained on folders named bccd_crops too" in capsys.readouterr().err
    metadata.training["validation_sources"] = []
    copy = save_model(trained.keras_model(), tmp_path / "unsplit.keras", metadata)
    assert run_cli("calibrate", copy, tiny_model.parent / "data") == 2
    assert "records no validation images" in capsys.readouterr().err
    assert run_cli("calibrate", "default", tiny_model.parent / "data") == 2
    assert "packaged with napari-bloodcell" in capsys.readouterr().err


def test_calibrate_refits_the_temperature_on_validation_sources(
    tmp_path, tiny_model, tiny_heldout, capsys, monkeypatch
):
    from napari_bloodcell.classification import novelty
    from napari_bloodcell.classification.inference import CellClassifier
    from napari_bloodcell.classification.model_files import (
        read_metadata,
        read_novelty_reference,
        save_model,
        update_metadata,
    )

    trained = CellClassifier(tiny_model)
    copy = save_model(trained.keras_model(), tmp_path / "m.keras", trained.metadata)
    data = tiny_model.parent / "data"
    mislabelled = tmp_path / "mislabelled" / "data"  # a validation error: a T to fit
    shutil.copytree(data, mislabelled)
    (mislabelled / "round" / "round1.png").rename(mislabelled / "lobed" / "round1.png")
    fitted = []
    for planted in (7.0, 0.3):  # fitted on the network's own probabilities, not on T's
        metadata = read_metadata(copy)
        metadata.temperature = planted
        update_metadata(copy, metadata)
        assert run_cli("calibrate", copy, mislabelled) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["temperature_fitted"] and record["validation_accuracy"] < 1
        assert read_metadata(copy).temperature == record["temperature"] != planted
        fitted.append(record["temperature"])
    assert fitted[0] == pytest.approx(fitted[1], rel=1e-4)
    assert run_cli("calibrate", copy, data) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["novelty_reference"] is False  # 96 crops: too few
    n_validation = len(read_metadata(copy).training["validation_sources"])
    assert record["validation_sources"] == {"recorded": n_validation, "found": n_validation}
    assert read_metadata(copy).temperature > 0 and read_novelty_reference(copy) is None
    with monkeypatch.context() as patch:  # minimums lowered: a reference of 2 classes × 1 folder
        patch.setattr(novelty, "MIN_TRAINING_CROPS", 10)
        patch.setattr(novelty, "MIN_VALIDATION_CROPS", 10)
        assert run_cli("calibrate", copy, data) == 0
        means = read_novelty_reference(copy).class_means
        assert len(means) == 2 and read_metadata(copy).training["novelty_reference"] is True
        # a folder the model was not split from is not training data: same reference
        assert run_cli("calibrate", copy, data, tiny_heldout) == 0
        np.testing.assert_allclose(read_novelty_reference(copy).class_means, means, rtol=1e-5)
    assert run_cli("calibrate", copy, tmp_path) == 2  # no class folders there
    assert run_cli("calibrate", copy, tiny_heldout) == 2  # none of its validation sources
    assert run_cli("calibrate", copy, data, "--views", "2") == 0
    assert read_metadata(copy).test_time_views == 2
    # a reference for 8 views is not kept when the new one cannot be fitted
    assert read_novelty_reference(copy) is None
    assert read_metadata(copy).training["novelty_reference"] is False


def test_analyze_with_tracking_then_track_command(tmp_path, capsys):
    movie = make_timelapse(n_frames=6, shape=(96, 128), seed=3)
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, movie.image)
    out = tmp_path / "out"
    args = ["--out", out, "--axes", "TYXC", "--track", "--pixel-size", "0.75"]
    assert run_cli("analyze", path, *args, "--frame-interval", "10") == 0
    tracks = pd.read_csv(out / "tracking" / "movie" / "tracks.csv")
    assert {"track_id", "frame", "t_s", "centroid_y", "centroid_x", "cell_class"} <= set(tracks)
    assert tracks.groupby("track_id")["frame"].nunique().max() > 1  # cells were linked
    summary = pd.read_csv(out / "tracking" / "movie" / "track_summary.csv")
    assert set(summary["track_id"]) == set(tracks["track_id"])
    # the same from the table alone; results are never replaced without --overwrite
    again = tmp_path / "again"
    assert run_cli("track", out / "cells.csv", "--out", again, "--pixel-size", "0.75") == 0
    assert len(pd.read_csv(again / "tracks.csv")) == len(tracks)
    assert run_cli("track", out / "cells.csv", "--out", again) == 2
    # without --pixel-size the table's own µm (it was analysed at 0.75 µm/px) are used
    same = tmp_path / "same"
    assert run_cli("track", out / "cells.csv", "--out", same) == 0
    pd.testing.assert_frame_equal(
        pd.read_csv(same / "track_summary.csv"), pd.read_csv(again / "track_summary.csv")
    )
    # a rerun of analyze --track leaves its tracking tables alone unless --overwrite
    (out / "tracking" / "movie" / "tracks.csv").write_text("mine")
    capsys.readouterr()
    assert run_cli("analyze", path, *args, "--frame-interval", "10") == 0
    assert (out / "tracking" / "movie" / "tracks.csv").read_text() == "mine"
    # its note names the command that tracks again without analysing again (not --overwrite)
    hint = capsys.readouterr().out.split("without analysing again: napari-bloodcell ")[1]
    command = shlex.split(hint.split(", with the tracking options")[0])
    assert command[:2] == ["track", str(out / "cells.csv")]
    assert run_cli(*command, "--frame-interval", "10") == 0
    assert len(pd.read_csv(out / "tracking" / "movie" / "tracks.csv")) == len(tracks)
    (out / "tracking" / "movie" / "tracks.csv").write_text("mine")
    assert run_cli("analyze", path, *args, "--frame-interval", "10", "--overwrite") == 0
    assert len(pd.read_csv(out / "tracking" / "movie" / "tracks.csv")) == len(tracks)
    assert run_cli("analyze", path, *args, "--frame-interval", "0") == 2  # refused at once
    assert run_cli("analyze", path, *args, "--frame-interval", "nan") == 2
    # a second input later: each input's tables in its own folder, as the first one's were
    tifffile.imwrite(tmp_path / "other.tif", movie.image)
    assert run_cli("analyze", path, tmp_path / "other.tif", *args) == 0
    assert sorted(p.name for p in (out / "tracking").iterdir()) == ["movie", "other"]


def test_track_never_replaces_the_tables_of_any_source(tmp_path):
    movie = make_timelapse(n_frames=5, shape=(96, 128), seed=3)
    for name in ("a.tif", "b.tif"):
        tifffile.imwrite(tmp_path / name, movie.image)
    out = tmp_path / "out"
    inputs = [tmp_path / "a.tif", tmp_path / "b.tif"]
    assert run_cli("analyze", *inputs, "--out", out, "--axes", "TYXC") == 0
    tracks = tmp_path / "tracks"
    assert run_cli("track", out / "cells.csv", "--out", tracks) == 0
    assert {p.name for p in tracks.iterdir()} == {"a", "b"}
    (tracks / "b" / "tracks.csv").write_text("mine")
    assert run_cli("track", out / "cells.csv", "--out", tracks) == 2  # before tracking any
    assert (tracks / "b" / "tracks.csv").read_text() == "mine"
    table = pd.read_csv(out / "cells.csv")  # two sources of one name, from elsewhere
    table["source"] = table["source"].map({"a.tif": "x/movie.tif", "b.tif": "y/movie.tif"})
    table.to_csv(tmp_path / "same_names.csv", index=False)
    assert run_cli("track", tmp_path / "same_names.csv", "--out", tmp_path / "t2") == 2
    assert not (tmp_path / "t2").exists()


def test_flowing_cells_are_linked_with_a_higher_max_speed(tmp_path, capsys):
    """Crawling-cell defaults cut a platelet flowing 10 px per frame into one-frame tracks;
    intravital users had no option to say how fast their cells go."""
    table = tmp_path / "cells.csv"
    rows = [(t, 1, 20.0, 10.0 + 10 * t, "platelet", 4.0) for t in range(6)]
    columns = ["frame", "label", "centroid_y", "centroid_x", "cell_type", "diameter_px"]
    pd.DataFrame(rows, columns=columns).to_csv(table, index=False)
    assert run_cli("track", table, "--out", tmp_path / "default") == 0
    assert pd.read_csv(tmp_path / "default" / "tracks.csv")["track_id"].nunique() == 6
    assert run_cli("track", table, "--out", tmp_path / "fast", "--platelet-max-speed", "15") == 0
    assert pd.read_csv(tmp_path / "fast" / "tracks.csv")["track_id"].nunique() == 1
    capsys.readouterr()
    assert run_cli("track", table, "--out", tmp_path / "bad", "--wbc-max-speed", "0") == 2
    assert "--wbc-max-speed must be a positive number" in capsys.readouterr().err
    # 1e308 overflowed in linking (a traceback, exit 1)
    assert run_cli("track", table, "--out", tmp_path / "bad", "--wbc-max-speed", "1e308") == 2
    assert "--wbc-max-speed must be a positive number up to 1e+06" in capsys.readouterr().err
    assert run_cli("track", table, "--out", tmp_path / "bad", "--pixel-size", "1e300") == 2
    assert "--pixel-size must be a positive number up to 1e+06" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
    # tracking allocates nothing by the pixel size: a finer one than segmentation's is fine
    assert run_cli("track", table, "--out", tmp_path / "fine", "--pixel-size", "0.005") == 0


@pytest.mark.parametrize("pixel_size", ["0.001", "1e-300", "1e200"])
def test_analyze_refuses_a_pixel_size_no_microscope_has_before_reading(
    tmp_path, capsys, smear_png, pixel_size
):
    """0.001 (a size in mm given as µm) asked for 8 GiB per structuring element, after each
    input was read; 1e-300 and 1e200 failed each input with 'please report this bug'."""
    argv = ["analyze", smear_png, "--out", tmp_path / "out", "--no-classify"]
    assert run_cli(*argv, "--pixel-size", pixel_size) == 2
    error = capsys.readouterr().err
    assert "--pixel-size must be a positive number of µm per pixel from 0.01 to 100" in error
    assert not (tmp_path / "out").exists()


def test_track_refuses_a_table_without_frames(tmp_path, capsys):
    table = tmp_path / "cells.csv"
    pd.DataFrame({"centroid_y": [1.0], "centroid_x": [2.0], "cell_type": ["wbc"]}).to_csv(table)
    assert run_cli("track", table, "--out", tmp_path / "t") == 2
    assert "frame" in capsys.readouterr().err


def test_a_grey_bright_field_smear_is_refused_not_taken_for_fluorescence(tmp_path, capsys):
    """Its bright background gaps between red cells were counted as 60 leukocytes."""
    grey = make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, seed=4).image.mean(axis=-1)
    iio.imwrite(tmp_path / "grey.png", grey.astype(np.uint8))
    assert run_cli("analyze", tmp_path / "grey.png", "--out", tmp_path / "o") == 2
    assert "smear without its colours" in capsys.readouterr().err
    args = ["--out", tmp_path / "f", "--modality", "fluorescence", "--no-classify"]
    assert run_cli("analyze", tmp_path / "grey.png", *args) == 0  # when the user insists
    # the same grey saved as RGB gave a smear of 0 cells, silently
    iio.imwrite(tmp_path / "grey_rgb.png", np.repeat(grey[..., None], 3, axis=2).astype(np.uint8))
    assert run_cli("analyze", tmp_path / "grey_rgb.png", "--out", tmp_path / "o") == 2
    assert "red, green and blue are the same" in capsys.readouterr().err


def test_run_record_names_the_pixel_size_each_input_was_measured_with(tmp_path):
    movie = make_timelapse(n_frames=2, shape=(64, 96), seed=3).image
    path = tmp_path / "calibrated.tif"
    tifffile.imwrite(path, movie, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "um"})
    out = tmp_path / "out"
    assert run_cli("analyze", path, "--out", out, "--no-classify", "--axes", "TYXC") == 0
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["pixel_size_um"] is None  # none given: each file's own
    assert run["pixel_sizes_um"] == {str(path): pytest.approx(0.5)}


def test_the_summary_of_a_rerun_counts_the_cells_it_analysed(tmp_path, smear_png, capsys):
    other = tmp_path / "other.png"
    iio.imwrite(other, make_smear(shape=(240, 320), n_rbc=3, n_wbc=1, seed=9).image)
    out = tmp_path / "out"
    assert run_cli("analyze", smear_png, "--out", out, "--no-classify") == 0
    capsys.readouterr()
    assert run_cli("analyze", smear_png, other, "--out", out, "--no-classify") == 0
    printed = capsys.readouterr().out
    cells = pd.read_csv(out / "cells.csv")
    n_other = int((cells["source"] == "other.png").sum())
    assert f"1 input(s), 1 frame(s), {n_other} cells" in printed
    assert f"(and {len(cells) - n_other} cells of inputs finished before" in printed


def test_track_gives_one_line_for_files_it_cannot_read_or_write(tmp_path, capsys):
    """Raw tracebacks: a TIFF or an empty file given as the table, --out naming a file."""
    binary, empty, header = tmp_path / "movie.csv", tmp_path / "empty.csv", tmp_path / "h.csv"
    binary.write_bytes(bytes(range(256)) * 4)
    empty.write_bytes(b"")
    for table in (binary, empty):
        assert run_cli("track", table, "--out", tmp_path / "t") == 2
        assert "not a readable CSV table" in capsys.readouterr().err
    columns = "source,frame,label,centroid_y,centroid_x,cell_type,cell_class\n"
    header.write_text(columns)
    (tmp_path / "file").write_text("mine")
    assert run_cli("track", header, "--out", tmp_path / "file") == 2
    assert "is a file" in capsys.readouterr().err and (tmp_path / "file").read_text() == "mine"
    assert run_cli("track", header, "--out", tmp_path / "file" / "sub") == 2  # an OSError
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    # a table without cells gives empty tables, as documented (it did nothing, silently)
    assert run_cli("track", header, "--out", tmp_path / "none") == 0
    assert pd.read_csv(tmp_path / "none" / "tracks.csv").empty
    for bad in ("nan", "inf"):
        assert run_cli("track", header, "--out", tmp_path / "x", "--frame-interval", bad) == 2


def test_models_lists_the_default_model(capsys):
    assert run_cli("models") == 0
    assert capsys.readouterr().out.startswith("default")


def test_an_unreadable_user_model_does_not_hide_the_others(tmp_path, monkeypatch, capsys):
    import shutil

    from napari_bloodcell.classification.model_files import resolve_model_path, user_models_dir

    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    models = user_models_dir()
    models.mkdir(parents=True)
    (models / "aaa.keras").write_bytes(b"not a model")
    shutil.copy(resolve_model_path("default"), models / "zzz.keras")
    assert run_cli("models") == 2
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "unreadable" in lines["aaa"] and "neutrophil" in lines["zzz"]  # still listed


def test_an_input_named_like_a_pattern_keeps_the_other_inputs_overlays(tmp_path):
    movie = make_timelapse(n_frames=2, shape=(64, 96), seed=3).image
    for name in ("cell1.tif", "cell2.tif", "cell[12].tif"):
        tifffile.imwrite(tmp_path / name, movie)
    out = tmp_path / "out"
    args = ["--out", out, "--no-classify", "--axes", "TYXC"]
    assert run_cli("analyze", tmp_path / "cell1.tif", tmp_path / "cell2.tif", *args) == 0
    assert run_cli("analyze", tmp_path / "cell[12].tif", *args) == 0  # 'cell[12]_t…' globs cell1
    overlays = {str(p.relative_to(out / "overlays")) for p in (out / "overlays").rglob("*.png")}
    assert overlays == {
        f"{stem}/t000{t}.png" for stem in ("cell1", "cell2", "cell[12]") for t in (0, 1)
    }


def test_a_frame_saved_from_a_stack_keeps_its_own_overlay(tmp_path):
    """``movie_t0001.png`` and frame 1 of ``movie.tif`` had one overlay name: one replaced
    the other."""
    movie = make_timelapse(n_frames=2, shape=(64, 96), seed=3).image
    tifffile.imwrite(tmp_path / "movie.tif", movie)
    iio.imwrite(tmp_path / "movie_t0001.png", movie[1])
    out = tmp_path / "out"
    for inputs in (["movie.tif", "movie_t0001.png"], ["movie.tif"]):  # together, then a rerun
        args = [tmp_path / name for name in inputs]
        assert run_cli("analyze", *args, "--out", out, "--no-classify", "--overwrite") == 0
        overlays = {str(p.relative_to(out / "overlays")) for p in (out / "overlays").rglob("*.png")}
        assert overlays == {"movie/t0000.png", "movie/t0001.png", "movie_t0001.png"}
        iio.imwrite(out / "overlays" / "movie_t0000.png", movie[0])  # an earlier version's


def test_another_file_of_the_same_name_never_takes_or_replaces_the_results(tmp_path, capsys):
    movie = make_timelapse(n_frames=2, shape=(64, 96), seed=3).image
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
        tifffile.imwrite(tmp_path / day / "movie.tif", movie)
    out = tmp_path / "out"
    args = ["--out", out, "--no-classify", "--axes", "TYXC"]
    assert run_cli("analyze", tmp_path / "day1" / "movie.tif", *args) == 0
    before = (out / "tables" / "movie.csv").read_bytes()
    capsys.readouterr()
    for extra in ([], ["--overwrite"]):
        assert run_cli("analyze", tmp_path / "day2" / "movie.tif", *args, *extra) == 2
        assert "another file named 'movie'" in capsys.readouterr().err
    assert (out / "tables" / "movie.csv").read_bytes() == before
    assert run_cli("analyze", tmp_path / "day1" / "movie.tif", *args) == 0  # the same: skipped
    (tmp_path / "day1").rename(tmp_path / "moved")  # the same file in a renamed folder
    assert run_cli("analyze", tmp_path / "moved" / "movie.tif", *args) == 0
    assert "skipped" in capsys.readouterr().err


def test_an_uncertain_threshold_outside_0_1_is_refused(tmp_path, capsys):
    frame = tmp_path / "frame.tif"
    tifffile.imwrite(frame, make_smear(seed=0).image)
    args = ["--out", tmp_path / "out", "--uncertain-threshold", "50"]
    assert run_cli("analyze", frame, *args) == 2
    assert "probability in [0, 1]" in capsys.readouterr().err


def test_an_empty_scheduler_address_setting_means_no_cluster(tmp_path, smear_png, monkeypatch):
    """DASK_SCHEDULER_ADDRESS="" (a common way to unset it) failed every analyze."""
    import dask

    with dask.config.set({"scheduler-address": ""}):
        assert run_cli("analyze", smear_png, "--out", tmp_path / "o", "--no-classify") == 0
    assert (tmp_path / "o" / "cells.csv").is_file()


def test_inputs_that_clash_are_refused_before_a_cluster_starts(tmp_path, smear_png, monkeypatch):
    from napari_bloodcell import distributed

    def no_cluster(*args, **kwargs):
        raise AssertionError("a cluster was started")

    monkeypatch.setattr(distributed, "open_client", no_cluster)
    other = tmp_path / "d2" / smear_png.name
    other.parent.mkdir()
    shutil.copy(smear_png, other)
    assert run_cli("analyze", smear_png, other, "--out", tmp_path / "o", "--workers", "2") == 2


def test_a_model_given_by_a_relative_path_is_loaded_once_as_one_file(
    tmp_path, smear_png, tiny_model, monkeypatch
):
    """The run's first load used the relative path and its units the absolute one: the
    network was built twice here, and a cluster whose workers run elsewhere refused it."""
    from napari_bloodcell import batch

    shutil.copy(tiny_model, tmp_path / "my.keras")
    monkeypatch.chdir(tmp_path)
    batch.cached_classifier.cache_clear()
    assert run_cli("analyze", smear_png, "--out", "o", "--model", "my.keras") == 0
    assert batch.cached_classifier.cache_info().currsize == 1
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["model"]["path"] == str(tmp_path / "my.keras")


def test_the_progress_bar_ends_its_line_when_an_input_fails_partway(tmp_path, monkeypatch):
    from napari_bloodcell import batch
    from napari_bloodcell.errors import BloodcellError

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    movie = make_timelapse(3, (48, 64), n_leukocytes=1, n_platelets=2, seed=0).image
    tifffile.imwrite(tmp_path / "movie.tif", movie, photometric="rgb", metadata={"axes": "TYXC"})
    analyze_unit = batch.analyze_unit

    def failing_at_frame_1(chunk, job):
        if chunk.first == 1:
            raise BloodcellError(f"{job.source}: frame 1: broken")
        return analyze_unit(chunk, job)

    monkeypatch.setattr(batch, "analyze_unit", failing_at_frame_1)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    run_cli("analyze", tmp_path / "movie.tif", "--out", tmp_path / "o", "--no-classify",
            "--frames-per-task", "1")  # fmt: skip
    text = terminal.getvalue()
    bar_end = text.index("1/3 frames")
    assert "\n" in text[bar_end : text.index("napari-bloodcell: error")]


def test_the_progress_bar_counts_the_inputs_not_yet_opened():
    from napari_bloodcell.batch import BatchProgress
    from napari_bloodcell.cli import TerminalProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    bar = TerminalProgress(terminal)
    bar(BatchProgress("a.tif", 10, 10, 10, 10, inputs_opened=1, inputs_to_open=4))
    first = terminal.getvalue()
    assert "10/10 frames · inputs opened 1/4" in first and "[" + "#" * 7 + "." in first
    assert not first.endswith("\n")  # three inputs to go: the bar is not finished
    bar(BatchProgress("d.tif", 5, 5, 40, 40, inputs_opened=4, inputs_to_open=4))
    last = terminal.getvalue()[len(first) :]
    assert "inputs opened" not in last and "#" * 30 in last and last.endswith("\n")


def test_a_frame_without_cells_is_summarised_in_words(tmp_path, capsys):
    blank = np.zeros((64, 64, 3), np.uint8) + np.array([236, 226, 232], np.uint8)  # background
    blank[::7, ::5] += 3  # not constant
    iio.imwrite(tmp_path / "blank.png", blank)
    assert run_cli("analyze", tmp_path / "blank.png", "--out", tmp_path / "o", "--no-classify") == 0
    out = capsys.readouterr().out
    assert "no cells found" in out and "Empty DataFrame" not in out


def test_a_refused_training_leaves_no_folder_behind(tmp_path, tiny_heldout):
    target = tmp_path / "new" / "sub" / "m.keras"
    assert run_cli("train", tiny_heldout, "--out", target, "--head-only") == 2
    assert not (tmp_path / "new").exists()


def test_options_that_do_nothing_in_this_run_are_warned_about(tmp_path, smear_png, capsys):
    args = ["--out", tmp_path / "o", "--no-classify", "--channel", "neutrophil=1"]
    assert run_cli("analyze", smear_png, *args, "--frame-interval", "10") == 0
    err = capsys.readouterr().err
    assert "warning: --frame-interval: used by --track only; ignored" in err
    assert "warning: --channel was ignored for 1 input(s) analysed as smears" in err
