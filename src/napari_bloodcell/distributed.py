"""Running :mod:`napari_bloodcell.batch` units of work on a Dask cluster.

Importing this module imports ``dask.distributed``; the rest of the package imports it
only when a cluster is asked for.

* :func:`open_client` starts a ``LocalCluster`` of worker processes (one thread each),
  or connects to an existing scheduler (``tcp://host:port``, e.g. the
  ``scheduler_address`` of a dask-jobqueue ``SLURMCluster``).
* Every worker sizes TensorFlow's thread pools to its own Dask threads
  (:class:`TensorFlowThreads`), so N single-threaded workers on N cores do not
  oversubscribe them. The network itself is loaded once per worker process, by the
  first unit that needs it (:func:`napari_bloodcell.batch.cached_classifier`).
* :func:`compute_on_cluster` hands the units to the scheduler, a bounded number at a
  time (:func:`units_in_flight`), and yields them as they finish. Dask does the scheduling, the data
  movement and the retries: the units of a worker that dies are run again elsewhere, up
  to ``distributed.scheduler.allowed-failures`` deaths per unit (default 3), after which
  the unit fails and so does its input.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import dask
from distributed import Client, KilledWorker, LocalCluster, WorkerPlugin, as_completed

from .errors import BloodcellError

TENSORFLOW_INTER_OP_THREADS = 1
TASKS_PER_THREAD = 2
"""Units submitted per worker thread at a time: one running, one ready to start."""
MIN_UNITS_IN_FLIGHT = 32
"""Units kept submitted however few worker threads the cluster has now: an adaptive
cluster (``cluster.adapt``, dask-jobqueue) adds workers only for a backlog it sees. The
scheduler queues the units beyond its threads (``distributed.scheduler.worker-saturation``)
instead of piling them onto the workers."""

LOCAL_WORKER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}
"""Dask settings for the workers of a ``LocalCluster`` (measured in ``docs/scaling.md``):

* Dask starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also freezes glibc's
  mmap threshold at 128 kB: every frame-sized array is then mapped and unmapped afresh,
  and the page faults made a 512² frame cost 0.20 s instead of 0.13 s. Local workers
  keep glibc's adaptive defaults, like a plain process.
* The statistical profiler of each worker keeps one call tree per second (up to 1,000):
  ~25 MB more per worker every few minutes, for a dashboard view that needs bokeh.
"""


class TensorFlowThreads(WorkerPlugin):
    """Give TensorFlow in each worker process as many intra-op threads as the worker has
    Dask threads, and one inter-op thread.

    It sets ``TF_NUM_INTRAOP_THREADS`` / ``TF_NUM_INTEROP_THREADS``, which TensorFlow reads
    when it starts: workers import TensorFlow only in their first unit with a model, after
    this plugin ran (a worker that already imported it keeps its pools).
    """

    name = "napari-bloodcell-tensorflow-threads"

    def setup(self, worker) -> None:
        os.environ["TF_NUM_INTRAOP_THREADS"] = str(max(1, worker.state.nthreads))
        os.environ["TF_NUM_INTEROP_THREADS"] = str(TENSORFLOW_INTER_OP_THREADS)


class LeaveInterruptsToTheClient(WorkerPlugin):
    """Ctrl-C in a terminal reaches every process of its group: the workers of a local
    cluster too, which then died each with a screenful of tracebacks. They ignore it: the
    client's process stops the run and closes the cluster, which stops them."""

    name = "napari-bloodcell-leave-interrupts-to-the-client"

    def setup(self, worker) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.SIG_IGN)


HEARTBEAT_FAILURE = "Failed to communicate with scheduler during heartbeat"
"""The start of the error a Dask worker logs when its heartbeat finds the scheduler gone."""


class NoHeartbeatErrorsAtShutdown(WorkerPlugin):
    """A local cluster's scheduler lives in the client's process and closes with it: a
    worker whose heartbeat was under way then logged an error with a traceback (an
    interrupted run ended with one, now and then). Such a worker is being closed; its
    heartbeat failure is dropped from its log."""

    name = "napari-bloodcell-no-heartbeat-errors-at-shutdown"

    def setup(self, worker) -> None:
        logging.getLogger("distributed.worker").addFilter(_not_a_heartbeat_failure)


