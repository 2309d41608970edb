"""Batch conversion of DICOM folders on the runner (dicom_cae.runner): batches of files on an
engine (this process, local processes or a Dask cluster), the outputs in a store with its index,
then one report per study and the errors file."""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_cae import engines, identity, io, pipeline, report, runner
from dicom_cae.errors import DicomInputError, InstanceError, NotAnImageError, NotDicomError, cause_of
from dicom_cae.pipeline import Pipeline, RatioTarget, Target
from dicom_cae.store import Entry, Store

LOGGER = logging.getLogger(__name__)

ERRORS_FILE = "errors.tsv"
#: A file with one of these suffixes that is not DICOM counts as failed; other non-DICOM files
#: (READMEs, scripts, thumbnails) are listed but do not make the run fail.
DICOM_SUFFIXES = (".dcm", ".dicom", ".dic", ".ima", "")


def output_path(dst: Path, study_uid: object, series_uid: str, sop_uid: str) -> Path:
    return Store(dst).path_of(study_uid, series_uid, sop_uid)


@dataclass
class Summary:
    """What a conversion did."""

    converted: int = 0  # instances written
    frames: int = 0
    skipped_done: int = 0  # already converted in an earlier run
    duplicates: list[DicomInputError] = field(default_factory=list)  # same instance twice in SRC
    not_images: list[DicomInputError] = field(default_factory=list)
    not_dicom: list[DicomInputError] = field(default_factory=list)
    failed: list[InstanceError] = field(default_factory=list)  # its cause says whether the input is at fault
    warnings: list[DicomInputError] = field(default_factory=list)  # converted, with something made up
    studies: set[str] = field(default_factory=set)
    seconds: float = 0.0
    interrupted: bool = False  # stopped by Ctrl-C: what was written is indexed; a rerun resumes

    @property
    def exit_code(self) -> int:
        return 130 if self.interrupted else 1 if self.failed else 0


def _record_failure(summary: Summary, path: Path, exc: Exception) -> None:
    """File one file's exception under the right kind of error."""
    if isinstance(exc, NotDicomError) and path.suffix.lower() not in DICOM_SUFFIXES:
        summary.not_dicom.append(exc)
        LOGGER.info("not DICOM: %s", exc)
    elif isinstance(exc, NotAnImageError):
        summary.not_images.append(exc)
        LOGGER.info("not converted: %s", exc)
    elif isinstance(exc, InstanceError):
        summary.failed.append(exc)
        LOGGER.info("failed (%s, %s): %s", exc.cause, exc.stage, exc)
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
    engine: engines.Engine | None = None,
    settings: runner.Settings | None = None,
) -> Summary:
    """Convert every DICOM image under ``src`` into ``dst``; write reports and the errors file.

    Files that fail are listed in ``dst/errors.tsv`` with their reason; the rest go on. With
    a ``target``, each image gets the lowest JPEG quality that reaches it instead of ``quality``.
    ``settings``: built once by the caller (runner.Settings), else from ``pipe``, ``quality`` and
    ``target``. The batches run on ``engine`` (engines.engine_for: processes, a Dask cluster), else in this
    process with ``workers`` threads per stage; the study reports too. Memory stays bounded: a
    few batches in flight, whatever the number of files. An output folder inside ``src`` is
    not walked.

    Raises io.FolderInUse when another conversion is writing into ``dst``.
    """
    started = time.perf_counter()
    src, dst = Path(src), Path(dst)
    lock = io.lock_folder(dst, LOCK_FILE)  # raises io.FolderInUse: one convert writes into a folder at a time
    try:
        settings = settings or runner.Settings.of(pipe, quality=quality, target=target)
        return _convert(src, dst, pipe, settings, progress, workers, engine, started)
    finally:
        os.close(lock)


#: The lock a conversion holds on its output folder (hidden: never walked as input).
LOCK_FILE = ".dicom-cae-convert.lock"


