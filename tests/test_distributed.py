"""Batch analysis on a local Dask cluster: same results, lost workers, bad inputs."""

import json
import os
import threading

import imageio.v3 as iio
import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_bloodcell import batch
from napari_bloodcell.batch import analyze_files
from napari_bloodcell.pipeline import AnalysisSettings
from napari_bloodcell.synthetic import make_smear, make_timelapse

from .test_lazy_reading import corrupt_page

distributed = pytest.importorskip("distributed")

KEY = ["source", "frame", "label"]


@pytest.fixture(scope="module")
def client():
    from napari_bloodcell.distributed import available_cores, open_client

    with open_client(workers=min(2, available_cores())) as client:  # (2 on the CI's machine)
        yield client


def test_more_local_workers_than_cores_are_refused_before_a_cluster_starts(monkeypatch):
    """--workers had no upper bound: a thousand local processes, each loading the CNN,
    froze the machine (one thread each: beyond the cores they only compete)."""
    from napari_bloodcell import distributed as ours
    from napari_bloodcell.errors import BloodcellError

    monkeypatch.setattr(ours, "LocalCluster", None)  # none may start
    cores = ours.available_cores()
    refused = pytest.raises(BloodcellError, match=f"this machine has {cores} CPU core")
    with refused, ours.open_client(workers=cores + 1):
        pass


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two smear frames (classified by the CNN) and two short fluorescence stacks."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = []
    for seed in (1, 2):
        paths.append(folder / f"smear{seed}.png")
        iio.imwrite(
            paths[-1],
            make_smear(shape=(240, 320), n_rbc=6, n_wbc=1, n_platelets=3, seed=seed + 3).image,
        )
        paths.append(folder / f"movie{seed}.tif")
        tifffile.imwrite(
            paths[-1],
            make_timelapse(n_frames=5, shape=(64, 96), seed=seed).image,
            metadata={"axes": "TYXS"},
        )
    return paths


def sorted_table(out) -> pd.DataFrame:
    return pd.read_csv(out / "cells.csv").sort_values(KEY).reset_index(drop=True)


def assert_same_results(out_a, out_b, stems) -> None:
    pd.testing.assert_frame_equal(sorted_table(out_a), sorted_table(out_b))
    for stem in stems:
        np.testing.assert_array_equal(
            tifffile.imread(out_a / "labels" / f"{stem}.tif"),
            tifffile.imread(out_b / "labels" / f"{stem}.tif"),
        )


def test_a_cluster_gives_the_in_process_results_loading_the_model_once_per_worker(
    tmp_path, client, inputs, tiny_model
):
    kwargs = {"model": tiny_model, "frames_per_unit": 2}
    here = analyze_files(inputs, tmp_path / "here", AnalysisSettings(), **kwargs)
    there = analyze_files(inputs, tmp_path / "there", AnalysisSettings(), client=client, **kwargs)
    assert here.failures == there.failures == {}
    assert len(there.table) == len(here.table) > 0
    assert there.table["p_lobed"].notna().any()  # the CNN ran on the workers
    assert_same_results(tmp_path / "here", tmp_path / "there", [p.stem for p in inputs])
    assert not (tmp_path / "there" / ".parts").exists()
    loads = client.run(lambda: batch.cached_classifier.cache_info().misses)
    assert set(loads.values()) <= {0, 1} and sum(loads.values()) >= 1
    threads = client.run(lambda: os.environ.get("TF_NUM_INTRAOP_THREADS"))
    assert set(threads.values()) == {"1"}
    run = json.loads((tmp_path / "there" / "run.json").read_text())
    assert run["dask"]["workers"] == 2


def test_a_network_that_does_not_load_stops_a_cluster_run_before_it_starts(
    tmp_path, client, inputs, tiny_model
):
    """On a cluster the network was first loaded by the units: every input failed with
    the same error, after its frames were read."""
    from napari_bloodcell.errors import ModelError

    from .helpers import model_copy

    broken = model_copy(tiny_model, tmp_path, input_size=48)  # the network takes 32 px
    with pytest.raises(ModelError, match="does not match its metadata"):
        analyze_files(inputs, tmp_path / "out", AnalysisSettings(), model=broken, client=client)
    assert not (tmp_path / "out" / "tables").exists()