def _not_a_heartbeat_failure(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(HEARTBEAT_FAILURE)


def check_scheduler_address(address: str) -> None:
    """Refuse (:class:`BloodcellError`) an address of no Dask transport, or a network one
    (tcp, tls, ws, wss) without a host and port, before a client starts."""
    from distributed.comm import get_address_host_port, normalize_address, parse_address
    from distributed.comm.registry import backends

    try:
        scheme, _ = parse_address(normalize_address(address))
        if scheme not in backends:
            raise ValueError(f"unknown scheme {scheme!r}; known: {', '.join(sorted(backends))}")
        if scheme in NETWORK_SCHEMES:
            get_address_host_port(normalize_address(address))
    except ValueError as exc:
        raise BloodcellError(
            f"{address!r} is not a Dask scheduler address ({exc}); expected e.g. "
            f"tcp://10.0.0.5:8786"
        ) from None


NETWORK_SCHEMES = ("tcp", "tls", "ws", "wss")
"""Dask transports whose addresses are host:port."""


def connect(address: str, origin: str = "") -> Client:
    """A client of the scheduler at ``address``; :class:`BloodcellError` when the address
    is malformed or unreachable, naming ``origin`` (where the address came from) if given."""
    from_origin = f"; the address comes from {origin}" if origin else ""
    try:
        check_scheduler_address(address)
        return Client(address, timeout="20s")
    except BloodcellError as exc:
        raise BloodcellError(f"{exc}{from_origin}") from None
    except OSError as exc:
        raise BloodcellError(
            f"cannot reach the Dask scheduler at {address} ({exc}){from_origin}"
        ) from exc


@contextmanager
def open_client(
    workers: int | None = None, scheduler: str | None = None, *, scheduler_origin: str = ""
) -> Iterator[Client]:
    """A Dask client: a new ``LocalCluster`` of ``workers`` processes (one thread each),
    closed on exit, or the existing cluster whose scheduler is at ``scheduler``
    (``scheduler_origin``: where that address came from, named in its errors)."""
    if workers is not None and scheduler:
        raise BloodcellError("give a number of workers or a scheduler address, not both")
    if workers is None and not scheduler:
        raise BloodcellError("give a number of workers or a scheduler address")
    if workers is not None and workers < 1:
        raise BloodcellError(f"--workers must be at least 1, got {workers}")
    if workers is not None and workers > (cores := available_cores()):
        raise BloodcellError(
            f"--workers {workers}: this machine has {cores} CPU core(s) for this process; "
            f"local workers (one thread each) beyond them only compete for the cores and "
            f"split the memory (each loads the CNN). Use at most {cores}, or --scheduler "
            f"for a larger cluster"
        )
    if scheduler:
        with connect(scheduler, scheduler_origin) as client:
            client.register_plugin(TensorFlowThreads())
            yield client
        return
    with (
        dask.config.set(LOCAL_WORKER_CONFIG),
        LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.register_plugin(TensorFlowThreads())
        client.register_plugin(LeaveInterruptsToTheClient())
        client.register_plugin(NoHeartbeatErrorsAtShutdown())
        yield client


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def dashboard_link(client: Client) -> str:
    """The cluster's dashboard address (with a hint when ``bokeh``, which serves it, is
    missing here)."""
    if importlib.util.find_spec("bokeh") is None:
        return f"{client.dashboard_link} (install bokeh>=3.1 to see it)"
    return client.dashboard_link


def describe(client: Client) -> str:
    """One line: scheduler address, workers and threads."""
    workers = client.scheduler_info().get("workers", {})
    threads = sum(w.get("nthreads", 0) for w in workers.values())
    return f"Dask cluster {client.scheduler.address}: {len(workers)} worker(s), {threads} thread(s)"


CLUSTER_SIZE_CHECK_S = 1.0
"""How often (seconds) the cluster's threads are counted while units are submitted: each
count is a round trip to the scheduler (one per unit made thousands on an archive, and
Ctrl-C landing in one made distributed log an error)."""


def units_in_flight(threads: int) -> int:
    """How many units to keep submitted to a cluster of ``threads`` worker threads:
    :data:`TASKS_PER_THREAD` per thread, and at least :data:`MIN_UNITS_IN_FLIGHT`."""
    return max(MIN_UNITS_IN_FLIGHT, TASKS_PER_THREAD * threads)


def unit_failure(future) -> BaseException:
    """The exception for a future that did not finish: its own error, a
    :class:`BloodcellError` when its workers kept dying or the scheduler dropped it."""
    if future.status != "error":  # "cancelled" or "lost"
        return BloodcellError(
            f"one of its units was {future.status} by the Dask scheduler (connection lost, "
            f"scheduler restarted or the unit cancelled?); run it again"
        )
    error = future.exception()
    if isinstance(error, KilledWorker):
        limit = dask.config.get("distributed.scheduler.allowed-failures")
        return BloodcellError(
            f"Dask workers died more than {limit} times running one of its units "
            f"(out of memory?); see the worker logs"
        )
    return error


def compute_on_cluster(
    function: Callable, arguments: Iterable[tuple], client: Client, skip: Callable[[tuple], bool]
) -> Iterator[tuple[tuple, object]]:
    """Run ``function(*a)`` on the cluster for every ``a`` of ``arguments``; yield
    ``(a, result)`` as each finishes, the result being the exception for a call that
    failed (a :class:`~napari_bloodcell.errors.BloodcellError` when its workers kept dying).

    At most :func:`units_in_flight` calls (the cluster's threads counted at most every
    :data:`CLUSTER_SIZE_CHECK_S`) are submitted at a time, so the client's and
    the scheduler's memory do not grow with the number of units (a long stack is many
    units); ``arguments`` is drawn from only as calls are submitted (it may be a
    generator that opens inputs). A call that did not finish (failed, or cancelled by the
    scheduler) yields its exception (:func:`unit_failure`). A call for which ``skip(a)``
    is true when its turn to be submitted comes is not submitted (e.g. the other units
    of an input that failed).
    """
    # a generator: skip(a) is asked when the call's turn to be submitted comes
    waiting = (a for a in arguments if not skip(a))
    running = as_completed()
    arguments_of: dict[str, tuple] = {}
    limit, asked_at = 0, -math.inf

    def submit_more() -> None:
        nonlocal limit, asked_at
        if time.monotonic() - asked_at >= CLUSTER_SIZE_CHECK_S:  # a round trip each
            limit, asked_at = units_in_flight(sum(client.nthreads().values())), time.monotonic()
        while running.count() < limit and (call := next(waiting, None)) is not None:
            future = client.submit(function, *call, pure=False)
            arguments_of[future.key] = call
            running.add(future)

    try:
        submit_more()
        for future in running:
            call = arguments_of.pop(future.key)
            if future.status == "finished":
                yield call, future.result()
            else:
                yield call, unit_failure(future)
            future.release()
            submit_more()
    finally:  # closed early (interrupted): the calls still queued or running are not wanted
        client.cancel(list(running.futures))
