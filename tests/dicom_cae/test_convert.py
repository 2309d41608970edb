import json

import pydicom
import pytest

from dicom_cae import cli, private_tags
from dicom_cae.convert import ERRORS_FILE, convert
from dicom_cae.pipeline import DEFAULT_QUALITY
from tests.conftest import SAMPLES, dciodvfy_errors, derived_images
from dicom_cae.weights import DEFAULT_MODEL


def _outputs(out):
    return derived_images(out)


def test_samples_convert_and_bad_files_are_reported(converted_samples):
    out, s = converted_samples
    assert s.converted == 6 and s.frames == 6
    assert [e.source.split("/")[-1] for e in s.failed] == ["corrupt_truncated.dcm"]
    assert [e.source.split("/")[-1] for e in s.not_images] == ["sr_not_an_image.dcm"]
    assert s.exit_code == 1
    rows = [l.split("\t") for l in (out / ERRORS_FILE).read_text().splitlines()[1:]]
    kinds = {r[0].split("/")[-1]: (r[1], r[2]) for r in rows}
    assert kinds["corrupt_truncated.dcm"][0] == "failed"
    assert "less than expected" in kinds["corrupt_truncated.dcm"][1]
    assert kinds["sr_not_an_image.dcm"] == ("not-an-image", "no Pixel Data: not an image object (Basic Text SR Storage)")
    assert kinds["make_samples.py"][0] == "not-dicom"


def test_output_layout_is_study_series_instance(converted_samples):
    out, _ = converted_samples
    files = _outputs(out)
    assert len(files) == 6
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        assert f.parts[-3:] == (ds.StudyInstanceUID, ds.SeriesInstanceUID, f"{ds.SOPInstanceUID}.dcm")
        assert private_tags.read(ds)["JPEGQuality"] == 10


def test_study_report_has_metrics_and_regression(converted_samples):
    out, _ = converted_samples
    reports = {json.loads(p.read_text())["modalities"][0]: json.loads(p.read_text()) for p in out.glob("*/report.json")}
    assert set(reports) == {"CT", "MR", "CR"}
    ct = reports["CT"]
    assert ct["images"] == 3 and len(ct["per_image"]) == 3
    reg = ct["regression"]
    assert reg["n"] == 3 and 0.5 < reg["slope"] < 1.5 and reg["r2"] > 0.9
    assert ct["summary"]["psnr"]["model"]["mean"] > 20
    assert "PatientID" not in json.dumps(ct) and "Phantom" not in json.dumps(ct)
    assert [r["instance_number"] for r in ct["per_image"]] == [1, 2, 3]


@pytest.mark.parametrize("name", ["ct_phantom_1.dcm", "mr_nonsquare.dcm", "cr_monochrome1.dcm", "mr_rle.dcm"])
def test_outputs_add_no_dciodvfy_error_to_their_source(converted_samples, name):
    out, _ = converted_samples
    src = pydicom.dcmread(SAMPLES / name, stop_before_pixels=True)
    derived = [f for f in _outputs(out)
               if pydicom.dcmread(f, stop_before_pixels=True).SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID]
    assert len(derived) == 1
    new = set(dciodvfy_errors(derived[0])) - set(dciodvfy_errors(SAMPLES / name))
    assert not new


def test_rerun_skips_what_is_done_and_keeps_reports(converted_samples, pipe):
    out, first = converted_samples
    before = {f: f.stat().st_mtime_ns for f in _outputs(out)}
    again = convert(SAMPLES, out, pipe, quality=10, progress=False)
    assert again.converted == 0 and again.skipped_done == 6
    assert {f: f.stat().st_mtime_ns for f in _outputs(out)} == before
    assert len(list(out.glob("*/report.json"))) == 3


