"""The classifier in a worker process gives the same answers without TensorFlow here."""

import subprocess
import sys

import numpy as np

from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.remote import RemoteClassifier

from .helpers import exists


def test_remote_classifier_matches_the_in_process_one(tiny_model):
    crops = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)
    expected = CellClassifier(tiny_model).classify(crops)
    with RemoteClassifier(tiny_model) as remote:
        assert remote.classes == ["lobed", "round"]
        np.testing.assert_allclose(
            remote.classify(crops)[["p_lobed", "p_round"]],
            expected[["p_lobed", "p_round"]],
            atol=1e-5,
        )
        assert remote.classify(crops[:0]).empty


def test_remote_classifier_keeps_tensorflow_out_of_the_calling_process(tiny_model):
    code = (
        "import sys, numpy as np\n"
        "from napari_bloodcell.classification.remote import RemoteClassifier\n"
        f"with RemoteClassifier({str(tiny_model)!r}) as c:\n"
        "    p = c.predict_proba(np.zeros((2, 32, 32, 3), np.float32))\n"
        "assert p.shape == (2, 2), p.shape\n"
        "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_closing_stops_a_hung_worker_at_once_and_refuses_later_calls(tiny_model):
    """close() waited for the call in progress (napari's GUI thread froze, forever with a
    hung worker), and a closed classifier started a new worker that nothing stopped."""
    import os
    import signal
    import threading
    import time

    import pytest

    from napari_bloodcell.errors import ModelError

    crops = np.zeros((2, 32, 32, 3), np.float32)
    remote = RemoteClassifier(tiny_model)
    remote.predict(crops)  # the worker is up
    (worker,) = remote._pool._processes.values()
    os.kill(worker.pid, signal.SIGSTOP)  # hung
    errors = []

    def classify() -> None:
        try:
            remote.predict(crops)
        except ModelError as exc:
            errors.append(exc)

    waiting = threading.Thread(target=classify)
    waiting.start()
    time.sleep(0.5)
    started = time.monotonic()
    remote.close()
    assert time.monotonic() - started < 10
    waiting.join(timeout=10)
    assert not waiting.is_alive() and errors  # the call in progress fails, clearly
    deadline = time.monotonic() + 10  # whichever thread reaps it
    while exists(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not exists(worker)  # ended and reaped, not left running
    with pytest.raises(ModelError, match="closed"):
        remote.predict(crops)


def test_threads_asking_at_once_share_one_worker(tiny_model):
    import threading

    remote = RemoteClassifier(tiny_model)
    barrier = threading.Barrier(4)
    pools = []

    def first_call() -> None:
        barrier.wait()
        pools.append(remote._executor())

    threads = [threading.Thread(target=first_call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    remote.close()
    assert len({id(pool) for pool in pools}) == 1
