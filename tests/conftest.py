"""Shared fixtures: paths to real data, the default model, peers' command-line tools."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sample_dicom"
SHARED_DATA = Path(os.environ.get("DICOM_CAE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def missing(reason: str) -> None:
    """Skip a test whose data or peer is missing; under CI (CI=true) fail it instead, so that a
    CI run without the real data or a peer cannot stay green without the tests that need them."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: a missing prerequisite fails)", pytrace=False)
    pytest.skip(reason)


def shared(*parts: str) -> Path:
    """A path under the real data set; the test is skipped (with the reason) when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        missing(f"real data not available: {path} is absent (the project's real CT/MR set, kept beside the "
                "checkout as ../shared/data; set DICOM_CAE_SHARED_DATA to use another place)")
    return path


def pydicom_test_file(name: str) -> str:
    """A file of the pydicom-data package (installed by the test extra; never downloaded)."""
    try:
        import data_store  # noqa: F401 (pydicom-data's module)
    except ImportError:
        missing("pydicom-data is not installed (pip install .[test])")
    from pydicom.data import get_testdata_file

    path = get_testdata_file(name, download=False)
    if path is None:
        missing(f"{name} is not in the installed pydicom-data")
    return str(path)


#: The Debian package of each peer tool the tests run.
PACKAGES = {"dciodvfy": "dicom3tools", "dcentvfy": "dicom3tools", "storescu": "dcmtk", "echoscu": "dcmtk", "dcmdjpeg": "dcmtk",
            "Orthanc": "orthanc", "chromium": "chromium", "pdftoppm": "poppler-utils", "openssl": "openssl", "strace": "strace"}


def need_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed (apt-get install {PACKAGES.get(name, name)}; .ci/run does)")
    return path


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The 'Error' lines dciodvfy prints for one file, without the file-specific values."""
    tool = need_tool("dciodvfy")
    proc = subprocess.run([tool, str(path)], capture_output=True, text=True)
    return sorted({line.strip() for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")})


@pytest.fixture(scope="session")
def model():
    from dicom_cae.model import load

    return load()


@pytest.fixture(scope="session")
def pipe(model):
    from dicom_cae.pipeline import Pipeline

    return Pipeline(model, batch_size=8)


@pytest.fixture(scope="session")
def converted_samples(tmp_path_factory, pipe):
    """sample_dicom/ converted once for the session: (output folder, Summary)."""
    from dicom_cae.convert import convert

    out = tmp_path_factory.mktemp("samples-out")
    summary = convert(SAMPLES, out, pipe, quality=10, progress=False)
    return out, summary


def dcmtk(name: str) -> str:
    """Path of a DCMTK tool (not a same-named script of another package earlier on PATH)."""
    for candidate in (f"/usr/bin/{name}", shutil.which(name)):
        if candidate and os.path.exists(candidate):
            proc = subprocess.run([candidate, "--version"], capture_output=True, text=True)
            if "dcmtk" in (proc.stdout + proc.stderr).lower():
                return candidate
    missing(f"DCMTK's {name} is not installed (apt-get install dcmtk; .ci/run does)")


def peer_env() -> dict[str, str]:
    """Environment for DCMTK and Orthanc: TCP_NODELAY=1 makes them 15-25x faster on loopback."""
    return {**os.environ, "TCP_NODELAY": "1"}


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1, what: str = "condition"):
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout`` s."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def derived_images(folder):
    """The derived image instances under an output folder (not the reports' PDF documents)."""
    import pydicom

    return sorted(
        f for f in Path(folder).rglob("*.dcm")
        if "SourceImageSequence" in pydicom.dcmread(f, stop_before_pixels=True, specific_tags=["SourceImageSequence"])
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def dask_cluster(tmp_path_factory):
    """`dask scheduler` and two `dask worker` processes (one thread each) on 127.0.0.1."""
    dask = shutil.which("dask")
    if dask is None:
        pytest.fail("the dask command is missing: dask[distributed] is a dependency (pip install -e .)")
    logs = tmp_path_factory.mktemp("dask")
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"],
                              stdout=open(logs / "scheduler.log", "w"), stderr=subprocess.STDOUT)]
    try:
        for i in range(2):
            procs.append(subprocess.Popen(
                [dask, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard", "--name", f"w{i}"],
                stdout=open(logs / f"worker{i}.log", "w"), stderr=subprocess.STDOUT, cwd=logs))
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.fixture
def small_volume(tmp_path):
    """A 96 MB tmpfs (more than the node's 64 MB "disk low" mark once freed) mounted for the test
    (CI runs as root); skipped (failed under CI=true) where mounting is refused. Yields (mount
    point, fill(), free())."""
    point = tmp_path / "volume"
    point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(point)], capture_output=True, text=True)
    if proc.returncode != 0:
        missing(f"cannot mount a tmpfs for the full-disk test: {proc.stderr.strip() or proc.returncode}")

    def fill() -> None:
        for n, size in enumerate((1 << 20, 1 << 16, 1 << 12, 512)):  # down to the last free block
            with open(point / f"filler{n}", "ab", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * size)
                except OSError:
                    pass

    def free() -> None:
        for f in point.glob("filler*"):
            f.unlink()

    try:
        yield point, fill, free
    finally:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture
def raw_sending(monkeypatch):
    """Send files as their bytes are (pynetdicom reads only their file meta): the poison
    corpus reaches the node, and Orthanc, as written."""
    from pydicom import config as pydicom_config
    from pynetdicom import _config

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    monkeypatch.setattr(pydicom_config.settings, "writing_validation_mode", pydicom_config.IGNORE)
