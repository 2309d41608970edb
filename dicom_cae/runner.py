"""The one runner behind ``convert`` and the node: a batch of files through read -> value
mapping + JPEG (CPU) -> the model (batched) -> measure + derive + write (CPU), on an engine.

The unit of work is ``run_batch(settings, paths, root)``: a plain, picklable function of small
frozen values that returns one small ``Outcome`` per file (no pixels). An engine runs such
batches (dicom_cae.engines: this process, local processes, a Dask cluster). Each process
loads the model once (``pipeline_for``). Errors cross process boundaries intact
(dicom_cae.errors pickles). Everything that decides the output (model, weights, value
mapping, quality or target) is in ``Settings``, so a batch gives the same files wherever it runs.

``Driver`` is the one batch loop of every caller (convert, the node, the Orthanc plugin): the
batches in flight, a batch that fails as a whole, the one-at-a-time fallback when a worker is
lost, each as the caller's ``Policy`` says.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable

from dicom_cae import identity, io, private_tags
from dicom_cae import mapping as value_mapping
from dicom_cae.derive import derived_uids
from dicom_cae.errors import (ENGINE, INPUT, MODEL, DicomCaeError, DicomInputError, InstanceError, ModelError,
                              NotAnImageError, cause_of)
from dicom_cae.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_QUALITY, Pipeline, Prepared, RatioTarget, Target
from dicom_cae.store import Store

if TYPE_CHECKING:
    from dicom_cae.engines import Engine

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
    precision: str | None = None  # float32 or bfloat16, decided here (precision.resolve), the same on every worker

    @classmethod
    def build(cls, *, model: str | None = None, weights: str | None = None, mapping: str | None = None,
              quality: int | None = None, target: Target | None = None, target_ratio: float | None = None,
              batch_size: int | None = None, precision: str | None = None) -> Settings:
        """The settings a command, the node's configuration or the Orthanc plugin asks for, each
        default and check in one place, decided before any model loads (the weights' identity
        from the model cards, or the digest of the weights file; the precision here, as
        ``precision`` or DICOM_CAE_PRECISION and this machine say, so that every worker computes
        alike; all without TensorFlow).

        Raises ValueError for a value out of range, ModelError for a model that ships no weights.
        """
        from dicom_cae import codec, precision as site, weights as shipped

        if target_ratio is not None:
            if target is not None:
                raise ValueError("a fidelity target and a ratio target exclude each other")
            target = RatioTarget(float(target_ratio))
        quality = DEFAULT_QUALITY if quality is None else int(quality)
        codec.check_quality(quality)
        batch_size = DEFAULT_BATCH_SIZE if batch_size is None else int(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        name = model or shipped.DEFAULT_MODEL
        if weights:
            path = Path(weights).resolve()
            identity = shipped.sha256_of(path)
        else:
            path, identity = None, shipped_identity(name)
            if identity is None:
                raise ModelError(f"no weights ship for model {name!r}")
        return cls(name, str(path) if path else None, value_mapping.check(mapping or value_mapping.DEFAULT), quality,
                   target, batch_size, identity, site.resolve(precision))

    @classmethod
    def of(cls, pipe: Pipeline, *, quality: int = DEFAULT_QUALITY, target: Target | RatioTarget | None = None) -> Settings:
        """The settings of an already loaded pipeline (its weights by path unless they ship)."""
        r = pipe.reconstructor
        shipped = r.identity == shipped_identity(r.name)  # else the workers load the same file by path
        settings = cls(r.name, None if shipped else str(Path(r.weights_path).resolve()), pipe.mapping, quality, target,
                       pipe.batch_size, r.identity, r.precision)
        remember(settings, pipe)
        return settings

    @property
    def model_key(self) -> tuple[Any, ...]:
        return (self.model, self.weights, self.mapping, self.batch_size, self.precision)


def shipped_identity(name: str) -> str | None:
    """What Reconstructor.identity is for ``load(name)`` (the shipped weights and bands), from
    the model cards alone; None when no weights ship for ``name``."""
    import hashlib

    from dicom_cae.weights import shipped_card_list

    cards = [c for c in shipped_card_list() if c["model"] == name]
    general = [c["sha256"] for c in cards if "serves" not in c]
    if not general:
        return None
    bands = [c["sha256"] for c in cards if "serves" in c]
    return hashlib.sha256("".join([general[0], *bands]).encode()).hexdigest() if bands else general[0]


class SystemicError(DicomCaeError):
    """A failure that hit every instance of a batch alike and not for their input (the model, the
    disk, memory): the batch should be tried again as it is. ``stage`` is prepare, reconstruct or
    write (a full disk or memory while finishing); ``cause`` as errors.InstanceError's."""

    def __init__(self, stage: str, reason: str, cause: str = MODEL) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage, self.reason, self.cause = stage, reason, cause

    def __reduce__(self):
        return (type(self), (self.stage, self.reason, self.cause))


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
    error: InstanceError | None = None  # why (NOT_IMAGE, FAILED): DicomInputError when the input is the cause
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

            pipe = Pipeline(load(settings.model, weights=settings.weights, precision=settings.precision),
                            batch_size=settings.batch_size,
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
        ds = io.read(path)  # once: its pixels are decoded only when it is prepared
        if private_tags.is_ours(ds):
            raise NotAnImageError(path, f"a derived instance of dicom-cae's own ({private_tags.PRIVATE_CREATOR} block): "
                                        "not derived again")
        ident = identity.identify(ds, path)
        item.ident = ident
        if skip_done:  # on a copy: the stand-in UIDs (and their warnings) are prepare's to apply
            named = io.without_pixels(ds)
            identity.apply(named, ident)
            uids = derived_uids(named, key=_key(pipe, settings))
            item.output = store.path_of(ident.study, uids.series, uids.instance)
        if skip_done and item.output.exists():
            item.outcome = Outcome(path, DONE, str(item.output.relative_to(store.root)), ident.study, ident.sop_instance,
                                   (uids.series, uids.instance))
            return item
        source = f"SOP Instance {ident.sop_instance}" if by_sop else path
        item.prep = pipe.prepare_setting(ds, source, settings.target or settings.quality)
    except NotAnImageError as exc:
        item.outcome = _failed(item, NOT_IMAGE, exc)
    except DicomInputError as exc:
        item.outcome = _failed(item, FAILED, exc)
    except ValueError as exc:  # this instance's own values
        item.outcome = _failed(item, FAILED, DicomInputError(path, f"{type(exc).__name__}: {exc}"))
    except Exception as exc:  # noqa: BLE001 (the model in a target search, memory: see run_batch)
        item.problem = exc
    return item


def _failed(item: _Item, kind: str, error: InstanceError) -> Outcome:
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
    from dicom_cae.model.reconstructor import choose_precision  # (the model is loaded here already)

    wanted = choose_precision(pipe.reconstructor.name, setting=settings.precision) if settings.precision else None
    if wanted and pipe.reconstructor.precision != wanted:
        raise ModelError(f"this worker's {pipe.reconstructor.name} computes in {pipe.reconstructor.precision}, "
                         f"{wanted} was asked for")  # (its UIDs and pixels would differ)
    store = Store(root)
    with ThreadPoolExecutor(max(1, threads), thread_name_prefix="stage") as pool:
        items = list(pool.map(lambda p: _prepare(pipe, settings, store, p, skip_done, by_sop), paths))
        problems = [i for i in items if i.problem is not None]
        if problems and len(problems) == len(items):
            exc = problems[0].problem
            raise SystemicError("prepare", f"{type(exc).__name__}: {exc}", cause_of(exc, MODEL)) from exc
        for i in problems:
            i.outcome = _failed(i, FAILED, InstanceError(i.path, f"{type(i.problem).__name__}: {i.problem}", "prepare",
                                                         cause_of(i.problem, INPUT)))
        todo, claimed = [], {}
        for i in items:
            if i.outcome is None:
                # The same instance twice in this batch: written once (convert and the node take
                # duplicates out before; this keeps any other caller from writing one twice).
                if i.output is not None and i.output in claimed:
                    i.outcome = Outcome(i.path, DONE, str(i.output.relative_to(store.root)), i.ident.study, i.ident.sop_instance)
                    continue
                claimed[i.output] = i
                todo.append(i)
        recon = _reconstruct(pipe, [i.prep for i in todo])

        def finish(pair: tuple[_Item, Any]) -> Outcome:
            i, r = pair
            if isinstance(r, Exception):
                return _failed(i, FAILED, InstanceError(i.path, f"reconstruction failed: {type(r).__name__}: {r}",
                                                        "reconstruct", cause_of(r, INPUT)))
            try:
                d = pipe.finish(i.prep, r).dataset
                out = store.write(d, durable=durable)
            except Exception as exc:  # noqa: BLE001 (this instance fails, the rest go on; unless the machine's at fault)
                if cause_of(exc) != INPUT:  # a full disk, memory: the batch as a whole, to be tried again
                    raise SystemicError("write", f"{type(exc).__name__}: {exc}", cause_of(exc)) from exc
                LOGGER.exception("finishing %s failed", identity.printable(i.path, 200))
                return _failed(i, FAILED, InstanceError(i.path, f"{type(exc).__name__}: {exc}", "write", INPUT))
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
        raise SystemicError("reconstruct", f"{type(out[0]).__name__}: {out[0]}", cause_of(out[0], MODEL)) from out[0]
    return out




# -- the driver ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """What a caller wants of the driver, as data.

    ``requeue``: a batch that failed as a whole (SystemicError, an engine outage) stays queued
    (the driver raises Deferred; the caller keeps its files and tries again) instead of each
    instance failing with the reason. With ``requeue``, a batch that fails alike while being
    prepared, or that kills its worker, is tried ``tries`` times, then its instances go on
    their own (one at a time after a lost worker, so that one that kills its worker fails
    alone); the model and the disk are waited for without limit. Without it, a lost worker
    sends the batch's instances one at a time at once. ``skip_done``, ``durable``, ``by_sop``:
    as run_batch's.
    """

    requeue: bool = False
    tries: int = 1
    skip_done: bool = True
    durable: bool = False
    by_sop: bool = False


#: convert: a failure fails the instance (listed in errors.tsv); outputs of an earlier run are kept.
CONVERT = Policy()
#: The node and the Orthanc plugin: nothing received is failed for the machine's sake; durable writes.
SERVICE = Policy(requeue=True, tries=3, skip_done=False, durable=True, by_sop=True)


class Deferred(DicomCaeError):
    """A batch that failed as a whole and stays queued (Policy.requeue): try it again later."""


class Driver:
    """The one batch loop: ``run`` sends batches of files to the engine, keeps ``engine.slots``
    of them in flight, and gives each batch's Outcomes (one per file, in order) to the
    caller's ``take``. A batch that fails as a whole is handled as the Policy says."""

    def __init__(self, engine: Engine, settings: Settings, root: str | Path, policy: Policy = CONVERT) -> None:
        self.engine, self.settings, self.policy = engine, settings, policy
        self.root = str(Path(root).resolve())  # workers may run elsewhere: absolute
        self._tries: dict[str, int] = {}  # file -> tries of batches that failed as a whole with it

    def submit(self, paths: list[str], *, threads: int | None = None, skip_done: bool | None = None) -> Future:
        p = self.policy
        return self.engine.submit(run_batch, self.settings, paths, self.root,
                                  skip_done=p.skip_done if skip_done is None else skip_done, durable=p.durable,
                                  threads=self.engine.threads if threads is None else threads, by_sop=p.by_sop)

    def run(self, batches: Iterable[list[str]], take: Callable[[list[str], list[Outcome]], None]) -> bool:
        """Every batch through the engine; False when Ctrl-C stopped it: no new batch was sent,
        the ones in flight finished and were taken (a rerun resumes). Deferred propagates
        (Policy.requeue): the batches not taken are the caller's still."""
        pending: deque[tuple[list[str], Future]] = deque()

        def take_first() -> None:
            out = self.outcomes(*pending[0])  # a Ctrl-C while it runs: still pending, taken below
            paths = pending.popleft()[0]
            take(paths, out)  # a Ctrl-C inside take: not taken twice (what it did not do, a rerun does)

        try:
            for paths in batches:
                pending.append((paths, self.submit(paths)))
                while len(pending) >= self.engine.slots:
                    take_first()
            while pending:
                take_first()
        except KeyboardInterrupt:  # no fallback now: a batch that did not finish is the rerun's
            for paths, fut in pending:
                if fut.cancel():
                    continue
                try:
                    out = fut.result()
                except BaseException:  # noqa: BLE001 (interrupted too, or failed: a rerun does it again)
                    continue
                take(paths, out)
            return False
        return True

    def outcomes(self, paths: list[str], fut: Future) -> list[Outcome]:
        """The Outcomes of one submitted batch, as the Policy says when it failed as a whole."""
        try:
            out = fut.result()
        except SystemicError as exc:
            tries = self._count(paths)
            if self.policy.requeue and (exc.stage != "prepare" or tries <= self.policy.tries):
                raise Deferred(f"a batch of {len(paths)} failed alike: {exc}") from exc
            LOGGER.error("a batch of %d file(s) failed alike: %s", len(paths), exc)
            out = [Outcome(p, FAILED, error=InstanceError(p, exc.reason, exc.stage, exc.cause)) for p in paths]
        except Exception as exc:  # noqa: BLE001 (the engine: a lost worker, a scheduler outage)
            lost = self.engine.lost_worker(exc)
            if self.policy.requeue and (not lost or self._count(paths) <= self.policy.tries):
                raise Deferred(f"a batch of {len(paths)} failed: {type(exc).__name__}: {exc}") from exc
            LOGGER.error("a batch of %d file(s) failed (%s: %s); running its files one by one", len(paths),
                         type(exc).__name__, exc)
            out = [self._alone(p) for p in paths]
        for p in paths:
            self._tries.pop(p, None)
        return out

    def _count(self, paths: list[str]) -> int:
        tries = max(self._tries.get(p, 0) for p in paths) + 1
        for p in paths:
            self._tries[p] = tries
        return tries

    def _alone(self, path: str) -> Outcome:
        """One file in a batch of its own (not skip_done: what the failed batch wrote is this run's
        work). With Policy.requeue, a failure of the machine (not the file's, not a lost worker)
        leaves the batch queued rather than failing the file for good."""
        try:
            return self.submit([path], threads=1, skip_done=False).result()[0]
        except SystemicError as exc:
            if self.policy.requeue and exc.cause != INPUT and exc.stage != "prepare":
                raise Deferred(f"{path}: {exc}") from exc
            return Outcome(path, FAILED, error=InstanceError(path, exc.reason, exc.stage, exc.cause))
        except Exception as exc:  # noqa: BLE001
            lost = self.engine.lost_worker(exc)
            if self.policy.requeue and not lost:
                raise Deferred(f"{path}: {type(exc).__name__}: {exc}") from exc
            reason = f"{type(exc).__name__}: {exc}"
            if lost:
                reason = f"its worker process died processing it ({reason})"
            return Outcome(path, FAILED, error=InstanceError(path, reason, "engine", cause_of(exc, ENGINE)))
