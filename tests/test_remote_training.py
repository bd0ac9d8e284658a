"""Training jobs: input checked before the process starts; a trained model never installed
over one saved under the same name meanwhile."""

import os
import sys
from pathlib import Path

import pytest

from napari_bloodcell.classification.remote_training import TrainingDone, TrainingJob
from napari_bloodcell.errors import DatasetError

from .helpers import write_crop_folder


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_model_saved_meanwhile_under_the_name_is_kept_unless_overwrite(tmp_path, overwrite):
    data = write_crop_folder(tmp_path / "crops", n_per_class=2, seed=0)
    models = tmp_path / "models"
    job = TrainingJob([data], "mine", models_dir=models, overwrite=overwrite)
    work = models / ".training-x"  # what the training process wrote
    work.mkdir(parents=True)
    (work / "mine.keras").write_bytes(b"trained")
    (work / "mine_history.csv").write_text("epoch")
    (work / "mine_history.png").write_bytes(b"curves")
    (models / "mine.keras").write_bytes(b"saved meanwhile")  # e.g. by the command line

    done = job._install(TrainingDone(work / "mine.keras", {}, ["lobed", "round"]))

    expected = models / ("mine.keras" if overwrite else "mine-2.keras")
    assert isinstance(done, TrainingDone) and done.model_path == expected
    assert expected.read_bytes() == b"trained"
    assert expected.with_name(f"{expected.stem}_history.csv").read_text() == "epoch"
    assert expected.with_name(f"{expected.stem}_history.png").read_bytes() == b"curves"
    if not overwrite:
        assert (models / "mine.keras").read_bytes() == b"saved meanwhile"
    assert not (work / "mine.keras").exists()


def test_data_that_cannot_be_validated_is_refused_before_the_process_starts(tmp_path):
    data = write_crop_folder(tmp_path / "crops", n_per_class=4, seed=0, n_sources=1)
    with pytest.raises(DatasetError, match="too few source images"):
        TrainingJob([data], "mine", models_dir=tmp_path / "models")


class _EndedProcess:
    """A training process that has already ended (its outcome is on the queue)."""

    exitcode = 0

    def is_alive(self) -> bool:
        return False

    def join(self, timeout=None) -> None:
        pass


def test_a_model_saved_after_cancel_was_asked_is_not_installed(tmp_path):
    """The child checks for a stop only before saving: the parent installed the model of a
    cancelled run (the docs promise cancel saves nothing)."""
    from napari_bloodcell.classification.remote_training import TrainingCancelled

    data = write_crop_folder(tmp_path / "crops", n_per_class=2, seed=0)
    models = tmp_path / "models"
    job = TrainingJob([data], "mine", models_dir=models)
    job._workdir = models / ".training-x"
    job._workdir.mkdir(parents=True)
    (job._workdir / "mine.keras").write_bytes(b"trained")
    job._process = _EndedProcess()
    job._events.put(TrainingDone(job._workdir / "mine.keras", {}, ["lobed", "round"]))
    job.cancel()
    assert list(job.events()) == [TrainingCancelled()]
    assert list(models.iterdir()) == []


def test_a_models_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    from napari_bloodcell.errors import BloodcellError

    data = write_crop_folder(tmp_path / "crops", n_per_class=2, seed=0)
    (tmp_path / "taken").write_text("a file where the models folder would be")
    job = TrainingJob([data], "mine", models_dir=tmp_path / "taken" / "models")
    with pytest.raises(BloodcellError, match="cannot start training in .*taken"):
        job.start()


def test_a_process_that_cannot_start_leaves_no_work_folder(tmp_path, monkeypatch):
    data = write_crop_folder(tmp_path / "crops", n_per_class=2, seed=0)
    job = TrainingJob([data], "mine", models_dir=tmp_path / "models")

    class Unstartable:
        def __init__(self, **_kwargs):
            pass

        def start(self):
            raise RuntimeError("cannot start a process here")

    monkeypatch.setattr(job._context, "Process", Unstartable)
    with pytest.raises(RuntimeError, match="cannot start a process here"):
        job.start()
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_training_stops_and_cleans_up_when_napari_dies(tmp_path):
    """A crashed parent left the training process running to its end, its model in a
    hidden work folder nobody installs or removes."""
    import subprocess
    import time

    def running(pid: int) -> bool:  # an orphan's zombie may never be reaped in a container
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    data = write_crop_folder(tmp_path / "crops", n_per_class=12, seed=0)
    models = tmp_path / "models"
    code = (
        "import os, sys\n"
        "from napari_bloodcell.classification.remote_training import EpochEnd, TrainingJob\n"
        "from napari_bloodcell.classification.training import TrainingConfig\n"
        "config = TrainingConfig(input_size=32, epochs=500, patience=500, batch_size=8,\n"
        "                        validation_fraction=0.25, test_fraction=0.0)\n"
        f"job = TrainingJob([{str(data)!r}], 'mine', config, models_dir={str(models)!r})\n"
        "job.start()\n"
        "for event in job.events():\n"
        "    if isinstance(event, EpochEnd):\n"
        "        print('training process', job._process.pid, flush=True)\n"
        "        os._exit(1)  # a crash: no clean-up runs\n"
    )
    log = tmp_path / "log.txt"  # not a pipe: the training process would hold it open
    with log.open("w") as output:
        parent = subprocess.run([sys.executable, "-c", code], stdout=output, stderr=output)
    lines = log.read_text().splitlines()
    assert parent.returncode == 1, lines[-20:]
    (line,) = [x for x in lines if x.startswith("training process")]
    child = int(line.split()[-1])
    deadline = time.monotonic() + 60
    while running(child) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not running(child), "the training process outlived its parent"
    assert list(models.iterdir()) == []  # no model, no work folder


