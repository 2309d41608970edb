"""The one runner behind ``convert`` and the node: a batch of files through read -> value
mapping + JPEG (CPU) -> the model (batched) -> measure + derive + write (CPU), on an engine.

The unit of work is ``run_batch(settings, paths, root)``: a plain, picklable function of small
frozen values that returns one small ``Outcome`` per file (no pixels). An engine runs such
batches: in this process (threads), in a local pool of processes, or on a Dask cluster (see
dicom_cae.cluster). Each process loads the model once (``pipeline_for``); on Dask a worker
plugin loads it when the worker joins. Errors cross process boundaries intact
(dicom_cae.errors pickles). Everything that decides the output (model, weights, value
mapping, quality or target) is in ``Settings``, so a batch gives the same files wherever it runs.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from dicom_cae import identity, io, private_tags
from dicom_cae import mapping as value_mapping
from dicom_cae.derive import derived_uids
from dicom_cae.errors import DicomCaeError, DicomInputError, ModelError, NotAnImageError, is_resource_error
from dicom_cae.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_QUALITY, Pipeline, Prepared, RatioTarget, Target
from dicom_cae.store import Store

LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class Settings:
    """What decides the output, and how many images go to the model at once."""

    model: str | None = None  # a shipped model's name (None: the default)
    weights: str | None = None  # a weights file instead of the shipped ones (a path every worker can read)
    mapping: str = value_mapping.DEFAULT
    quality: int = DEFAULT_QUALITY
    target: Target | RatioTarget | None = None
    batch_size: int = DEFAULT_BATCH_SIZE  # images per model call
    identity: str | None = None  # the digest of every weight file the model uses (checked where it runs)

    @classmethod
    def of(cls, pipe: Pipeline, *, quality: int = DEFAULT_QUALITY, target: Target | RatioTarget | None = None) -> Settings:
        """The settings of an already loaded pipeline (its weights by path unless they ship)."""
        r = pipe.reconstructor
        shipped = r.identity == shipped_identity(r.name)  # else the workers load the same file by path
        settings = cls(r.name, None if shipped else str(Path(r.weights_path).resolve()), pipe.mapping, quality, target,
                       pipe.batch_size, r.identity)
        remember(settings, pipe)
        return settings

    @property
    def model_key(self) -> tuple[Any, ...]:
        return (self.model, self.weights, self.mapping, self.batch_size)


def shipped_identity(name: str) -> str | None:
    """What Reconstructor.identity is for ``load(name)`` (the shipped weights and bands), from
    the model cards alone; None when no weights ship for ``name``."""
    import hashlib

    from dicom_cae.model.reconstructor import shipped_card_list

    cards = [c for c in shipped_card_list() if c["model"] == name]
    general = [c["sha256"] for c in cards if "serves" not in c]
    if not general:
        return None
    bands = [c["sha256"] for c in cards if "serves" in c]
    return hashlib.sha256("".join([general[0], *bands]).encode()).hexdigest() if bands else general[0]


class SystemicError(DicomCaeError):
    """A failure that hit every instance of a batch alike and not for their input (the model, the
    disk, memory): the batch should be tried again as it is. ``stage`` is prepare, reconstruct or
    write (a full disk or memory while finishing: errors.is_resource_error)."""

    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason = stage, reason

    def __reduce__(self):
        return (type(self), (self.stage, self.reason))


#: The kinds of Outcome.
WRITTEN, DONE, NOT_IMAGE, FAILED = "written", "done", "not-image", "failed"


@dataclass(frozen=True)
class Outcome:
    """What became of one input file."""

    source: str  # the file
    kind: str  # WRITTEN, DONE (its output existed), NOT_IMAGE or FAILED
    output: str | None = None  # the derived instance, relative to the store's root
    study: str | None = None  # the source's Study Instance UID (or its stand-in)
    sop_instance: str | None = None  # the source's SOP Instance UID
    derived: tuple[str, str] | None = None  # the derived (Series, SOP Instance) UIDs
    frames: int = 0
    error: DicomInputError | None = None  # why (NOT_IMAGE, FAILED)
    warnings: tuple[str, ...] = ()


_PIPELINES: dict[tuple[Any, ...], Pipeline] = {}
_PIPELINES_LOCK = threading.Lock()


def remember(settings: Settings, pipe: Pipeline) -> None:
    """Use ``pipe`` for ``settings`` in this process (no second load of the same model)."""
    with _PIPELINES_LOCK:
        _PIPELINES.setdefault(settings.model_key, pipe)


def pipeline_for(settings: Settings) -> Pipeline:
    """This process's pipeline for ``settings``: the model loads once per process."""
    with _PIPELINES_LOCK:
        pipe = _PIPELINES.get(settings.model_key)
        if pipe is None:
            from dicom_cae.model import load

            pipe = Pipeline(load(settings.model, weights=settings.weights), batch_size=settings.batch_size,
                            mapping=settings.mapping)
            _PIPELINES[settings.model_key] = pipe
        return pipe