class KillWorkerOnce(distributed.WorkerPlugin):
    """Makes the first unit of work run on any worker kill that worker's process."""

    name = "kill-worker-once"

    def __init__(self, marker):
        self.marker = str(marker)

    def setup(self, worker):
        self.original = batch.analyze_unit

        def analyze_unit_or_die(chunk, job):
            if not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
            return self.original(chunk, job)

        batch.analyze_unit = analyze_unit_or_die

    def teardown(self, worker):
        batch.analyze_unit = self.original


def test_a_killed_worker_is_survived(tmp_path, client, inputs):
    marker = tmp_path / "killed"
    client.register_plugin(KillWorkerOnce(marker))
    try:
        there = analyze_files(
            inputs, tmp_path / "there", AnalysisSettings(), model=None, client=client
        )
    finally:
        client.unregister_worker_plugin(KillWorkerOnce.name)
    assert marker.exists()  # a worker died mid-run
    assert there.failures == {} and len(there.processed) == len(inputs)
    analyze_files(inputs, tmp_path / "here", AnalysisSettings(), model=None)
    assert_same_results(tmp_path / "here", tmp_path / "there", [p.stem for p in inputs])


def test_bad_inputs_fail_alone_on_the_cluster(tmp_path, client, inputs):
    unreadable = tmp_path / "unreadable.tif"
    unreadable.write_bytes(b"II*\x00 not really a tiff")
    corrupt = tmp_path / "corrupt.tif"
    tifffile.imwrite(
        corrupt,
        # dark noise: a fluorescence-like stack (a bright grey one is refused as a smear)
        np.random.default_rng(0).integers(0, 60, (40, 64, 64), np.uint8),
        compression="zlib",
    )
    corrupt_page(corrupt, 37)  # not in the intensity sample: found by a worker
    out = tmp_path / "out"
    summary = analyze_files(
        [unreadable, corrupt, *inputs], out, AnalysisSettings(), model=None, client=client
    )
    assert set(summary.failures) == {str(unreadable), str(corrupt)}
    assert "page 37 cannot be read" in summary.failures[str(corrupt)]
    assert "unreadable.tif" in summary.failures[str(unreadable)]
    assert set(summary.processed) == {str(p) for p in inputs}
    assert set(pd.read_csv(out / "cells.csv")["source"]) == {p.name for p in inputs}
    assert not (out / "labels" / "corrupt.tif").exists()
    assert not (out / ".parts").exists()


def _square(x: int) -> int:
    return x * x


def test_units_are_submitted_a_bounded_number_at_a_time(client, monkeypatch):
    from napari_bloodcell import distributed as on_cluster

    threads = sum(client.nthreads().values())
    backlog = on_cluster.TASKS_PER_THREAD * threads + 1
    monkeypatch.setattr(on_cluster, "MIN_UNITS_IN_FLIGHT", backlog)
    in_flight = []
    results = {}
    held_before = len(client.futures)  # by earlier tests on this module's client
    for (i,), result in on_cluster.compute_on_cluster(
        _square, [(i,) for i in range(12)], client, skip=lambda call: call == (5,)
    ):
        in_flight.append(len(client.futures) - held_before)
        results[i] = result
    assert results == {i: i * i for i in range(12) if i != 5}  # 5 was skipped, not run
    assert max(in_flight) == backlog < 12


def test_the_cluster_is_not_asked_its_size_for_every_unit(client, monkeypatch):
    """Each count of the threads is a round trip to the scheduler: one per finished unit
    made thousands on an archive, and Ctrl-C landing in one made distributed log an error."""
    from napari_bloodcell import distributed as on_cluster

    asked = []
    nthreads = client.nthreads
    monkeypatch.setattr(client, "nthreads", lambda: asked.append(1) or nthreads())
    monkeypatch.setattr(on_cluster, "MIN_UNITS_IN_FLIGHT", 2)
    monkeypatch.setattr(on_cluster, "TASKS_PER_THREAD", 0)
    results = dict(on_cluster.compute_on_cluster(_square, [(i,) for i in range(20)], client,
                                                 skip=lambda c: False))  # fmt: skip
    assert len(results) == 20 and len(asked) < 20 / 2