def _training_script(tmp_path, config: str, after_start: str):
    """A script without a main guard that starts training model 'm' (``TrainingConfig``
    arguments ``config``) on 4 crops per class into ``tmp_path / "models"``, then runs
    ``after_start``; it prints TOP LEVEL to stderr whenever its top level runs."""
    data = write_crop_folder(tmp_path / "data", n_per_class=4, seed=0)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import sys, time\n"
        "from napari_bloodcell.classification.remote_training import TrainingJob\n"
        "from napari_bloodcell.classification.training import TrainingConfig\n"
        "print('TOP LEVEL', file=sys.stderr)\n"
        f"job = TrainingJob([{str(data)!r}], 'm', TrainingConfig(input_size=32, {config}),\n"
        f"                  models_dir=__import__('pathlib').Path({str(tmp_path / 'models')!r}))\n"
        "job.start()\n" + after_start
    )
    return script


def test_a_script_without_a_main_guard_and_without_output_trains_and_runs_once(tmp_path):
    """The spawned child re-ran the script (a top-level start() failed: 'bootstrapping
    phase'; a napari launch script opened a second viewer there, and training hung); and a
    process without stdout (pythonw, a closed descriptor) failed after the first epoch,
    when Keras printed its line."""
    import subprocess

    script = _training_script(
        tmp_path,
        "epochs=1",
        "print('EVENTS', ' | '.join(type(e).__name__ + ': ' + getattr(e, 'message', '')\n"
        "                           for e in job.events()), file=sys.stderr)\n",
    )
    result = subprocess.run(  # stdout closed, as `1>&-` in a shell
        [sys.executable, str(script)],
        stderr=subprocess.PIPE,
        text=True,
        timeout=180,
        preexec_fn=lambda: os.close(1),
    )
    assert result.stderr.count("TOP LEVEL") == 1, result.stderr[-2000:]
    events = [line for line in result.stderr.splitlines() if line.startswith("EVENTS")]
    assert len(events) == 1 and events[0].endswith("TrainingDone: "), result.stderr[-2000:]
    models = tmp_path / "models"
    assert (models / "m.keras").is_file() and not list(models.glob(".training-*"))


def test_a_script_that_ends_without_reading_the_events_stops_the_training(tmp_path):
    """Python's exit waited for the whole training and left the trained model in a hidden
    work folder that nothing installed or removed."""
    import subprocess

    script = _training_script(tmp_path, "epochs=500, patience=500", "time.sleep(2)\n")
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert list((tmp_path / "models").iterdir()) == []


def test_tensorflow_that_cannot_be_loaded_is_named(tmp_path, monkeypatch):
    """A broken TensorFlow killed the child with exit code 1 before it could report, and
    the user was told to add a main guard (the real error only on napari's stderr)."""
    from napari_bloodcell.classification.remote_training import TrainingFailed

    broken = tmp_path / "broken"
    (broken / "keras").mkdir(parents=True)
    (broken / "keras" / "__init__.py").write_text("raise ImportError('DLL load failed')\n")
    monkeypatch.syspath_prepend(str(broken))  # a spawned child starts with this sys.path
    data = write_crop_folder(tmp_path / "crops", n_per_class=4, seed=0)
    job = TrainingJob([data], "mine", models_dir=tmp_path / "models")
    job.start()
    (event,) = list(job.events())
    assert isinstance(event, TrainingFailed)
    assert event.message == "TensorFlow cannot be loaded (ImportError: DLL load failed)"
    assert list((tmp_path / "models").iterdir()) == []


@pytest.mark.parametrize(("exit_code", "out_of_memory"), [(1, False), (-9, True)])
def test_an_early_exit_is_reported_with_its_code(tmp_path, exit_code, out_of_memory):
    """A training killed (out of memory) while reading its crops ended with only its code."""
    from napari_bloodcell.classification.remote_training import TrainingFailed

    data = write_crop_folder(tmp_path / "crops", n_per_class=4, seed=0)
    job = TrainingJob([data], "mine", models_dir=tmp_path / "models")
    job._process = _EndedProcess()
    job._process.exitcode = exit_code
    (event,) = list(job.events(poll_s=0.01))
    assert isinstance(event, TrainingFailed)
    assert f"(exit code {exit_code}" in event.message
    assert ("out of memory" in event.message) == out_of_memory
    assert "__main__" not in event.message
