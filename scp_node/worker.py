"""Processing off the network path: spooled instances in batches through the dicom_cae pipeline."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_cae import io, pipeline
from dicom_cae.convert import output_path, safe_uid_name
from dicom_cae.errors import DicomInputError, NotAnImageError
from dicom_cae.pipeline import Pipeline, Prepared
from scp_node.config import Config
from scp_node.monitor import Counters
from dicom_cae.io import fsync_dir
from scp_node.spool import Spool
from scp_node.state import State

LOGGER = logging.getLogger(__name__)


class Worker(threading.Thread):
    """Takes instances from the spool (across associations), up to a batch or a short wait,
    runs them through the pipeline and writes the derived instances to the output store.

    An instance leaves the spool only after its outcome is on disk; a crash before that
    means it is processed again at the next start, into the same (deterministic) output file.
    """

    def __init__(self, cfg: Config, spool: Spool, state: State, pipe: Pipeline, counters: Counters) -> None:
        super().__init__(name="worker", daemon=True)
        self.cfg, self.spool, self.state, self.pipe, self.counters = cfg, spool, state, pipe, counters
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self.idle = threading.Event()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="prepare")
        self.target = (
            pipeline.Target(cfg.target_psnr, cfg.target_ssim) if cfg.target_psnr or cfg.target_ssim else None
        )

    def stop(self) -> None:
        """Finish the batch in hand, then return from run()."""
        self._stopping.set()
        self.wake.set()

    def run(self) -> None:
        # Receiving comes first: on a busy machine the network path must not wait for the model.
        # Threads are scheduled entities on Linux, and the ones this thread starts (the model's
        # thread pool included) inherit its niceness.
        if hasattr(os, "setpriority"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
            except OSError:
                LOGGER.debug("could not lower the worker's priority")
        while not self._stopping.is_set():
            batch = self._next_batch()
            if batch:
                self.idle.clear()
                try:
                    self.process(batch)
                except Exception:  # a model failure must not kill the node; files stay spooled
                    LOGGER.exception("batch of %d failed; retrying in 5 s", len(batch))
                    self._stopping.wait(5)
        self._pool.shutdown()

    def _next_batch(self) -> list[Path]:
        while not self._stopping.is_set():
            files = self.spool.pending()
            if len(files) >= self.cfg.batch_size:
                return files[: self.cfg.batch_size]
            if files:
                waited = time.time() - Spool.received_at(files[0])
                if waited >= self.cfg.batch_wait_s:
                    return files
                self.wake.wait(self.cfg.batch_wait_s - waited)
            else:
                self.idle.set()
                self.wake.wait(0.5)
            self.wake.clear()
        return []

    def _load(self, path: Path) -> tuple[Dataset | None, Prepared | Exception]:
        try:
            ds = io.read(path)
        except DicomInputError as exc:
            return None, exc
        try:
            if self.target is not None:
                return ds, self.pipe.prepare_for_target(ds, str(path), self.target)
            return ds, pipeline.prepare(ds, str(path), quality=self.cfg.quality)
        except (DicomInputError, ValueError) as exc:
            return ds, exc

    def process(self, files: list[Path]) -> None:
        loaded = list(self._pool.map(self._load, files))
        images: list[tuple[Path, Prepared]] = []
        for path, (ds, result) in zip(files, loaded):
            if isinstance(result, Prepared):
                images.append((path, result))
            elif isinstance(result, NotAnImageError) and ds is not None:
                self._keep(path, ds, result.reason)
            else:
                self._fail(path, ds, str(getattr(result, "reason", result)))
        if not images:
            return
        recon = self.pipe.reconstruct([p for _, p in images])

        def finish(item: tuple[tuple[Path, Prepared], object]) -> None:
            (path, prep), r = item
            ds = prep.dataset
            try:
                derived = self.pipe.finish(prep, r)
                d = derived.dataset
                out = output_path(self.cfg.output_dir, d.StudyInstanceUID, d.SeriesInstanceUID, d.SOPInstanceUID)
                io.write(d, out, durable=True)  # the spool copy goes once this returns
            except Exception as exc:  # an instance we cannot write must not block the others
                LOGGER.exception("processing SOP Instance %s failed", ds.get("SOPInstanceUID"))
                self._fail(path, ds, f"{type(exc).__name__}: {exc}")
                return
            self.state.record(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), "processed", output=str(out))
            self.counters.add("processed")
            self.counters.observe_latency(time.time() - Spool.received_at(path))
            LOGGER.info("processed SOP Instance %s -> %s", ds.SOPInstanceUID, d.SOPInstanceUID)
            self.spool.remove(path)

        list(self._pool.map(finish, zip(images, recon)))

    def _copy_aside(self, path: Path, folder: Path, ds: Dataset | None) -> Path:
        study = safe_uid_name(ds.get("StudyInstanceUID")) if ds is not None else "unknown"
        sop = safe_uid_name(ds.get("SOPInstanceUID")) if ds is not None else path.stem
        dest = folder / study / f"{sop}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.tmp")
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return dest

    def _keep(self, path: Path, ds: Dataset, reason: str) -> None:
        dest = self._copy_aside(path, self.cfg.kept_dir, ds)
        self.state.record(str(ds.SOPInstanceUID), str(ds.get("StudyInstanceUID", "")), "kept", reason=reason, output=str(dest))
        self.counters.add("kept")
        LOGGER.warning("not processed, kept as received: SOP Instance %s: %s", ds.SOPInstanceUID, reason)
        self.spool.remove(path)

    def _fail(self, path: Path, ds: Dataset | None, reason: str) -> None:
        dest = self._copy_aside(path, self.cfg.failed_dir, ds)
        dest.with_suffix(".txt").write_text(reason + "\n")
        sop = str(ds.get("SOPInstanceUID", path.name)) if ds is not None else path.name
        self.state.record(sop, str(ds.get("StudyInstanceUID", "")) if ds is not None else "", "failed", reason=reason, output=str(dest))
        self.counters.add("failed")
        LOGGER.error("failed: SOP Instance %s: %s", sop, reason)
        self.spool.remove(path)
