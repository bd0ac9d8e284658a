"""Training a classifier in a spawned subprocess, with per-epoch progress and cancel.

TensorFlow must not share a process with a shown napari viewer (see
:mod:`~napari_bloodcell.classification.remote`), so a GUI trains through a
:class:`TrainingJob`: :func:`~.training.train_classifier` runs in a freshly *spawned*
process that reports every epoch on a ``multiprocessing`` queue and checks a
``multiprocessing`` event after each batch (and each crop read) to stop. The model is trained into a
temporary folder and moved to ``<models_dir>/<name>.keras`` only when training
succeeds, so a cancelled or failed run leaves nothing behind. No Qt here.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import sys
import tempfile
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import BloodcellError
from .model_files import check_model_name, install_model, user_models_dir
from .remote import main_script_not_rerun
from .training import TrainingConfig, split_training_data


@dataclass(frozen=True)
class EpochEnd:
    """One finished epoch: 1-based ``epoch`` of at most ``epochs``, Keras ``logs``."""

    epoch: int
    epochs: int
    logs: dict[str, float]


@dataclass(frozen=True)
class TrainingDone:
    """Training finished; the model is at ``model_path``."""

    model_path: Path
    history: dict[str, list[float]]
    classes: list[str]
    notes: tuple[str, ...] = ()
    """What the user should know about the run (:func:`.training.training_notes`)."""


@dataclass(frozen=True)
class TrainingFailed:
    """Training stopped on an error (a user-facing message)."""

    message: str


@dataclass(frozen=True)
class TrainingCancelled:
    """Training was cancelled; no model was saved."""


TrainingEvent = EpochEnd | TrainingDone | TrainingFailed | TrainingCancelled


def _train_in_child(data_dirs, out: Path, config, events, stop) -> None:
    """Subprocess body: train into ``out`` (in a work folder of its own), reporting epochs
    and the outcome on ``events``. It stops when asked or when the parent process is gone
    (e.g. napari crashed), and then removes the work folder: nobody would install it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _give_output_streams()
    try:
        import keras

        from .training import TrainingStopped, train_classifier, training_notes
    except Exception as exc:  # an ImportError, or TensorFlow failing to start
        shutil.rmtree(out.parent, ignore_errors=True)
        events.put(TrainingFailed(f"TensorFlow cannot be loaded ({type(exc).__name__}: {exc})"))
        return

    parent = multiprocessing.parent_process()

    def parent_gone() -> bool:
        return parent is not None and not parent.is_alive()

    def stop_requested() -> bool:
        return stop.is_set() or parent_gone()

    def on_epoch_end(epoch: int, logs: dict | None) -> None:
        clean = {key: float(value) for key, value in (logs or {}).items()}
        events.put(EpochEnd(epoch + 1, config.epochs, clean))
        stop_if_asked()

    def stop_if_asked(*_, **__) -> None:
        if stop_requested():
            raise TrainingStopped

    stop_between_batches = keras.callbacks.LambdaCallback(on_train_batch_end=stop_if_asked)
    try:
        result = train_classifier(
            data_dirs,
            out,
            config,
            on_epoch_end=on_epoch_end,
            callbacks=[stop_between_batches],
            stop_requested=stop_requested,
        )
    except TrainingStopped:
        outcome = TrainingCancelled()
    except BloodcellError as exc:
        outcome = TrainingFailed(str(exc))
    except Exception as exc:  # report anything else instead of dying silently
        outcome = TrainingFailed(f"training failed: {type(exc).__name__}: {exc}")
    else:
        notes = tuple(training_notes(result.metadata))
        outcome = TrainingDone(result.model_path, result.history, result.metadata.classes, notes)
    if not isinstance(outcome, TrainingDone) or parent_gone():
        shutil.rmtree(out.parent, ignore_errors=True)
    events.put(outcome)


def _give_output_streams() -> None:
    """Point ``sys.stdout`` / ``sys.stderr`` at the null device where the process cannot
    write them (a napari started by ``pythonw`` has none; one started with its output
    closed hands its descriptor number to the next file it opens, e.g. a pipe's reading
    end): Keras' line per epoch failed the training after its first epoch."""
    for name in ("stdout", "stderr"):
        try:
            os.write(getattr(sys, name).fileno(), b"")  # EBADF: closed, or not for writing
        except (AttributeError, OSError, ValueError):  # None, unwritable, or fd-less
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (kept till the end)