def test_cli_exit_codes_and_summary(tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    (one / "ct.dcm").write_bytes((SAMPLES / "ct_phantom_1.dcm").read_bytes())
    assert cli.main(["convert", "--no-progress", str(one), str(tmp_path / "o1")]) == 0
    assert "converted 1 instance(s) (1 image(s))" in capsys.readouterr().out
    (one / "bad.dcm").write_bytes((SAMPLES / "corrupt_truncated.dcm").read_bytes())
    assert cli.main(["convert", "--no-progress", str(one), str(tmp_path / "o1")]) == 1
    err = capsys.readouterr().err
    assert "failed: " in err and "bad.dcm" in err
    assert cli.main(["convert", str(tmp_path / "absent"), str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        cli.main(["convert", "--quality", "0", str(one), str(tmp_path / "o3")])
    assert exc.value.code == 2
    assert cli.main(["convert", "--model", "nope", str(one), str(tmp_path / "o4")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err


def test_models_lists_the_shipped_weights(capsys):
    assert cli.main(["models"]) == 0
    out = capsys.readouterr().out
    assert f"{DEFAULT_MODEL} (default)" in out and "seed:" in out and "sha256" in out
    assert "decoding: the mean of the model's outputs over the input, the input flipped left-right" in out  # what the figures include
    assert "then its block edges smoothed" in out
    # Weights fine-tuned in stages say all of their training, not the last stage's epochs only.
    from dicom_cae.weights import shipped_card_list

    card = next(c for c in shipped_card_list() if c["model"] == DEFAULT_MODEL)
    stages = [*card["training"].get("earlier_stages", ()), card["training"]]
    assert f"trained {sum(s['epochs'] for s in stages)} epochs" in out


PYDICOM_FILES = ["RG1_UNCI.dcm", "RG3_UNCI.dcm", "emri_small_RLE.dcm", "JPEG2000.dcm", "693_J2KR.dcm", "MR2_J2KI.dcm", "CT_small.dcm"]


@pytest.fixture(scope="module")
def converted_pydicom_files(tmp_path_factory, pipe):
    from tests.conftest import pydicom_test_file

    src = tmp_path_factory.mktemp("pydicom-in")
    for name in PYDICOM_FILES:
        (src / name).write_bytes(open(pydicom_test_file(name), "rb").read())
    out = tmp_path_factory.mktemp("pydicom-out")
    summary = convert(src, out, pipe, quality=10, progress=False)
    return src, out, summary


@pytest.mark.parametrize("name", PYDICOM_FILES)
def test_real_cr_ct_mr_and_enhanced_mr_add_no_dciodvfy_error(converted_pydicom_files, name):
    src, out, summary = converted_pydicom_files
    assert summary.converted == len(PYDICOM_FILES) and not summary.failed
    source = pydicom.dcmread(src / name, stop_before_pixels=True)
    derived = [f for f in _outputs(out)
               if pydicom.dcmread(f, stop_before_pixels=True).SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID]
    assert len(derived) == 1
    ds = pydicom.dcmread(derived[0])
    frames = int(source.get("NumberOfFrames", 1) or 1)
    assert ds.pixel_array.shape == ((frames, 256, 256) if frames > 1 else (256, 256))
    assert len(private_tags.read(ds)["PSNR"]) == frames
    assert ds.PhotometricInterpretation == source.PhotometricInterpretation
    assert not set(dciodvfy_errors(derived[0])) - set(dciodvfy_errors(src / name))


def test_a_quality_beside_a_target_is_refused_and_the_summary_names_only_what_was_asked(tmp_path, capsys):
    """Issue 16 item 10: `--quality 10 --target-psnr 30` used to drop the quality silently and
    print "ssim>=None"; now the two exclude each other (exit 2, one line), and a target's
    summary names only what was asked for."""
    one = tmp_path / "one"
    one.mkdir()
    (one / "ct.dcm").write_bytes((SAMPLES / "ct_phantom_1.dcm").read_bytes())
    assert cli.main(["convert", "--no-progress", "--quality", "10", "--target-psnr", "30", str(one), str(tmp_path / "o")]) == 2
    assert "--quality and a target" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert cli.main(["convert", "--no-progress", "--target-psnr", "30", str(one), str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "fidelity target PSNR >= 30 dB in the worst display window" in out and "None" not in out


def test_the_default_data_folder_is_ignored_by_git():
    """Issue 16 item 14: `dicom-cae serve` in a checkout creates dicom-cae-data/; git ignores it."""
    import shutil
    import subprocess

    from tests.conftest import ROOT

    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    proc = subprocess.run(["git", "check-ignore", "-q", "dicom-cae-data/output/x.dcm"], cwd=ROOT)
    assert proc.returncode == 0


def test_an_output_folder_inside_the_input_is_not_converted_again(tmp_path, capsys):
    """Issue 16 item 12: a second run into an output folder inside its input converted its own
    output again ("CAE ... of CAE ... reconstruction") and listed report.json, index.sqlite and
    errors.tsv as not DICOM. The output folder is not walked, and a derived instance of ours
    found anywhere (copied beside the sources here) is never derived again."""
    import shutil

    src = tmp_path / "in"
    src.mkdir()
    (src / "ct.dcm").write_bytes((SAMPLES / "ct_phantom_1.dcm").read_bytes())
    out = src / "out"
    for _ in range(2):
        assert cli.main(["convert", "--no-progress", str(src), str(out)]) == 0
    derived = sorted(out.rglob("*.dcm"))
    assert len([p for p in derived if "report" not in pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription.lower()
                and pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT"]) == 1
    errors = (out / "errors.tsv").read_text()
    assert "report.json" not in errors and "index.sqlite" not in errors and "not-dicom" not in errors
    ours = next(p for p in derived if pydicom.dcmread(p, stop_before_pixels=True).Modality == "CT")
    shutil.copy(ours, src / "copied_output.dcm")
    capsys.readouterr()
    assert cli.main(["convert", "--no-progress", str(src), str(tmp_path / "o2")]) == 0
    errors = (tmp_path / "o2" / "errors.tsv").read_text()
    assert "copied_output.dcm\tnot-an-image\ta derived instance of dicom-cae's own" in errors
    assert not any("of CAE" in pydicom.dcmread(p, stop_before_pixels=True).get("SeriesDescription", "")
                   for p in (tmp_path / "o2").rglob("*.dcm"))


def test_a_second_conversion_into_the_same_folder_stops_with_a_clear_line(tmp_path, capsys):
    """Issue 16 item 11: two conversions into one output folder both ran; the second now stops
    (exit 2) naming the first's pid, while the first holds the folder."""
    from dicom_cae import io

    one = tmp_path / "one"
    one.mkdir()
    (one / "ct.dcm").write_bytes((SAMPLES / "ct_phantom_1.dcm").read_bytes())
    import subprocess
    import sys

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from dicom_cae import io; "
                               f"io.lock_folder({str(tmp_path / 'o')!r}, '.dicom-cae-convert.lock'); print('held', flush=True); "
                               "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert cli.main(["convert", "--no-progress", str(one), str(tmp_path / "o")]) == 2
        assert f"another conversion (pid {holder.pid}) is writing into" in capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert cli.main(["convert", "--no-progress", str(one), str(tmp_path / "o")]) == 0
    assert io.walk(tmp_path / "o") and not any(p.name.startswith(".dicom-cae") for p in io.walk(tmp_path / "o"))


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_ctrl_c_stops_cleanly_and_a_rerun_completes(tmp_path, workers):
    """Issue 16 item 13: Ctrl-C (SIGINT) during convert printed a KeyboardInterrupt traceback
    and left no errors.tsv. Now: exit 130, no traceback, errors.tsv and the index of what was
    written are there, and the same command run again converts the rest and writes the report.
    The signal goes to the whole process group, as a terminal sends it: worker processes too."""
    import os
    import signal
    import sqlite3
    import subprocess
    import sys
    import time

    from pydicom.uid import generate_uid

    src = tmp_path / "in"
    src.mkdir()
    n = 48
    for i in range(n):
        ds = pydicom.dcmread(SAMPLES / "ct_phantom_1.dcm")
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["ctrl-c", str(i)])
        ds.InstanceNumber = i + 1
        ds.save_as(src / f"ct{i:02d}.dcm")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "dicom_cae", "convert", "--no-progress", "--batch-size", "4", "--workers", workers,
           str(src), str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 300
    while not list(out.rglob("*.dcm")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: every process of the group
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "run the same command again" in stderr
    assert (out / "errors.tsv").exists()
    with sqlite3.connect(out / "index.sqlite") as db:
        indexed = db.execute("select count(*) from instances").fetchone()[0]
    written = len([p for p in out.rglob("*.dcm")])
    assert 0 < indexed == written < n
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"converted {n - written} instance(s)" in done.stdout and f"{written} already done" in done.stdout
    assert len(list(out.glob("*/report.json"))) == 1


def test_a_default_conversion_applies_the_model(converted_defaults):
    """Issue 15: at the defaults the model used to be applied to no frame (quality 30 was above
    every band). A conversion with the defaults stores the model's correction (ModelWeight > 0)
    on the sample CT, MR and CR images, and says so in words."""
    weights = {}
    for f in derived_images(converted_defaults):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        tags = private_tags.read(ds)
        weights[f.name] = tags["ModelWeight"]
        assert tags["JPEGQuality"] == DEFAULT_QUALITY and tags["ModelName"] == DEFAULT_MODEL and tags["JPEGEncoder"] == "trellis"
        if tags["ModelWeight"][0] > 0:
            assert f"reconstructed by convolutional autoencoder {DEFAULT_MODEL} " in ds.DerivationDescription
    assert len(weights) == 6
    assert sum(w[0] > 0 for w in weights.values()) >= 5, weights


@pytest.fixture(scope="module")
def converted_defaults(tmp_path_factory):
    out = tmp_path_factory.mktemp("defaults")
    assert cli.main(["convert", "--no-progress", str(SAMPLES), str(out)]) == 1  # the bad samples fail
    return out


def test_a_damaged_file_without_a_suffix_is_failed_not_passed_over_as_not_dicom(tmp_path, pipe):
    """Files from a modality's export often have no suffix (IM0001): a damaged one is a failed
    image (exit 1), while a README.txt beside them is not DICOM (listed, exit 0 for it)."""
    src = tmp_path / "src"
    src.mkdir()
    data = (SAMPLES / "ct_phantom_1.dcm").read_bytes()
    (src / "IM0001").write_bytes(data[: len(data) // 3])  # cut inside the pixel data
    (src / "IM0002").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00garbage" * 40)  # a DICOM preamble, then junk
    (src / "IM0003").write_bytes(bytes(range(256)) * 64)  # its header overwritten: no DICOM left to recognise
    (src / "README.txt").write_text("exported by the modality\n")
    summary = convert(src, tmp_path / "out", pipe, progress=False)
    rows = {r.split("\t")[0].rsplit("/", 1)[1]: r.split("\t")[1] for r in
            (tmp_path / "out" / ERRORS_FILE).read_text().splitlines()[1:]}
    assert rows == {"IM0001": "failed", "IM0002": "failed", "IM0003": "failed", "README.txt": "not-dicom"}
    assert summary.exit_code == 1


def test_workers_auto_takes_processes_only_where_they_pay():
    """convert's default engine: one process per CPU (up to 4) from 64 files on 2 CPUs or more."""
    assert [cli.auto_workers(n, c) for n, c in ((63, 2), (64, 2), (64, 1), (500, 8), (500, None))] == [0, 2, 0, 4, 0]
