"""The runner's one batch driver (runner.Driver), as convert and the node use it: a batch
that fails as a whole, a lost worker, a full disk, each as the caller's Policy says."""

from __future__ import annotations

from concurrent.futures import Future
from concurrent.futures.process import BrokenProcessPool

import pytest

from dicom_cae import engines, runner
from dicom_cae.engines.local import InProcess
from dicom_cae.errors import DicomInputError
from tests.conftest import SAMPLES

CT = [str(SAMPLES / f"ct_phantom_{i}.dcm") for i in (1, 2, 3)]


class FailingBatches(InProcess):
    """A real in-process engine whose batches of more than one file fail with ``exc`` before
    they run (as a worker process that dies, or a scheduler that is gone, makes them fail);
    a file alone runs. ``lost_worker`` as the local process pool says it."""

    def __init__(self, settings, exc: BaseException) -> None:
        super().__init__(settings, threads=1)
        self.exc, self.sizes = exc, []

    def submit(self, fn, settings, paths, *args, **kwargs):
        self.sizes.append(len(paths))
        if len(paths) > 1:
            f: Future = Future()
            f.set_exception(self.exc)
            return f
        return super().submit(fn, settings, paths, *args, **kwargs)

    def lost_worker(self, exc: BaseException) -> bool:
        return isinstance(exc, BrokenProcessPool)


def _run(driver: runner.Driver, paths: list[str]) -> list[runner.Outcome]:
    got: list[runner.Outcome] = []
    driver.run([paths], lambda _, out: got.extend(out))
    return got


def test_convert_runs_a_batch_that_lost_its_worker_file_by_file(pipe, tmp_path):
    settings = runner.Settings.of(pipe, quality=10)
    with FailingBatches(settings, BrokenProcessPool("a worker died")) as engine:
        got = _run(runner.Driver(engine, settings, tmp_path, runner.CONVERT), CT)
    assert [o.kind for o in got] == [runner.WRITTEN] * 3
    assert engine.sizes == [3, 1, 1, 1]


def test_the_node_tries_a_batch_that_lost_its_worker_again_then_file_by_file(pipe, tmp_path):
    settings = runner.Settings.of(pipe, quality=10)
    with FailingBatches(settings, BrokenProcessPool("a worker died")) as engine:
        driver = runner.Driver(engine, settings, tmp_path, runner.SERVICE)
        for _ in range(runner.SERVICE.tries):  # stays queued, a few times
            with pytest.raises(runner.Deferred):
                _run(driver, CT)
        got = _run(driver, CT)
    assert [o.kind for o in got] == [runner.WRITTEN] * 3
    assert engine.sizes == [3] * (runner.SERVICE.tries + 1) + [1, 1, 1]


def test_the_node_keeps_a_batch_queued_while_the_engine_is_out_however_often(pipe, tmp_path):
    """A scheduler outage is not a lost worker: the node never fails instances for it."""
    settings = runner.Settings.of(pipe, quality=10)
    with FailingBatches(settings, OSError("scheduler unreachable")) as engine:
        driver = runner.Driver(engine, settings, tmp_path, runner.SERVICE)
        for _ in range(runner.SERVICE.tries + 3):
            with pytest.raises(runner.Deferred):
                _run(driver, CT)
    assert set(engine.sizes) == {3}


def test_a_full_disk_is_not_reported_as_bad_input(pipe, tmp_path, small_volume):
    """convert on a full output volume: each instance fails for the disk, not for its content
    (errors.tsv's cause column says so), and the node's policy keeps them queued."""
    point, fill, free = small_volume
    out = point / "out"
    out.mkdir()
    fill()
    settings = runner.Settings.of(pipe, quality=10)
    with engines.create("in-process", settings) as engine:
        got = _run(runner.Driver(engine, settings, out, runner.CONVERT), CT[:2])
        assert [o.kind for o in got] == [runner.FAILED] * 2
        assert all(o.error.cause == "disk" and o.error.stage == "write" for o in got), [o.error for o in got]
        assert not any(isinstance(o.error, DicomInputError) for o in got)
        with pytest.raises(runner.Deferred):
            _run(runner.Driver(engine, settings, out, runner.SERVICE), CT[:2])
        free()
        got = _run(runner.Driver(engine, settings, out, runner.SERVICE), CT[:2])
    assert [o.kind for o in got] == [runner.WRITTEN] * 2


def test_an_engine_is_found_by_its_entry_point_name(pipe):
    settings = runner.Settings.of(pipe, quality=10)
    assert {"in-process", "processes", "dask"} <= set(engines.available())
    with engines.create("in-process", settings, threads=3) as engine:
        assert engine.threads == 3
    with pytest.raises(ValueError, match="no engine called 'ray'"):
        engines.create("ray", settings)


def test_one_instance_whose_reconstruction_fails_fails_alone(pipe):
    """The model over a batch fails because of one instance: each is then run alone; the one
    that fails is failed (as reconstruction), the others are reconstructed as in the batch."""
    import dataclasses

    import numpy as np

    from dicom_cae import io, pipeline

    good = [pipeline.prepare(io.read(p), p, quality=10) for p in CT[:2]]
    bad = dataclasses.replace(good[0], jpeg=np.zeros((1, 100, 100), np.float32))  # no 256x256 frame: the model refuses it
    out = runner._reconstruct(pipe, [good[0], bad, good[1]])
    assert isinstance(out[1], Exception) and not isinstance(out[0], Exception) and not isinstance(out[2], Exception)
    alone = pipe.reconstruct([good[0]])[0]
    assert np.array_equal(out[0], alone)
    with pytest.raises(runner.SystemicError, match="reconstruct"):
        runner._reconstruct(pipe, [bad, bad])  # every one fails alike: the batch as a whole


def test_a_ctrl_c_inside_the_callers_take_does_not_take_that_batch_twice(pipe, tmp_path):
    """Review of issue 17: Ctrl-C arriving while the caller handles a batch's outcomes (its
    `take`) made the driver hand the same batch to `take` again (counted twice in convert's
    summary). Each batch is taken at most once; the ones still in flight are taken."""
    settings = runner.Settings.of(pipe)
    with InProcess(settings, threads=1) as engine:
        driver = runner.Driver(engine, settings, tmp_path, runner.CONVERT)
        calls: list[list[str]] = []

        def take(paths: list[str], outcomes: list[runner.Outcome]) -> None:
            calls.append(list(paths))
            assert [o.kind for o in outcomes] == [runner.WRITTEN] * len(paths)
            if len(calls) == 1:
                raise KeyboardInterrupt  # as a Ctrl-C in the middle of the caller's bookkeeping

        assert driver.run([[p] for p in CT], take) is False
    assert calls[0] == [CT[0]] and len(calls) == len({tuple(c) for c in calls}), calls