def test_units_are_drawn_from_their_generator_only_as_they_are_submitted(client, monkeypatch):
    """A batch opens each input when its units' turn comes: the cluster must not drain
    the generator of units before the first one finishes."""
    from napari_bloodcell import distributed as on_cluster

    monkeypatch.setattr(on_cluster, "MIN_UNITS_IN_FLIGHT", 3)
    monkeypatch.setattr(on_cluster, "TASKS_PER_THREAD", 0)
    drawn = []

    def calls():
        for i in range(10):
            drawn.append(i)
            yield (i,)

    results = on_cluster.compute_on_cluster(_square, calls(), client, skip=lambda c: False)
    first = next(results)
    assert len(drawn) == 3 and first[0] in [(0,), (1,), (2,)]
    assert sorted(i for (i,), _ in [first, *results]) == list(range(10))


def test_a_few_units_per_worker_thread_are_in_flight_and_a_backlog_for_scaling_up():
    from napari_bloodcell.distributed import (
        MIN_UNITS_IN_FLIGHT,
        TASKS_PER_THREAD,
        units_in_flight,
    )

    assert units_in_flight(0) == units_in_flight(1) == MIN_UNITS_IN_FLIGHT >= 16
    many = MIN_UNITS_IN_FLIGHT
    assert units_in_flight(many) == TASKS_PER_THREAD * many > MIN_UNITS_IN_FLIGHT


UNIT_ZERO: dict = {}
"""The running unit 0 of the cancellation test: its task key, and its events."""


def _hold_unit_zero(i: int) -> int:
    """Unit 0 waits (its key known) until released; the others return at once."""
    if i == 0:
        UNIT_ZERO["key"] = distributed.get_worker().get_current_task()
        UNIT_ZERO["started"].set()
        UNIT_ZERO["released"].wait(30)
    return i


def test_a_unit_cancelled_by_the_scheduler_fails_alone():
    from napari_bloodcell.distributed import compute_on_cluster
    from napari_bloodcell.errors import BloodcellError

    UNIT_ZERO.update(started=threading.Event(), released=threading.Event())

    def cancel_unit_zero(client) -> None:
        UNIT_ZERO["started"].wait(30)
        client.cancel([distributed.Future(UNIT_ZERO["key"], client)])
        UNIT_ZERO["released"].set()

    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        canceller = threading.Thread(target=cancel_unit_zero, args=(client,))
        canceller.start()
        units = [(i,) for i in range(4)]
        calls = compute_on_cluster(_hold_unit_zero, units, client, skip=lambda c: False)
        results = {i: result for (i,), result in calls}
        canceller.join()
    assert {i: results[i] for i in (1, 2, 3)} == {1: 1, 2: 2, 3: 3}
    assert isinstance(results[0], BloodcellError)
    assert "cancelled by the Dask scheduler" in str(results[0])


@pytest.mark.parametrize("address", ["nonsense", "tcp://10.0.0.5:port", "ftp://host:8786"])
def test_a_malformed_scheduler_address_is_a_clear_error(address):
    from napari_bloodcell.distributed import open_client
    from napari_bloodcell.errors import BloodcellError

    with (
        pytest.raises(BloodcellError, match="is not a Dask scheduler address"),
        open_client(scheduler=address),
    ):
        pass


def test_addresses_of_every_dask_transport_pass_the_check():
    from napari_bloodcell.distributed import check_scheduler_address

    for address in ("tcp://10.0.0.5:8786", "localhost:8786", "tls://h:1", "inproc://10.0.0.1/1/1"):
        check_scheduler_address(address)


def _worker_log_keeps(message: str) -> bool:
    import logging

    record = logging.LogRecord("distributed.worker", logging.ERROR, "", 0, message, (), None)
    return bool(logging.getLogger("distributed.worker").filter(record))


def test_local_workers_drop_only_heartbeat_failures_from_their_logs(client):
    """The scheduler of a local cluster closes with the client: a worker whose heartbeat
    was under way logged an error with a traceback at the end of an interrupted run."""
    kept = client.run(_worker_log_keeps, "Failed to communicate with scheduler during heartbeat.")
    assert not any(kept.values())
    assert all(client.run(_worker_log_keeps, "Unexpected exception during heartbeat.").values())
