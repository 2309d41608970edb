"""Issue 9: one runner on three engines. A real Dask scheduler and two worker processes on
127.0.0.1, a local pool of processes, and this process must write the same derived instances,
and list the same failures (the node on the cluster: tests/scp_node/test_node_on_dask.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from dicom_cae import private_tags
from dicom_cae.store import INDEX, Store
from tests.conftest import ROOT, SAMPLES, derived_images, free_port


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


def _errors(out: Path) -> list[tuple[str, str, str]]:
    rows = [line.split("\t") for line in (out / "errors.tsv").read_text().splitlines()[1:]]
    return sorted((Path(f).name, kind, reason.replace(f, Path(f).name)) for f, kind, reason in rows)


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
    assert any("cannot decode Pixel Data" in reason for _, kind, reason in _errors(tmp_path) if kind == "failed")
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