class TrainingJob:
    """Train a model from class folders in a spawned process and save it as ``name``.

    Usage: ``job.start()``, then iterate :meth:`events` (it ends after the outcome);
    :meth:`cancel` from another thread stops after the current batch. Input problems
    (name taken, folder without class sub-folders, too few source images to validate,
    impossible settings) raise at construction.
    """

    def __init__(
        self,
        data_dirs: list[Path],
        name: str,
        config: TrainingConfig | None = None,
        *,
        models_dir: Path | None = None,
        overwrite: bool = False,
    ):
        self.data_dirs = [Path(d) for d in data_dirs]
        self.config = config or TrainingConfig()
        self.models_dir = Path(models_dir) if models_dir is not None else user_models_dir()
        self.target = check_model_name(name, self.models_dir, overwrite)
        self.overwrite = overwrite
        # the folders checked and split now (no image read), not after the process started
        self.classes = split_training_data(self.data_dirs, self.config.resolved()).dataset.classes
        context = multiprocessing.get_context("spawn")
        self._events = context.Queue()
        self._stop = context.Event()
        self._workdir: Path | None = None
        self._process = None
        self._finalizer: weakref.finalize | None = None
        self._context = context

    def start(self) -> None:
        """Start the training process (:class:`BloodcellError` if it cannot start)."""
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            self._workdir = Path(tempfile.mkdtemp(prefix=".training-", dir=self.models_dir))
            out = self._workdir / self.target.name
            self._process = self._context.Process(
                target=_train_in_child,
                args=(self.data_dirs, out, self.config, self._events, self._stop),
                name=f"napari-bloodcell training {self.target.stem}",
            )
            with main_script_not_rerun():
                self._process.start()
            self._finalizer = weakref.finalize(
                self, _stop_training, self._process, self._stop, self._workdir
            )
        except BaseException as exc:  # nothing of a job that did not start is left
            self._process = None
            self.close()
            if isinstance(exc, OSError):
                raise BloodcellError(
                    f"cannot start training in {self.models_dir} ({exc.strerror or exc})"
                ) from None
            raise

    def cancel(self) -> None:
        """Ask the training to stop after the current batch or crop read (nothing is saved;
        while the finished network is calibrated, :meth:`events` ends it after its grace
        time)."""
        self._stop.set()

    @property
    def cancel_requested(self) -> bool:
        return self._stop.is_set()

    def events(self, poll_s: float = 0.2, cancel_grace_s: float = 30.0) -> Iterator[TrainingEvent]:
        """Yield :class:`EpochEnd` events, then one outcome event, then stop.

        A process that does not stop within ``cancel_grace_s`` of :meth:`cancel`
        (e.g. while it loads the data) is terminated.
        """
        if self._process is None:
            raise RuntimeError("start() the job before reading its events")
        cancelled_at = None
        try:
            while True:
                try:
                    event = self._events.get(timeout=poll_s)
                except queue.Empty:
                    if self._stop.is_set():
                        cancelled_at = cancelled_at or time.monotonic()
                        if time.monotonic() - cancelled_at > cancel_grace_s:
                            yield TrainingCancelled()
                            return
                    if not self._process.is_alive() and self._events.empty():
                        code = self._process.exitcode  # a signal's is negative: -9 killed
                        yield TrainingFailed(
                            f"the training process ended unexpectedly (exit code {code}"
                            f"{'; out of memory?' if code == -9 else ''})"
                        )
                        return
                    continue
                if isinstance(event, TrainingDone):  # cancelled while saving: not installed
                    event = TrainingCancelled() if self._stop.is_set() else self._install(event)
                yield event
                if not isinstance(event, EpochEnd):
                    return
        finally:
            self.close()

    def _install(self, done: TrainingDone) -> TrainingDone | TrainingFailed:
        """Move the trained model and its learning curves from the work folder to their
        place (:func:`.model_files.install_model`: without ``overwrite``, a model saved
        under the same name meanwhile is kept and this one gets ``<name>-2`` …)."""
        try:
            target = install_model(done.model_path, self.target, self.overwrite)
        except OSError as exc:
            return TrainingFailed(f"cannot save the model to {self.target}: {exc}")
        return replace(done, model_path=target)

    def close(self) -> None:
        """Stop the process if it still runs and delete the work folder."""
        if self._finalizer is not None:
            self._finalizer()  # (a second call does nothing)
        elif self._workdir is not None:  # the process did not start
            shutil.rmtree(self._workdir, ignore_errors=True)
        self._process = self._workdir = None


def _stop_training(process, stop, workdir: Path) -> None:
    """Stop a training process if it still runs, and delete its work folder: when its job
    is closed, or collected or left unclosed at Python's exit (a script that started a job
    and ended without reading its events waited for the whole training at exit, and left
    the trained model in a hidden work folder)."""
    stop.set()
    process.join(timeout=5)
    if process.is_alive():
        process.terminate()
        process.join(timeout=5)
    shutil.rmtree(workdir, ignore_errors=True)
