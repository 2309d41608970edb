"""Processing off the network path: spooled instances in batches through the dicom_cae pipeline."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from dicom_cae import engines, io, pipeline, runner
from dicom_cae.errors import DicomInputError, InstanceError
from dicom_cae.identity import Identity, identify, printable, safe_name
from dicom_cae.pipeline import Pipeline
from dicom_cae.store import Entry, Store
from scp_node.config import Config
from scp_node.monitor import Counters, Problems
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

    def __init__(self, cfg: Config, spool: Spool, state: State, pipe: Pipeline, counters: Counters,
                 store: Store | None = None, engine: engines.Engine | None = None) -> None:
        super().__init__(name="worker", daemon=True)
        self.cfg, self.spool, self.state, self.pipe, self.counters = cfg, spool, state, pipe, counters
        self.store = store or Store(cfg.output_dir)
        self.wake = threading.Event()
        self._stopping = threading.Event()
        self.idle = threading.Event()
        self.last_error: tuple[float, str] | None = None  # (since, what) while batches fail
        self.problems = Problems()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="prepare")
        self.target = (
            pipeline.Target(cfg.target_psnr, cfg.target_ssim, cfg.target_on) if cfg.target_psnr or cfg.target_ssim
            else pipeline.RatioTarget(cfg.target_ratio) if cfg.target_ratio else None
        )
        if (pipe.mapping, pipe.batch_size) != (cfg.value_mapping, cfg.batch_size):  # the configuration decides
            pipe = Pipeline(pipe.reconstructor, batch_size=cfg.batch_size, mapping=cfg.value_mapping)
        self.settings = runner.Settings.of(pipe, quality=cfg.quality, target=self.target)
        self.pipe = runner.pipeline_for(self.settings)  # the one this process runs these settings with
        self.engine = engine or engines.engine_for(self.settings, workers=cfg.workers, dask=cfg.dask, nice=10)
        self.driver = runner.Driver(self.engine, self.settings, self.store.root, runner.SERVICE)

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
                    self.last_error = None
                except Exception as exc:  # noqa: BLE001 (the model or the disk: the files stay spooled)
                    since = self.last_error[0] if self.last_error else time.time()
                    self.last_error = (since, f"{type(exc).__name__}: {exc}")
                    self.problems.note(f"processing fails, the batch stays in the spool and is tried again every 5 s: "
                                       f"{type(exc).__name__}: {exc}", exc)
                    self._stopping.wait(5)
        self._pool.shutdown()
        self.engine.close()

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

    def _screen(self, path: Path) -> Loaded:
        """Read and name one spooled instance and digest what it holds; never raises (what
        fails is the result). The pixels are prepared by the runner, not here."""
        try:
            ds = io.read(path)
        except Exception as exc:  # noqa: BLE001 (read it again without pixels, to name it at least)
            try:
                ds = io.read(path, pixels=False)
            except Exception:  # noqa: BLE001
                ds = None
            return Loaded(path, _identity(ds, path), _input_error(path, exc), "")
        try:
            ident = identify(ds, f"SOP Instance in {path.name}")
        except DicomInputError as exc:
            return Loaded(path, None, exc, "")
        return Loaded(path, ident, None, _content_digest(ds, path))

    def process(self, files: list[Path]) -> None:
        """Process one batch on the runner. An instance's own problem sends it to failed/ (or
        kept/); only a failure that hits every instance alike (the model, the disk) propagates,
        leaving the batch spooled for a later try."""
        digests: dict[str, str] = {}  # SOP Instance UID -> digest, in this batch
        todo: list[Loaded] = []
        for item in self._pool.map(self._screen, files):
            if item.identity is not None and item.digest:
                sop = item.identity.sop_instance
                earlier = digests.get(sop) or self.state.digest(sop, ("processed", "kept"))
                if earlier == item.digest:
                    self._resent(item)
                    continue
                if earlier is not None:
                    self._conflict(item)
                    continue
                digests[sop] = item.digest
            if item.result is not None:
                reason = getattr(item.result, "reason", None) or f"{type(item.result).__name__}: {item.result}"
                self._fail(item, reason, item.result if isinstance(item.result, InstanceError) else None)
            else:
                todo.append(item)
        if not todo:
            return
        paths = [str(i.path.resolve()) for i in todo]  # a Dask worker may run in another folder
        outcomes: list[runner.Outcome] = []
        # runner.SERVICE: a batch that fails as a whole stays spooled (Deferred propagates to
        # run(), which tries again in 5 s): the model and the disk for ever; a batch that fails
        # alike while prepared, or kills its worker, a few times, then its instances on their own.
        self.driver.run([paths], lambda _, out: outcomes.extend(out))
        for item, o in zip(todo, outcomes):
            if o.kind == runner.WRITTEN:
                out = self.store.root / o.output
                # Indexed and recorded before the spool copy goes: a crash in between processes it again.
                self.store.add([Entry(o.derived[1], o.derived[0], item.identity.study, item.name, item.path.name, o.output)])
                self.state.record(item.name, item.identity.study, "processed", output=str(out), digest=item.digest)
                self.counters.add("processed")
                self.counters.observe_latency(time.time() - Spool.received_at(item.path))
                for warning in o.warnings:
                    self.counters.add("warnings")
                    LOGGER.warning("SOP Instance %s: %s", printable(item.name), warning)
                LOGGER.info("processed SOP Instance %s -> %s", printable(item.name), o.derived[1])
                self._keep_original(item)
            elif o.kind == runner.NOT_IMAGE:
                self._keep(item, o.error.reason if o.error else "not an image")
            elif o.kind == runner.FAILED:
                self._fail(item, o.error.reason if o.error else "failed", o.error)
            else:  # the same instance twice in the batch: done once
                self._resent(item)

    def _keep_original(self, item: Loaded) -> None:
        """The processed original leaves the spool for originals/<study>/ (a rename), where its
        study's report shows it beside the derived image; the report removes the folder."""
        dest = self.cfg.originals_dir / safe_name(item.identity.study) / f"{safe_name(item.name)}.dcm"
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item.path, dest)
        except OSError:  # the report shows it without its original then; nothing is lost
            LOGGER.debug("original of %s not kept for the report", printable(item.name))
            self.spool.remove(item.path)

    def _copy_aside(self, item: Loaded, folder: Path, suffix: str = "") -> Path:
        study = safe_name(item.identity.study) if item.identity else "unidentified"
        dest = folder / study / f"{safe_name(item.name)}{suffix}.dcm"
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = io.temporary(dest)
        shutil.copyfile(item.path, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, dest)
        fsync_dir(dest.parent)
        return dest

    def _keep(self, item: Loaded, reason: str) -> None:
        dest = self._copy_aside(item, self.cfg.kept_dir)
        self.state.record(item.name, item.study, "kept", reason=reason, output=str(dest), digest=item.digest)
        self.counters.add("kept")
        LOGGER.warning("not processed, kept as received: SOP Instance %s: %s", printable(item.name), printable(reason, 200))
        self.spool.remove(item.path)

    def _fail(self, item: Loaded, reason: str, error: InstanceError | None = None) -> None:
        dest = self._copy_aside(item, self.cfg.failed_dir)
        cause = f"cause: {error.cause} (stage: {error.stage})" if error is not None else "cause: input (stage: read)"
        io.write_text(f"{reason}\n{cause}\n", dest.with_suffix(".txt"))
        self.state.record(item.name, item.study, "failed", reason=reason, output=str(dest), digest=item.digest)
        self.counters.add("failed")
        LOGGER.error("failed: SOP Instance %s: %s", printable(item.name), printable(reason, 300))
        self.spool.remove(item.path)

    def _resent(self, item: Loaded) -> None:
        """The same instance again (same SOP Instance UID, same pixels): done already."""
        self.counters.add("resent")
        LOGGER.info("SOP Instance %s received again, identical: processed once", printable(item.name))
        self.spool.remove(item.path)

    def _conflict(self, item: Loaded) -> None:
        """Another image under a SOP Instance UID already used: the first stays as it is (as
        Orthanc keeps the first by default); the second is kept aside, logged and counted."""
        dest = self._copy_aside(item, self.cfg.conflicts_dir, f".{item.digest[:12]}")
        self.counters.add("conflicts")
        LOGGER.error(
            "SOP Instance %s received again with other content: the first is kept, the second set aside in %s",
            printable(item.name), dest,
        )
        self.spool.remove(item.path)