def _convert(src: Path, dst: Path, pipe: Pipeline, settings: runner.Settings, progress: bool, workers: int,
             engine: engines.Engine | None, started: float) -> Summary:
    from tqdm import tqdm

    own = engine is None
    engine = engine or engines.create("in-process", settings, threads=workers)
    files = io.walk(src, skip=(dst,))  # an output folder inside the input is not input
    summary = Summary()
    # One bar over the files as their outcome is known (written, done before, failed), then one over the reports.
    bar = tqdm(total=len(files), desc="instances", unit="file", disable=not progress, file=sys.stderr, dynamic_ncols=True)
    sources: dict[str, dict[str, Path]] = {}  # study -> source SOP Instance UID -> file, for the reports' pictures
    per_batch = max(1, pipe.batch_size)
    root = str(dst.resolve())
    store = Store(root)  # absolute: report tasks may run on other machines
    files, study_of = _first_of_each(files, summary, bar, workers)
    given = {str(Path(p).resolve()): p for p in files}  # workers may run elsewhere: absolute paths
    # A study's report is written as soon as its last file is in (beside the conversion of the
    # others), when the headers named its study; the rest once every batch is in.
    study_of = {path: study_of[given[path]] for path in given if study_of.get(given[path])}
    remaining = Counter(study_of.values())
    reports: dict[str, Any] = {}

    def report_soon(study: str) -> None:
        reports[study] = engine.submit(study_report, root, study, [str(p) for p in store.study_files(study)],
                                       sources.get(study, {}))

    absolute = list(given)
    batches = [absolute[i : i + per_batch] for i in range(0, len(absolute), per_batch)]

    def take(paths: list[str], outcomes: list[runner.Outcome]) -> None:
        written = []
        for o in outcomes:
            bar.update(1)
            path = given.get(o.source, Path(o.source))
            if o.error is not None and o.error.source == o.source:  # named as the user gave it
                o = dataclasses.replace(o, error=o.error.named(str(path)))
            if o.kind in (runner.NOT_IMAGE, runner.FAILED):
                _record_failure(summary, path, o.error or DicomInputError(o.source, "failed"))
                continue
            summary.studies.add(o.study)
            sources.setdefault(o.study, {})[o.sop_instance] = Path(o.source)  # absolute, for the report tasks
            if o.derived:  # written now or in an earlier run: the index holds it either way
                written.append(Entry(o.derived[1], o.derived[0], o.study, o.sop_instance, str(path), o.output))
            if o.kind == runner.DONE:
                summary.skipped_done += 1
                continue
            summary.converted += 1
            summary.frames += o.frames
            summary.warnings += [DicomInputError(str(path), w) for w in o.warnings]
        store.add(written)
        for o in outcomes:
            study = study_of.get(o.source)
            if study:
                remaining[study] -= 1
                if remaining[study] == 0 and study in summary.studies and study not in reports:
                    report_soon(study)

    try:
        summary.interrupted = not runner.Driver(engine, settings, root, runner.CONVERT).run(batches, take)
        bar.close()
        if summary.interrupted:  # no report of a study left half done (those complete have theirs): the rerun writes them
            summary.studies = set(reports)

        for study in sorted(s for s in summary.studies if s and s not in reports):
            report_soon(study)
        done = tqdm(total=len(reports), desc="study reports", unit="report", disable=not progress or not reports,
                    file=sys.stderr, dynamic_ncols=True)
        for study, fut in sorted(reports.items()):
            try:
                try:
                    fut.result()
                except Exception as exc:  # noqa: BLE001 (a worker lost to another task: this report once more)
                    if not engine.lost_worker(exc):
                        raise
                    report_soon(study)
                    reports[study].result()
                done.update(1)
            except Exception as exc:  # noqa: BLE001 (one study's report must not stop the run)
                LOGGER.error("the report of study %s failed: %s", study, exc)
                summary.failed.append(InstanceError(str(store.study_dir(study)),
                                                    f"study report not written: {type(exc).__name__}: {exc}", "report",
                                                    cause_of(exc)))
        done.close()
    finally:
        if own:
            engine.close()
        store.close()
    summary.studies = {identity.safe_name(s) for s in summary.studies if s}
    # cause: input (the file's own content: it fails again) or the machine's (disk, memory,
    # model, engine: convert again once that is mended).
    lines = ["file\tkind\treason\tcause"]
    for kind, errs in (
        ("failed", summary.failed),
        ("not-an-image", summary.not_images),
        ("duplicate", summary.duplicates),
        ("not-dicom", summary.not_dicom),
        ("warning", summary.warnings),
    ):
        lines += [f"{e.source}\t{kind}\t{e.reason}\t{getattr(e, 'cause', 'input')}" for e in errs]
    io.write_text("\n".join(lines) + "\n", dst / ERRORS_FILE)
    summary.seconds = time.perf_counter() - started
    return summary


def _first_of_each(files: list[Path], summary: Summary, bar, workers: int) -> tuple[list[Path], dict[Path, str]]:
    """The files without second copies of an instance (same Study and SOP Instance UID), which
    are listed as duplicates: the first in walking order is converted, whatever engine runs it;
    and the Study Instance UID each file's header names (where it could be read)."""
    from concurrent.futures import ThreadPoolExecutor

    def key(path: Path) -> tuple[str, str] | None:
        try:
            ds = io.read(path, pixels=False)
            return (str(ds.get("StudyInstanceUID", "")), str(ds["SOPInstanceUID"].value))
        except Exception:  # noqa: BLE001 (its batch says what is wrong with it)
            return None

    with ThreadPoolExecutor(max(1, workers)) as pool:
        keys = list(pool.map(key, files))
    first: dict[tuple[str, str], Path] = {}
    out, studies = [], {}
    for path, k in zip(files, keys):
        if k is not None and k in first:
            summary.duplicates.append(DicomInputError(str(path), f"same SOP Instance UID as {first[k]}, converted once"))
            bar.update(1)
            continue
        if k is not None:
            first[k] = path
            studies[path] = k[0]
        out.append(path)
    return out, studies


def study_report(root: str, study: str, files: list[str], sources: dict[str, Path]) -> str:
    """One study's report (a task an engine runs: convert's and the Orthanc plugin's)."""
    store = Store(root)
    return str(report.write(store.study_dir(study), sources=sources, files=[Path(f) for f in files]))
