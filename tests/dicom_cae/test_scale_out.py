"""Issue 9: one runner on three engines. A real Dask scheduler and two worker processes on
127.0.0.1, a local pool of processes, and this process must write the same derived instances,
and list the same failures (the node on the cluster: tests/scp_node/test_node_on_dask.py)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_cae import private_tags
from dicom_cae.store import INDEX, Store
from tests.conftest import ROOT, SAMPLES, derived_images, free_port
from dicom_cae.weights import DEFAULT_MODEL, shipped_card_list


pytestmark = pytest.mark.slow  # real peers and processes: the full suite, not the fast tier


def _convert(out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dicom_cae", "convert", str(SAMPLES), str(out), "--quality", "10", "--no-progress", *extra],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )


def _outputs(out: Path) -> dict[str, tuple[bytes, list[float]]]:
    """Each derived instance by its path in the store: its pixels and its PSNR tags."""
    found = {}
    for f in derived_images(out):
        ds = pydicom.dcmread(f)
        found[str(f.relative_to(out))] = (bytes(ds.PixelData), private_tags.read(ds)["PSNR"])
    return found


def _errors(out: Path) -> list[tuple[str, str, str, str]]:
    rows = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()[1:]]
    return sorted((Path(f).name, kind, reason.replace(f, Path(f).name), cause) for f, kind, reason, cause in rows)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    r = _convert(out)
    assert r.returncode == 1, r.stderr  # the corrupt sample fails; the rest converts
    return out


def test_a_dask_cluster_writes_what_a_local_run_writes(dask_cluster, local_run, tmp_path):
    r = _convert(tmp_path, "--dask", dask_cluster)
    assert r.returncode == 1, r.stderr
    assert "on dask" in r.stdout
    local = _outputs(local_run)
    assert len(local) == 6
    assert _outputs(tmp_path) == local  # same files, same pixels, same metrics
    assert _errors(tmp_path) == _errors(local_run)  # the failure crossed the process boundary intact
    assert any("cannot decode Pixel Data" in reason and cause == "input" for _, kind, reason, cause in _errors(tmp_path) if kind == "failed")
    # The reports ran on the workers, from the store's index.
    index = Store(tmp_path)
    assert (tmp_path / INDEX).is_file() and len(index.entries()) == 6
    for study in index.studies():
        assert (index.study_dir(study) / "report.json").is_file()
    # Run again: everything is done already.
    again = _convert(tmp_path, "--dask", dask_cluster)
    assert "0 instance(s)" in again.stdout.split("converted ")[1] and "6 already done" in again.stdout


def test_local_processes_write_what_this_process_writes(local_run, tmp_path):
    r = _convert(tmp_path, "--workers", "2")
    assert r.returncode == 1, r.stderr
    assert "on processes" in r.stdout
    assert _outputs(tmp_path) == _outputs(local_run)
    assert _errors(tmp_path) == _errors(local_run)


def test_an_unreachable_scheduler_is_one_line_and_exit_2(tmp_path):
    r = _convert(tmp_path, "--dask", f"tcp://127.0.0.1:{free_port()}")
    assert r.returncode == 2
    assert "cannot reach the Dask scheduler" in r.stderr and "Traceback" not in r.stderr


def test_the_first_of_two_different_files_with_one_uid_wins_on_any_engine(tmp_path):
    """Two files with the same SOP Instance UID and other pixels, in different batches on two
    processes: the first in walking order is converted, the second listed as a duplicate
    (regression: both were written to one path and the last to finish won)."""
    src = tmp_path / "src"
    src.mkdir()
    first = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
    second = pydicom.dcmread(SAMPLES / "ct_phantom_2.dcm")
    second.SOPInstanceUID = first.SOPInstanceUID
    second.StudyInstanceUID, second.SeriesInstanceUID = first.StudyInstanceUID, first.SeriesInstanceUID
    first.save_as(src / "a.dcm")
    second.save_as(src / "b.dcm")
    local = tmp_path / "local"
    # the same batch size as the workers': the model's last bits depend on the batch's shape
    # (oneDNN; up to 2.4e-7 here), which can move a stored value by one where a blend is stored
    r = subprocess.run([sys.executable, "-m", "dicom_cae", "convert", str(src / "a.dcm"), str(local), "--quality", "10",
                        "--no-progress", "--batch-size", "1"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "dicom_cae", "convert", str(src), str(out), "--quality", "10", "--no-progress",
                        "--batch-size", "1", "--workers", "2"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr
    assert [(Path(f).name, kind) for f, kind, *_ in _errors(out)] == [("b.dcm", "duplicate")]
    assert _outputs(out) == _outputs(local)


def test_a_rerun_indexes_what_an_earlier_run_wrote(local_run, tmp_path):
    """The index is rebuilt by a rerun (lost, or written by an older version): the reports
    still cover every instance (regression: a rerun wrote empty reports)."""
    out = tmp_path / "out"
    shutil.copytree(local_run, out)
    for f in out.glob(INDEX + "*"):
        f.unlink()
    r = _convert(out)
    assert "6 already done" in r.stdout
    index = Store(out)
    assert len(index.entries()) == 6
    for study in index.studies():
        report = json.loads((index.study_dir(study) / "report.json").read_text())
        assert report["images"] == len(index.study_files(study)) > 0


def test_workers_load_the_weights_this_process_loaded():
    """Regression (review): a shipped weights file given by path (--weights) was taken for the
    shipped set with its bands, so every worker refused the batch as holding other weights.
    Weights given by path travel by path, unless they are exactly the shipped set."""
    from dicom_cae import pipeline, runner
    from dicom_cae.model import load

    shipped = runner.Settings.of(pipeline.Pipeline(load()))
    assert shipped.weights is None and shipped.identity == runner.shipped_identity(DEFAULT_MODEL)
    trained_elsewhere = ROOT / "dicom_cae" / "weights" / "blockres-6d363b1b.weights.h5"
    one_file = load("blockres", weights=trained_elsewhere)
    alone = runner.Settings.of(pipeline.Pipeline(one_file))
    assert runner.pipeline_for(alone).reconstructor.identity == alone.identity == one_file.sha256
    path = ROOT / "dicom_cae" / "weights" / next(c["weights_file"] for c in shipped_card_list() if c["model"] == DEFAULT_MODEL and "serves" not in c)
    same = runner.Settings.of(pipeline.Pipeline(load(weights=path)))
    assert runner.pipeline_for(same).reconstructor.identity == shipped.identity


def test_workers_compute_in_the_precision_this_process_chose(monkeypatch, tmp_path):
    """Review: each worker chose the model's precision from its own CPU and environment, so a
    cluster of mixed CPUs could split one source series into two derived series (the precision
    is in the UIDs' key). The settings carry the precision; a worker loads the model in it,
    whatever its environment says, and refuses a pipeline computing in another."""
    from dicom_cae import pipeline, runner
    from dicom_cae.errors import ModelError
    from dicom_cae.model import load

    here = runner.Settings.of(pipeline.Pipeline(load(precision="float32"), batch_size=3))
    assert here.precision == "float32"
    monkeypatch.setenv("DICOM_CAE_PRECISION", "bfloat16")  # the worker's own setting
    built = runner.Settings.build(batch_size=5)
    assert built.precision == "bfloat16" and built.model_key != runner.Settings.build(batch_size=5, precision="float32").model_key
    runner._PIPELINES.pop(here.model_key)  # as in a fresh worker process
    worker = runner.pipeline_for(here)
    assert worker.reconstructor.precision == "float32" and worker.key(10) == pipeline.Pipeline(load(precision="float32")).key(10)
    runner._PIPELINES[here.model_key] = pipeline.Pipeline(load(precision="bfloat16"), batch_size=3)
    try:
        with pytest.raises(ModelError, match="computes in bfloat16, float32 was asked for"):
            runner.run_batch(here, [str(SAMPLES / "ct_phantom_1.dcm")], str(tmp_path))
    finally:
        runner._PIPELINES.pop(here.model_key)


def test_settings_are_decided_without_tensorflow():
    """Review: deciding the settings' precision imported TensorFlow (and started its GPU probe)
    into every process that builds settings, the Orthanc plugin's own among them, which runs no
    model. The precision is decided from the setting and /proc alone."""
    code = ("import sys; from dicom_cae import runner; s = runner.Settings.build(precision='auto'); "
            "print(s.precision in ('float32', 'bfloat16'), 'tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False", "False"]


def test_what_travels_between_processes_is_small_and_whole():
    """Issue 9's defects: a NotAnImageError raised in a process pool broke the pool (the
    project's errors did not survive pickling), and a prepared instance carried its whole
    source dataset with the pixels (0.94 MB pickled for one 320x320 CT)."""
    import pickle

    from dicom_cae import io, pipeline
    from dicom_cae.errors import DicomInputError, NotAnImageError

    for error in (NotAnImageError("a.dcm", "no Pixel Data"), DicomInputError("b.dcm", "truncated")):
        back = pickle.loads(pickle.dumps(error))
        assert type(back) is type(error) and (back.source, back.reason, str(back)) == (error.source, error.reason, str(error))
    ds = io.read(SAMPLES / "ct_phantom_1.dcm")
    prep = pipeline.prepare(ds, "ct", quality=10)
    assert "PixelData" not in prep.dataset and "PixelData" in ds  # the caller's dataset stays whole
    assert len(pickle.dumps(prep.dataset)) < 20_000
