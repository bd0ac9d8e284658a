"""The classifier in a worker process gives the same answers without TensorFlow here."""

import subprocess
import sys

import numpy as np
import pandas as pd

from napari_bloodcell.classification.inference import CellClassifier
from napari_bloodcell.classification.remote import RemoteClassifier

from .helpers import exists, model_copy


def test_remote_classifier_matches_the_in_process_one(tiny_model_with_novelty, tmp_path):
    """Same temperature, views and novelty reference as in this process."""
    model = model_copy(tiny_model_with_novelty, tmp_path, temperature=3.0, test_time_views=4)
    crops = np.random.default_rng(0).random((5, 32, 32, 3)).astype(np.float32)
    expected = CellClassifier(model).classify(crops)
    assert expected["novelty"].notna().all()
    with RemoteClassifier(model) as remote:
        assert remote.classes == ["lobed", "round"]
        answered = remote.classify(crops)
        assert answered.columns.tolist() == expected.columns.tolist()
        pd.testing.assert_frame_equal(answered, expected, atol=1e-5)
        assert remote.classify(crops[:0]).empty


def test_the_worker_refuses_a_model_file_replaced_after_it_was_chosen(tiny_model, tmp_path):
    """The worker read the file again when it started: replaced meanwhile, it answered with
    another network (or other classes) than the caller's metadata."""
    import pytest

    from napari_bloodcell.errors import ModelError

    model = model_copy(tiny_model, tmp_path)
    crops = np.zeros((2, 32, 32, 3), np.float32)
    with RemoteClassifier(model) as remote:
        model_copy(tiny_model, tmp_path, classes=["round", "lobed"])  # replaced
        remote.check_unchanged = lambda: None  # as if replaced just after this check
        with pytest.raises(ModelError, match="changed on disk after it was chosen"):
            remote.predict(crops)
        with pytest.raises(ModelError, match="changed on disk after it was chosen"):
            remote.predict(crops)  # a new worker, the same answer


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


def test_a_script_without_a_main_guard_classifies_and_runs_once(tiny_model, tmp_path):
    """The spawned worker imported the script again: its top-level call could not start a
    process (Python's 'bootstrapping phase' error), and a napari launch script opened a
    second viewer in the worker, which then never answered."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        "import numpy as np\n"
        "from napari_bloodcell.classification.remote import RemoteClassifier\n"
        "print('TOP LEVEL')\n"
        f"with RemoteClassifier({str(tiny_model)!r}) as c:\n"
        "    print('SHAPE', c.predict_proba(np.zeros((1, 32, 32, 3), np.float32)).shape)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("TOP LEVEL") == 1 and "SHAPE (1, " in result.stdout


def test_the_main_module_is_whole_again_after_workers_started_without_it():
    import __main__
    from napari_bloodcell.classification.remote import main_script_not_rerun

    before = dict(vars(__main__))
    with main_script_not_rerun():
        assert __main__.__spec__ is None and not hasattr(__main__, "__file__")
    assert vars(__main__) == before


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


def test_a_call_that_got_the_worker_just_before_close_fails_clearly(tiny_model):
    """It raised the executor's RuntimeError ("cannot schedule new futures after
    shutdown"), which the widgets do not report as a model error."""
    import pytest

    from napari_bloodcell.errors import ModelError

    remote = RemoteClassifier(tiny_model)
    pool = remote._executor()
    remote.close()
    remote._executor = lambda: pool  # the worker, as that call got it
    with pytest.raises(ModelError, match="this classifier was closed"):
        remote.predict(np.zeros((2, 32, 32, 3), np.float32))


def test_an_error_in_the_worker_arrives_as_text_without_tensorflow(tiny_model, tmp_path):
    """The worker re-raised TensorFlow's own exception: unpickling it here imported
    TensorFlow into the napari process (the crash the worker exists to prevent), and the
    widget called it a bug."""
    (tmp_path / "worker_faults.py").write_text(  # importable by the worker, beside the script
        "from napari_bloodcell.classification import inference\n"
        "\n"
        "def out_of_memory(self, crops):\n"
        "    import tensorflow as tf\n"
        "    raise tf.errors.ResourceExhaustedError(None, None, 'OOM when allocating tensor')\n"
        "\n"
        "def break_predict():  # run in the worker\n"
        "    inference.CellClassifier.predict = out_of_memory\n"
    )
    script = tmp_path / "failing_worker.py"
    script.write_text(
        "import sys\n"
        "import numpy as np\n"
        "import worker_faults\n"
        "from napari_bloodcell.classification.remote import RemoteClassifier\n"
        "from napari_bloodcell.errors import ModelError\n"
        "\n"
        "if __name__ == '__main__':\n"
        f"    with RemoteClassifier({str(tiny_model)!r}) as c:\n"
        "        c._executor().submit(worker_faults.break_predict).result()\n"
        "        for _ in range(2):  # the worker keeps serving after a failed call\n"
        "            try:\n"
        "                c.predict_proba(np.zeros((1, 32, 32, 3), np.float32))\n"
        "            except ModelError as exc:\n"
        "                print('ModelError:', exc, c._pool is not None)\n"
        "    sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)\n"
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 2 and all(line.endswith(" True") for line in lines)
    assert "classifying failed in the worker process (ResourceExhaustedError: OOM" in lines[0]


def test_a_worker_that_died_while_idle_is_replaced_by_the_next_call(tiny_model):
    """The next call failed ('the worker process stopped') although it never ran."""
    import os
    import signal
    import time

    crops = np.zeros((2, 32, 32, 3), np.float32)
    with RemoteClassifier(tiny_model) as remote:
        first = remote.predict_proba(crops)
        (worker,) = remote._pool._processes.values()
        os.kill(worker.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while exists(worker) and worker.exitcode is None and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the executor notices the death
        np.testing.assert_allclose(remote.predict_proba(crops), first, atol=1e-6)


def test_a_worker_killed_just_before_a_call_is_replaced_within_that_call(tiny_model):
    """Killed less than ~50 ms before a call (before the executor noticed), the call
    failed: 'the worker process stopped … the next call starts a new one'."""
    import os
    import signal

    crops = np.zeros((2, 32, 32, 3), np.float32)
    with RemoteClassifier(tiny_model) as remote:
        first = remote.predict_proba(crops)
        (worker,) = remote._pool._processes.values()
        os.kill(worker.pid, signal.SIGKILL)
        np.testing.assert_allclose(remote.predict_proba(crops), first, atol=1e-6)


def test_a_worker_that_dies_again_in_the_retry_fails_the_call_clearly(tiny_model):
    import contextlib
    import os
    import signal
    import threading
    import time

    import pytest

    from napari_bloodcell.errors import ModelError

    remote = RemoteClassifier(tiny_model)
    stop = threading.Event()

    def kill_every_worker() -> None:  # as a crop batch that runs the worker out of memory
        while not stop.is_set():
            pool = remote._pool
            for process in list(getattr(pool, "_processes", None) or {}).copy():
                with contextlib.suppress(OSError):
                    os.kill(process, signal.SIGKILL)
            time.sleep(0.05)

    killer = threading.Thread(target=kill_every_worker)
    killer.start()
    try:
        with pytest.raises(ModelError, match="stopped twice during one call"):
            remote.predict(np.zeros((2, 32, 32, 3), np.float32))
    finally:
        stop.set()
        killer.join()
        remote.close()
