"""Dask distributed as the scale-out engine: batches of the runner on an existing cluster.

A site starts a scheduler and workers (``dask scheduler``, ``dask worker tcp://HOST:8786
--nworkers N --nthreads 1``) on machines that have dicom-cae installed and see the input and
output folders at the same paths; ``dicom-cae convert SRC DST --dask tcp://HOST:8786`` then
runs there. Each worker loads the model once, when it joins (``ModelPlugin``), and keeps it.
"""

from __future__ import annotations

import hashlib

from distributed import Client, WorkerPlugin
from distributed.scheduler import KilledWorker

from dicom_cae.engines import Engine
from dicom_cae.runner import Settings, pipeline_for


class ModelPlugin(WorkerPlugin):
    """Loads the model for ``settings`` on each worker, once, as it joins the cluster."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def setup(self, worker) -> None:  # noqa: ANN001 (distributed.Worker)
        pipeline_for(self.settings)


class DaskEngine(Engine):
    """Batches on the Dask cluster whose scheduler is at ``address`` (tcp://HOST:PORT)."""

    name = "dask"
    threads = 1

    def __init__(self, settings: Settings, *, address: str, timeout: float = 30) -> None:
        self.client = Client(address, timeout=timeout, set_as_default=False)
        key = hashlib.sha256(repr(settings.model_key).encode()).hexdigest()[:12]
        self.client.register_plugin(ModelPlugin(settings), name=f"dicom-cae-model-{key}")  # once per model
        workers = self.client.scheduler_info().get("workers", {})
        threads = sum(int(w.get("nthreads", 1)) for w in workers.values()) or 1
        self.slots = 2 * threads
        self.address = address

    def submit(self, fn, *args, **kwargs):
        return self.client.submit(fn, *args, pure=False, **kwargs)

    def lost_worker(self, exc: BaseException) -> bool:
        return isinstance(exc, KilledWorker)  # the task killed the workers it ran on

    def close(self) -> None:
        self.client.close()
