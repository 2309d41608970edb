"""Batch conversion of DICOM folders: read, prepare (in threads), reconstruct in batches, write.

Memory stays bounded: at most a few batches are in flight, whatever the number of files.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from dicom_cae import identity, io, pipeline, report
from dicom_cae.derive import derived_uids
from dicom_cae.errors import DicomInputError, NotAnImageError, NotDicomError
from dicom_cae.pipeline import Derived, Pipeline, Prepared, RatioTarget, Target

LOGGER = logging.getLogger(__name__)

ERRORS_FILE = "errors.tsv"
#: A file with one of these suffixes that is not DICOM counts as failed; other non-DICOM files
#: (READMEs, scripts, thumbnails) are listed but do not make the run fail.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", "")


def output_path(dst: Path, study_uid: object, series_uid: str, sop_uid: str) -> Path:
    name = identity.safe_name
    return dst / name(study_uid) / name(series_uid) / f"{name(sop_uid)}.dcm"


@dataclass
class Summary:
    """What a conversion did."""

    converted: int = 0  # instances written
    frames: int = 0
    skipped_done: int = 0  # already converted in an earlier run
    duplicates: list[DicomInputError] = field(default_factory=list)  # same instance twice in SRC
    not_images: list[DicomInputError] = field(default_factory=list)
    not_dicom: list[DicomInputError] = field(default_factory=list)
    failed: list[DicomInputError] = field(default_factory=list)
    warnings: list[DicomInputError] = field(default_factory=list)  # converted, with something made up
    studies: set[str] = field(default_factory=set)
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


def _prepare_one(
    path: Path, dst: Path, pipe: Pipeline, quality: int, target: Target | RatioTarget | None
) -> tuple[Path, Prepared | None, str]:
    """Read and prepare one file: its output path, the prepared instance (None when the output
    exists already) and its SOP Instance UID."""
    ds = io.read(path, pixels=False)  # enough to know whether it was converted before
    ident = identity.identify(ds, str(path))
    identity.apply(ds, ident)
    uids = derived_uids(ds, key=pipe.key(target or quality))
    out = output_path(dst, ident.study, uids.series, uids.instance)
    if out.exists():
        return out, None, ident.sop_instance
    ds = io.read(path)
    if isinstance(target, RatioTarget):
        return out, pipe.prepare_for_ratio(ds, str(path), target), str(ds.SOPInstanceUID)
    if target is not None:
        return out, pipe.prepare_for_target(ds, str(path), target), str(ds.SOPInstanceUID)
    return out, pipe.prepare(ds, str(path), quality=quality), str(ds.SOPInstanceUID)


def _write(derived: Derived, dst: Path) -> Path:
    ds = derived.dataset
    out = output_path(dst, ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    io.write(ds, out)
    return out


def _bounded(executor: ThreadPoolExecutor, fn, items: Iterable, window: int) -> Iterator[tuple[object, Future]]:
    """Like executor.map, but keeps at most ``window`` tasks in flight and yields (item, future)."""
    pending: deque[tuple[object, Future]] = deque()
    for item in items:
        pending.append((item, executor.submit(fn, item)))
        if len(pending) >= window:
            yield pending.popleft()
    while pending:
        yield pending.popleft()


def _record_failure(summary: Summary, path: Path, exc: Exception) -> None:
    """File one file's exception under the right kind of error."""
    if isinstance(exc, NotDicomError) and path.suffix.lower() not in DICOM_SUFFIXES:
        summary.not_dicom.append(exc)
        LOGGER.info("not DICOM: %s", exc)
    elif isinstance(exc, NotAnImageError):
        summary.not_images.append(exc)
        LOGGER.info("not converted: %s", exc)
    elif isinstance(exc, DicomInputError):
        summary.failed.append(exc)
        LOGGER.info("failed: %s", exc)
    else:
        LOGGER.exception("failed: %s", path)
        summary.failed.append(DicomInputError(str(path), f"{type(exc).__name__}: {exc}"))


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    pipe: Pipeline,
    *,
    quality: int = pipeline.DEFAULT_QUALITY,
    target: Target | RatioTarget | None = None,
    progress: bool = True,
    workers: int = 2,
) -> Summary:
    """Convert every DICOM image under ``src`` into ``dst``; write reports and the errors file.

    Files that fail are listed in ``dst/errors.tsv`` with their reason; the rest go on. With
    a ``target``, each image gets the lowest JPEG quality that reaches it instead of ``quality``.
    """
    from tqdm import tqdm

    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    files = io.walk(src)
    summary = Summary()
    bar = tqdm(total=len(files), unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    batch: list[Prepared] = []
    batch_frames = 0
    writes: deque[Future] = deque()
    counting = threading.Lock()
    claimed: dict[Path, Path] = {}  # output -> the source file that produces it in this run
    sources: dict[str, Path] = {}  # source SOP Instance UID -> file, for the reports' pictures

    def drain_writes(keep: int) -> None:
        while len(writes) > keep:
            out = writes.popleft().result()
            if out is not None:
                summary.studies.add(out.parent.parent.name)

    def finish_and_write(prep: Prepared, recon: object) -> Path | None:
        try:
            d = pipe.finish(prep, recon)
            out = _write(d, dst)
        except Exception as exc:  # e.g. a full disk: this instance fails, the rest go on
            _record_failure(summary, Path(prep.source), exc)
            out = None
        else:
            with counting:
                summary.converted += 1
                summary.frames += prep.frames
        bar.update(1)
        return out

    def flush() -> None:
        nonlocal batch, batch_frames
        if not batch:
            return
        for prep, r in zip(batch, pipe.reconstruct(batch)):
            writes.append(writer.submit(finish_and_write, prep, r))
        batch, batch_frames = [], 0
        drain_writes(keep=pipe.batch_size)  # at most about one batch being finished while the next runs

    with ThreadPoolExecutor(workers, thread_name_prefix="prepare") as readers, ThreadPoolExecutor(
        workers, thread_name_prefix="write"
    ) as writer:
        for path, fut in _bounded(readers, lambda p: _prepare_one(p, dst, pipe, quality, target), files, 2 * pipe.batch_size):
            try:
                out, result, sop_uid = fut.result()
            except Exception as exc:  # one bad file must never stop the batch
                _record_failure(summary, path, exc)
                bar.update(1)
                continue
            if out in claimed:
                summary.duplicates.append(
                    DicomInputError(str(path), f"same SOP Instance UID as {claimed[out]}, converted once")
                )
                bar.update(1)
                continue
            claimed[out] = path
            sources[sop_uid] = path
            if result is None:
                summary.skipped_done += 1
                summary.studies.add(out.parent.parent.name)
                bar.update(1)
                continue
            summary.warnings += [DicomInputError(str(path), w) for w in result.warnings]
            batch.append(result)
            batch_frames += result.frames
            if batch_frames >= pipe.batch_size:
                flush()
        flush()
        drain_writes(keep=0)
    bar.close()

    for study in sorted(summary.studies):
        try:
            report.write(dst / study, sources=sources)
        except Exception as exc:  # noqa: BLE001 (one study's report must not stop the run)
            LOGGER.exception("the report of study %s failed", study)
            summary.failed.append(DicomInputError(str(dst / study), f"study report not written: {type(exc).__name__}: {exc}"))
    lines = ["file\tkind\treason"]
    for kind, errs in (
        ("failed", summary.failed),
        ("not-an-image", summary.not_images),
        ("duplicate", summary.duplicates),
        ("not-dicom", summary.not_dicom),
        ("warning", summary.warnings),
    ):
        lines += [f"{e.source}\t{kind}\t{e.reason}" for e in errs]
    io.write_text("\n".join(lines) + "\n", dst / ERRORS_FILE)
    summary.seconds = time.perf_counter() - started
    return summary
