"""The engines of one machine: this process (threads) and a local pool of processes."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from dicom_cae.engines import Engine
from dicom_cae.runner import Settings, pipeline_for

LOGGER = logging.getLogger(__name__)


class InProcess(Engine):
    """This process: two batches at a time in threads (one's model call while the other's CPU
    stages run); the model is the one loaded here."""

    name = "in-process"

    def __init__(self, settings: Settings | None = None, *, threads: int = 2) -> None:
        self.threads = threads
        self.slots = 2
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="batch")

    def submit(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown()


def _leave_with_parent() -> None:
    """End this worker process when the process that started it is gone (SIGKILLed: a pool's
    workers wait on a queue that never closes, and would stay for ever, each with a model)."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start_process(settings: Settings, intra_threads: int, nice: int = 0) -> None:
    _leave_with_parent()
    # Ctrl-C in a terminal reaches the whole process group: the process that owns the pool
    # decides what stops (the batches running finish), not each worker on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if nice:
        os.nice(nice)  # the node's receiving comes first
    # Before TensorFlow starts: N processes on a few cores must not each start a thread per core.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(intra_threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pipeline_for(settings)


class Processes(Engine):
    """A local pool of ``workers`` processes, each with the model loaded once (spawned, so that
    no process inherits another's TensorFlow state)."""

    name = "processes"

    def __init__(self, settings: Settings, *, workers: int, nice: int = 0) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.slots, self.threads = 2 * workers, 1
        self.n, self._settings, self._nice = workers, settings, nice
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        import multiprocessing

        intra = max(1, (os.cpu_count() or 1) // self.n)
        pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_process, initargs=(self._settings, intra, self._nice))
        # Start the processes now and load the model (the initializer): the work that follows
        # does not wait for it (a task runs only once its process's initializer has returned).
        for f in [pool.submit(os.getpid) for _ in range(self.n)]:
            f.result()
        return pool

    def submit(self, fn, *args, **kwargs):
        try:
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:  # a process died (memory, a crashing decoder): a new pool
            LOGGER.error("a worker process died; starting the pool again")
            self._pool.shutdown(wait=False)
            self._pool = self._start()
            return self._pool.submit(fn, *args, **kwargs)

    def lost_worker(self, exc: BaseException) -> bool:
        return isinstance(exc, BrokenProcessPool)

    def close(self) -> None:
        self._pool.shutdown()
