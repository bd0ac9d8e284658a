"""Training a classifier in a spawned subprocess, with per-epoch progress and cancel.

TensorFlow must not share a process with a shown napari viewer (see
:mod:`~napari_bloodcell.classification.remote`), so a GUI trains through a
:class:`TrainingJob`: :func:`~.training.train_classifier` runs in a freshly *spawned*
process that reports every epoch on a ``multiprocessing`` queue and checks a
``multiprocessing`` event after each epoch to stop. The model is trained into a
temporary folder and moved to ``<models_dir>/<name>.keras`` only when training
succeeds, so a cancelled or failed run leaves nothing behind. No Qt here.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import BloodcellError, DatasetError
from .datasets import find_labelled_files
from .model_files import check_model_name, user_models_dir
from .training import TrainingConfig


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


@dataclass(frozen=True)
class TrainingFailed:
    """Training stopped on an error (a user-facing message)."""

    message: str


@dataclass(frozen=True)
class TrainingCancelled:
    """Training was cancelled; no model was saved."""


TrainingEvent = EpochEnd | TrainingDone | TrainingFailed | TrainingCancelled


class _StopRequested(Exception):
    """Raised from the epoch callback to leave ``model.fit`` when cancel was asked."""


def _train_in_child(data_dirs, out, config, events, stop) -> None:
    """Subprocess body: train, reporting epochs and the outcome on ``events``."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from .training import train_classifier

    def on_epoch_end(epoch: int, logs: dict | None) -> None:
        clean = {key: float(value) for key, value in (logs or {}).items()}
        events.put(EpochEnd(epoch + 1, config.epochs, clean))
        stop_if_asked()

    def stop_if_asked(*_, **__) -> None:
        if stop.is_set():
            raise _StopRequested

    stop_between_batches = keras.callbacks.LambdaCallback(on_train_batch_end=stop_if_asked)
    try:
        result = train_classifier(
            data_dirs, out, config, on_epoch_end=on_epoch_end, callbacks=[stop_between_batches]
        )
    except _StopRequested:
        events.put(TrainingCancelled())
    except BloodcellError as exc:
        events.put(TrainingFailed(str(exc)))
    except Exception as exc:  # report anything else instead of dying silently
        events.put(TrainingFailed(f"training failed: {type(exc).__name__}: {exc}"))
    else:
        events.put(TrainingDone(result.model_path, result.history, result.metadata.classes))


class TrainingJob:
    """Train a model from class folders in a spawned process and save it as ``name``.

    Usage: ``job.start()``, then iterate :meth:`events` (it ends after the outcome);
    :meth:`cancel` from another thread stops after the current epoch. Input problems
    (name taken, folder without class sub-folders) raise at construction.
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
        _, classes = find_labelled_files(self.data_dirs)
        if len(classes) < 2:
            raise DatasetError(
                f"{', '.join(map(str, self.data_dirs))}: found only the class(es) {classes}; "
                f"training needs at least two class sub-folders"
            )
        self.classes = classes
        context = multiprocessing.get_context("spawn")
        self._events = context.Queue()
        self._stop = context.Event()
        self._workdir: Path | None = None
        self._process = None
        self._context = context

    def start(self) -> None:
        """Start the training process."""
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self._workdir = Path(tempfile.mkdtemp(prefix=".training-", dir=self.models_dir))
        out = self._workdir / self.target.name
        self._process = self._context.Process(
            target=_train_in_child,
            args=(self.data_dirs, out, self.config, self._events, self._stop),
            name=f"napari-bloodcell training {self.target.stem}",
        )
        self._process.start()

    def cancel(self) -> None:
        """Ask the training to stop after the current epoch (nothing is saved)."""
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
                        yield TrainingFailed(
                            f"the training process ended unexpectedly "
                            f"(exit code {self._process.exitcode})"
                        )
                        return
                    continue
                if isinstance(event, TrainingDone):
                    event = self._install(event)
                yield event
                if not isinstance(event, EpochEnd):
                    return
        finally:
            self.close()

    def _install(self, done: TrainingDone) -> TrainingDone | TrainingFailed:
        """Move the trained model (and its history CSV) from the work folder to its place.

        Without ``overwrite``, a model saved under the same name while this one trained (by
        another widget or the command line) is kept: this one gets the first free name
        ``<name>-2``, ``<name>-3`` … (no check-then-replace race: a hard link never replaces).
        """
        history_csv = done.model_path.with_name(f"{done.model_path.stem}_history.csv")
        try:
            target = self._claim_target(done.model_path)
            if history_csv.is_file():
                os.replace(history_csv, target.with_name(f"{target.stem}_history.csv"))
        except OSError as exc:
            return TrainingFailed(f"cannot save the model to {self.target}: {exc}")
        return TrainingDone(target, done.history, done.classes)

    def _claim_target(self, model_path: Path) -> Path:
        if self.overwrite:
            os.replace(model_path, self.target)
            return self.target
        for n in range(1, 1000):
            target = self.target if n == 1 else self.target.with_stem(f"{self.target.stem}-{n}")
            try:
                os.link(model_path, target)
            except FileExistsError:
                continue
            except OSError:  # a file system without hard links: check, then move
                if target.exists():
                    continue
                os.replace(model_path, target)
                return target
            os.unlink(model_path)
            return target
        raise OSError(f"no free name like {self.target.name} in {self.models_dir}")

    def close(self) -> None:
        """Stop the process if it still runs and delete the work folder."""
        if self._process is not None:
            self._stop.set()
            self._process.join(timeout=5)
            if self._process.is_alive():
                self._process.terminate()
                self._process.join(timeout=5)
            self._process = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
