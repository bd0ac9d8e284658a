"""Running the classifier in a separate worker process.

TensorFlow and Mesa's software OpenGL (llvmpipe) segfault when they share a process
with a shown napari viewer (measured; both import orders). :class:`RemoteClassifier`
has the same interface as :class:`~.inference.CellClassifier` — ``classes``,
``input_size``, ``crop_scale``, ``metadata``, ``predict``, ``predict_proba``, ``classify`` — but
reads only the model's metadata in the calling process and runs TensorFlow in a
freshly *spawned* child process (no inherited OpenGL or Qt state), which loads the
network once and serves every call after. The napari widgets always use it.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import CancelledError, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np

from ..errors import ModelError, one_line
from .inference import ModelFileClassifier

_MAIN_MODULE_HIDDEN = threading.Lock()


@contextlib.contextmanager
def main_script_not_rerun() -> Iterator[None]:
    """Start spawned processes without running the main script again in them.

    A spawned child first imports the parent's ``__main__`` by its file or module name:
    a napari launch script without an ``if __name__ == "__main__":`` guard opened a second
    viewer in the worker, whose event loop then held the classifier or the training (and
    TensorFlow shared its process with a shown viewer); napari's own launcher imported
    napari there. The workers run this package's functions only: while they start, the
    main module has neither a file nor a module name to be imported by."""
    main = sys.modules["__main__"]
    with _MAIN_MODULE_HIDDEN:
        saved = {
            name: main.__dict__[name] for name in ("__file__", "__spec__") if name in main.__dict__
        }
        main.__dict__.pop("__file__", None)
        main.__spec__ = None  # (multiprocessing reads the attribute itself)
        try:
            yield
        finally:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


_worker_classifier = None
_worker_error: ModelError | None = None


def _load_in_worker(path: str, chosen_stamp: tuple[int, int]) -> None:
    """Process initialiser: load the network of the file the caller chose, once per worker
    process. A file that changed or cannot be loaded is kept as the answer to every call
    (an initialiser's own exception would reach the caller only as a broken pool)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from .inference import CellClassifier

    global _worker_classifier, _worker_error
    try:
        _worker_classifier = CellClassifier(path, chosen_stamp=chosen_stamp)
        _worker_classifier.load()
    except ModelError as exc:  # a new error: this one's context may be Keras's exception
        _worker_error = ModelError(str(exc))
    except Exception as exc:  # TensorFlow or Keras failing to start: say what happened
        _worker_error = ModelError(f"{path}: the network cannot be loaded ({_described(exc)})")


def _predict_in_worker(crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The worker's answer; its errors reach the caller as text only (:class:`ModelError`):
    unpickling a TensorFlow exception there — also as another's context, which the tblib
    pickling TensorFlow installs sends along — would import TensorFlow into the caller, the
    crash this process exists to prevent."""
    if _worker_error is not None:
        raise _worker_error
    try:
        return _worker_classifier.predict(crops)
    except Exception as exc:
        failure = _described(exc)
    raise WorkerCallError(  # outside the handler: no context
        f"{_worker_classifier.path}: classifying failed in the worker process ({failure})"
    )


def _described(exc: Exception) -> str:
    return f"{type(exc).__name__}: {one_line(exc)}"


class WorkerCallError(ModelError):
    """A call failed in the worker process, which still serves (its error as text)."""


class _WorkerDied(Exception):
    """The worker process died during a call (see :meth:`RemoteClassifier.predict`)."""


class RemoteClassifier(ModelFileClassifier):
    """A classifier whose TensorFlow runs in a spawned worker process.

    Use as a context manager (or call :meth:`close`) to stop the worker; a closed
    classifier refuses further calls (:class:`ModelError`) instead of starting a worker
    that nothing would stop. A worker that dies (while idle, or killed during a call) is
    replaced by the same call, which is tried once more (a call has no side effects); one
    that dies again in that try fails the call (:class:`ModelError`: out of memory?) and
    the next call starts a new one. Errors in the worker reach the caller as
    :class:`ModelError` text, never as TensorFlow's classes.
    """

    def __init__(self, model: str | Path = "default"):
        super().__init__(model)
        self._pool: ProcessPoolExecutor | None = None
        self._closed = False
        self._lock = threading.Lock()  # two widgets' threads may ask for the worker at once

    def _executor(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._closed:
                raise ModelError(f"{self.path}: this classifier was closed")
            if self._pool is None:
                self.check_unchanged()  # the worker loads the file only now
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_load_in_worker,
                    initargs=(str(self.path), self.stamp),
                )
            return self._pool

    def predict(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Calibrated probabilities (N, K) and pooled features (N, D), computed in the
        worker process (crops as :meth:`.CellClassifier.predict` takes them)."""
        crops = self.checked_crops(crops)  # here: a wrong shape is not the worker's failure
        if len(crops) == 0:
            return np.zeros((0, len(self.classes)), np.float32), np.zeros((0, 0), np.float32)
        try:
            return self._predict_once(crops, retry=True)
        except _WorkerDied:  # killed, or died idle unnoticed: a call has no side effects
            return self._predict_once(crops, retry=False)

    def _predict_once(self, crops: np.ndarray, retry: bool) -> tuple[np.ndarray, np.ndarray]:
        """One try of :meth:`predict`; raises :class:`_WorkerDied` when the worker died
        during it and ``retry`` (a second death: :class:`ModelError`)."""
        pool = self._executor()
        try:
            with main_script_not_rerun():
                future = pool.submit(_predict_in_worker, crops)  # submit starts the worker
            return future.result()
        except WorkerCallError:
            raise
        except ModelError:  # the worker could not load the file: the next call tries again
            self._stop(pool)
            raise
        except (RuntimeError, CancelledError) as exc:  # BrokenProcessPool is a RuntimeError
            if not (isinstance(exc, BrokenProcessPool) or self._pool is not pool):
                raise  # the worker's own error, its process still serving
            self._stop(pool)  # died, or stopped by close() or another call's failure
            if self._closed:
                raise ModelError(f"{self.path}: this classifier was closed") from None
            if retry:
                raise _WorkerDied from None
            raise ModelError(
                f"{self.path}: the classifier worker process stopped twice during one call "
                f"({exc or type(exc).__name__}; out of memory?); the next call starts a new one"
            ) from None

    def close(self) -> None:
        """Stop the worker process at once, without waiting for a call in progress (which
        then fails with :class:`ModelError`); later calls are refused."""
        with self._lock:
            self._closed = True
            pool = self._pool
        if pool is not None:
            self._stop(pool)

    def _stop(self, pool: ProcessPoolExecutor) -> None:
        """Shut ``pool`` down without waiting and end its process (a hung TensorFlow call
        would otherwise keep the caller — napari's GUI thread — waiting)."""
        with self._lock:
            if self._pool is pool:
                self._pool = None
        processes = list((getattr(pool, "_processes", None) or {}).values())  # no public API
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
        for process in processes:
            process.join(timeout=2.0)
            if process.is_alive():  # stopped (SIGSTOP) or ignoring SIGTERM
                process.kill()
                process.join(timeout=2.0)

    def __enter__(self) -> RemoteClassifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