@dataclass(frozen=True)
class Loaded:
    """One spooled instance after reading: its identity (None when it cannot be named), the
    error (None: to be processed), and a digest of its content."""

    path: Path
    identity: Identity | None
    result: Exception | None
    digest: str

    @property
    def name(self) -> str:
        """The SOP Instance UID, or the spool file's name for an instance that cannot be named."""
        return self.identity.sop_instance if self.identity else f"unnamed:{self.path.stem}"

    @property
    def study(self) -> str | None:
        return self.identity.study if self.identity else None


def _identity(ds: Dataset | None, path: Path) -> Identity | None:
    if ds is None:
        return None
    try:
        return identify(ds, path.name)
    except DicomInputError:
        return None


def _input_error(path: Path, exc: Exception) -> DicomInputError:
    if isinstance(exc, DicomInputError):
        return exc
    return DicomInputError(path.name, f"{type(exc).__name__}: {exc}")


#: What, besides the pixel bytes, decides the pixels an instance holds (a corrected Rescale
#: Slope is another image, however alike its stored values).
_PIXEL_KEYWORDS = ("Rows", "Columns", "NumberOfFrames", "SamplesPerPixel", "BitsAllocated", "BitsStored",
                   "HighBit", "PixelRepresentation", "PhotometricInterpretation", "RescaleSlope", "RescaleIntercept")


def _content_digest(ds: Dataset | None, path: Path) -> str:
    """A digest of what was received for the image: the Pixel Data bytes as sent and the
    attributes that give them meaning; the whole file when it cannot be read that far."""
    h = hashlib.sha256()
    try:
        if ds is None:
            raise KeyError("no dataset")
        for kw in _PIXEL_KEYWORDS:
            h.update(f"{kw}={ds.get(kw)!s};".encode())
        h.update(bytes(ds["PixelData"].value) if "PixelData" in ds else b"no pixel data")
    except Exception:  # noqa: BLE001 (undecodable attributes: the bytes of the file decide)
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