def _key(pipe: Pipeline, settings: Settings) -> str:
    return pipe.key(settings.target or settings.quality)


@dataclass
class _Item:
    path: str
    outcome: Outcome | None = None  # decided already (done, failed...)
    prep: Prepared | None = None
    problem: Exception | None = None  # not the input's fault (the model in a target search...)
    ident: identity.Identity | None = None
    output: Path | None = None


def _prepare(pipe: Pipeline, settings: Settings, store: Store, path: str, skip_done: bool, by_sop: bool) -> _Item:
    item = _Item(path)
    try:
        ds = io.read(path, pixels=False)  # enough to know whether it was converted before
        if private_tags.is_ours(ds):
            raise NotAnImageError(path, f"a derived instance of dicom-cae's own ({private_tags.PRIVATE_CREATOR} block): "
                                        "not derived again")
        ident = identity.identify(ds, path)
        identity.apply(ds, ident)
        item.ident = ident
        if skip_done:
            uids = derived_uids(ds, key=_key(pipe, settings))
            item.output = store.path_of(ident.study, uids.series, uids.instance)
        if skip_done and item.output.exists():
            item.outcome = Outcome(path, DONE, str(item.output.relative_to(store.root)), ident.study, ident.sop_instance,
                                   (uids.series, uids.instance))
            return item
        ds = io.read(path)
        source = f"SOP Instance {ident.sop_instance}" if by_sop else path
        if isinstance(settings.target, RatioTarget):
            item.prep = pipe.prepare_for_ratio(ds, source, settings.target)
        elif settings.target is not None:
            item.prep = pipe.prepare_for_target(ds, source, settings.target)
        else:
            item.prep = pipe.prepare(ds, source, quality=settings.quality)
    except NotAnImageError as exc:
        item.outcome = _failed(item, NOT_IMAGE, exc)
    except DicomInputError as exc:
        item.outcome = _failed(item, FAILED, exc)
    except ValueError as exc:  # this instance's own values
        item.outcome = _failed(item, FAILED, DicomInputError(path, f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # noqa: BLE001 (the model in a target search, memory: see run_batch)
        item.problem = exc
    return item


def _failed(item: _Item, kind: str, error: DicomInputError) -> Outcome:
    ident = item.ident
    return Outcome(item.path, kind, study=ident.study if ident else None, sop_instance=ident.sop_instance if ident else None,
                   error=error)


def run_batch(settings: Settings, paths: list[str], root: str, *, skip_done: bool = True, durable: bool = False,
              threads: int = 2, by_sop: bool = False) -> list[Outcome]:
    """Convert ``paths`` into the store at ``root``; one Outcome per path, in order.

    An instance's own problem fails that instance alone. Raises SystemicError when every
    instance failed alike and not for its input (the batch can be tried again as it is).
    ``by_sop``: name sources by SOP Instance UID in the output (the node's spool files have no
    meaningful names).
    """
    pipe = pipeline_for(settings)
    if settings.identity and pipe.reconstructor.identity != settings.identity:  # a deployment error, not the input's
        raise ModelError(f"this worker's {pipe.reconstructor.name} weights ({pipe.reconstructor.identity[:12]}) are not the "
                         f"ones asked for ({settings.identity[:12]}): install the same dicom-cae version and weights there")
    store = Store(root)
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="stage") as pool:
        items = list(pool.map(lambda p: _prepare(pipe, settings, store, p, skip_done, by_sop), paths))
        problems = [i for i in items if i.problem is not None]
        if problems and len(problems) == len(items):
            exc = problems[0].problem
            raise SystemicError("prepare", f"{type(exc).__name__}: {exc}") from exc
        for i in problems:
            i.outcome = _failed(i, FAILED, DicomInputError(i.path, f"{type(i.problem).__name__}: {i.problem}"))
        todo, claimed = [], {}
        for i in items:
            if i.outcome is None:
                if i.output is not None and i.output in claimed:  # the same instance twice in this batch: once
                    i.outcome = Outcome(i.path, DONE, str(i.output.relative_to(store.root)), i.ident.study, i.ident.sop_instance)
                    continue
                claimed[i.output] = i
                todo.append(i)
        recon = _reconstruct(pipe, [i.prep for i in todo])

        def finish(pair: tuple[_Item, Any]) -> Outcome:
            i, r = pair
            if isinstance(r, Exception):
                return _failed(i, FAILED, DicomInputError(i.path, f"reconstruction failed: {type(r).__name__}: {r}"))
            try:
                d = pipe.finish(i.prep, r).dataset
                out = store.write(d, durable=durable)
            except Exception as exc:  # noqa: BLE001 (this instance fails, the rest go on; unless the machine's at fault)
                if is_resource_error(exc):  # a full disk, memory: the batch as a whole, to be tried again
                    raise SystemicError("write", f"{type(exc).__name__}: {exc}") from exc
                LOGGER.exception("finishing %s failed", identity.printable(i.path, 200))
                return _failed(i, FAILED, DicomInputError(i.path, f"{type(exc).__name__}: {exc}"))
            return Outcome(i.path, WRITTEN, str(out.relative_to(store.root)), i.ident.study, i.ident.sop_instance,
                           (str(d.SeriesInstanceUID), str(d.SOPInstanceUID)), i.prep.frames, None, i.prep.warnings)

        for i, o in zip(todo, pool.map(finish, zip(todo, recon))):
            i.outcome = o
    return [i.outcome for i in items]


def _reconstruct(pipe: Pipeline, preps: list[Prepared]) -> list[Any]:
    """The model over the whole batch; when that fails, instance by instance (an exception in
    place of the array of the ones that fail); SystemicError when every one fails."""
    if not preps:
        return []
    try:
        return pipe.reconstruct(preps)
    except Exception:  # noqa: BLE001 (find out whether one instance is the cause)
        LOGGER.exception("reconstructing a batch of %d failed; trying each instance alone", len(preps))
    out: list[Any] = []
    for p in preps:
        try:
            out.append(pipe.reconstruct([p])[0])
        except Exception as exc:  # noqa: BLE001
            out.append(exc)
    if all(isinstance(r, Exception) for r in out):
        raise SystemicError("reconstruct", f"{type(out[0]).__name__}: {out[0]}") from out[0]
    return out


# -- engines ------------------------------------------------------------------------------------

class Engine:
    """Runs batches. ``submit`` returns a future (``result()`` gives the value or raises)."""

    name = "engine"
    slots = 1  # batches worth keeping in flight
    threads = 2  # stage threads inside one batch

    def submit(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class InProcess(Engine):
    """This process: two batches at a time in threads (one's model call while the other's CPU
    stages run); the model is the one already loaded here."""

    name = "in-process"

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self.slots = 2
        self._pool = ThreadPoolExecutor(self.slots, thread_name_prefix="batch")

    def submit(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown()


def _start_process(settings: Settings, intra_threads: int, nice: int = 0) -> None:
    if nice:
        os.nice(nice)  # the node's receiving comes first
    # Before TensorFlow starts: N processes on a few cores must not each start a thread per core.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(intra_threads))
    os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    pipeline_for(settings)


class Processes(Engine):
    """A local pool of ``n`` processes, each with the model loaded once (spawned, so that no
    process inherits another's TensorFlow state)."""

    name = "processes"

    def __init__(self, n: int, settings: Settings, *, nice: int = 0) -> None:
        if n < 1:
            raise ValueError(f"workers must be at least 1, got {n}")
        self.slots, self.threads = 2 * n, 1
        self.n, self._settings, self._nice = n, settings, nice
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
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(fn, *args, **kwargs)
        except BrokenProcessPool:  # a process died (memory, a crashing decoder): a new pool
            LOGGER.error("a worker process died; starting the pool again")
            self._pool.shutdown(wait=False)
            self._pool = self._start()
            return self._pool.submit(fn, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown()


def engine_for(settings: Settings, *, workers: int = 0, dask: str | None = None, nice: int = 0) -> Engine:
    """The engine a command asks for: a Dask scheduler's address, N local processes (at this
    niceness), or this one."""
    if dask:
        from dicom_cae.cluster import DaskEngine

        return DaskEngine(dask, settings)
    if workers and workers > 0:
        return Processes(workers, settings, nice=nice)
    return InProcess()

