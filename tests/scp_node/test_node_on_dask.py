"""Issue 9: the node's processing on a Dask cluster (a real scheduler and two workers on
127.0.0.1, the conftest's dask_cluster), with the same pixels as in the node's own process."""

from __future__ import annotations

import pytest

import numpy as np
import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from scp_node.config import load
from scp_node.node import Node
from tests.conftest import SAMPLES, derived_images, wait_until


pytestmark = pytest.mark.slow  # real peers and processes: the full suite, not the fast tier


def test_the_node_processes_on_the_cluster(dask_cluster, tmp_path, pipe):
    node = Node(load(None, port=0, data_dir=str(tmp_path / "node"), study_quiet_s=1.0, batch_wait_s=0.2,
                     dask=dask_cluster), pipe)
    node.start()
    try:
        ae = AE(ae_title="MODALITY")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=node.cfg.ae_title)
        for name in ("ct_phantom_1.dcm", "ct_phantom_2.dcm"):
            assert assoc.send_c_store(pydicom.dcmread(SAMPLES / name)).Status == 0
        assoc.release()
        wait_until(lambda: node.counters.snapshot()["processed"] == 2, timeout=120, what="processed on the cluster")
        assert node.worker.engine.name == "dask"
        files = derived_images(node.cfg.output_dir)
        assert len(files) == 2
        local = pipe.run([pipe.prepare(pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm"), "x", quality=node.cfg.quality)])[0]
        remote = [pydicom.dcmread(f) for f in files if pydicom.dcmread(f).SourceImageSequence[0].ReferencedSOPInstanceUID
                  == pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm").SOPInstanceUID][0]
        assert np.array_equal(remote.pixel_array, local.dataset.pixel_array)
        wait_until(lambda: any(node.cfg.output_dir.rglob("report.json")), timeout=60, what="the study report")
        assert len(node.store.entries()) == 2
    finally:
        node.stop()


def test_only_a_dead_worker_counts_as_a_lost_worker():
    """Review: a scheduler outage or a model that fails to load must leave the batch spooled
    (retried for ever); only a worker process that died on it makes the driver isolate the
    instance that killed it. Each engine says which of its failures lost a worker."""
    from concurrent.futures.process import BrokenProcessPool

    from distributed import KilledWorker

    from dicom_cae.engines.dask import DaskEngine
    from dicom_cae.engines.local import Processes

    dask, local = object.__new__(DaskEngine), object.__new__(Processes)  # no cluster or pool needed to ask
    assert dask.lost_worker(KilledWorker("task", "worker", 3)) and local.lost_worker(BrokenProcessPool("died"))
    for engine in (dask, local):
        assert not engine.lost_worker(OSError("scheduler unreachable"))
        assert not engine.lost_worker(TimeoutError())
