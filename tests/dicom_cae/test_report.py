"""The readable reports: HTML in a real browser, the Encapsulated PDF, and rebuilding from tags."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile

import pydicom
import pytest

from dicom_cae import cli, private_tags
from tests.conftest import ROOT, dciodvfy_errors, need_tool

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def _study(out, modality):
    for report in out.glob("*/report.json"):
        if json.loads(report.read_text())["modalities"] == [modality]:
            return report.parent
    raise AssertionError(f"no {modality} study under {out}")


def _pdf_instance(study):
    docs = [f for f in study.rglob("*.dcm") if pydicom.dcmread(f, stop_before_pixels=True).Modality == "DOC"]
    assert len(docs) == 1
    return docs[0]


def test_html_report_is_self_contained_and_names_no_patient(converted_samples):
    out, _ = converted_samples
    page = (_study(out, "CT") / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3  # regression, error, worst images
    assert "http://" not in page and "https://" not in page and "src='file" not in page
    for text in ("Study Instance UID", "deblock", "JPEG quality", "slope", "Bland-Altman", "median |error|", "HU"):
        assert text in page, text
    assert "Phantom" not in page and "SAMPLE-CT" not in page


def test_html_report_renders_in_chromium_without_errors(converted_samples):
    out, _ = converted_samples
    chromium = need_tool("chromium")
    page = _study(out, "CT") / "report.html"
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                             capture_output=True, text=True, timeout=120).stdout
    assert 'data-images="3/3"' in dom and 'data-errors="0"' in dom
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report-ct.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,3800",
                        f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    assert shot.stat().st_size > 50_000


def test_encapsulated_pdf_is_valid_opens_and_references_the_series(converted_samples, tmp_path):
    out, _ = converted_samples
    study = _study(out, "CT")
    doc_path = _pdf_instance(study)
    assert dciodvfy_errors(doc_path) == []
    doc = pydicom.dcmread(doc_path)
    assert doc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.104.1" and doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    derived = {f.stem for f in study.rglob("*.dcm") if f != doc_path}
    assert {item.ReferencedSOPInstanceUID for item in doc.SourceInstanceSequence} == derived
    assert doc.StudyInstanceUID == study.name and doc.SeriesInstanceUID not in {pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID for f in study.rglob("*.dcm") if f != doc_path}
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(doc.EncapsulatedDocument[: doc.EncapsulatedDocumentLength])
    subprocess.run([need_tool("pdftoppm"), "-r", "50", "-png", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")], check=True)
    page = next(tmp_path.glob("page*.png"))
    assert page.stat().st_size > 5_000


def test_report_command_rebuilds_the_same_figures_from_the_tags(converted_samples, tmp_path, capsys):
    out, _ = converted_samples
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for f in copy.glob("*/report.*"):
        f.unlink()
    assert cli.main(["report", str(copy)]) == 0
    assert capsys.readouterr().out.count("report.json, report.html, Encapsulated PDF") == 3
    for original in out.glob("*/report.json"):
        rebuilt = copy / original.parent.name / "report.json"
        assert json.loads(rebuilt.read_text()) == json.loads(original.read_text())
        assert (rebuilt.parent / "report.html").exists()
    assert len([f for f in copy.rglob("*.dcm") if pydicom.dcmread(f, stop_before_pixels=True).Modality == "DOC"]) == 3


def test_identifiers_only_on_request(converted_samples, tmp_path):
    out, _ = converted_samples
    copy = tmp_path / "ct"
    shutil.copytree(_study(out, "CT"), copy)
    assert cli.main(["report", str(copy), "--identifiers", "--no-dicom"]) == 0
    page = (copy / "report.html").read_text()
    assert "Phantom^ct" in page and "SAMPLE-CT" in page
    assert cli.main(["report", str(tmp_path / "absent")]) == 2


def test_the_html_report_fits_1280_pixels_without_a_horizontal_scrollbar(converted_samples):
    """Issue 16 item 15: the per-image table needed a horizontal scrollbar at 1280 px. The page
    measures itself in Chromium at 1280 px (the page and every table's scroll box)."""
    out, _ = converted_samples
    chromium = need_tool("chromium")
    for modality in ("CT", "MR"):
        page = _study(out, modality) / "report.html"
        with tempfile.TemporaryDirectory() as profile:
            dom = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1280,900",
                                  "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120).stdout
        assert 'data-too-wide="false"' in dom, modality


def test_every_pdf_page_is_a4_and_says_not_for_primary_diagnosis(converted_samples, tmp_path):
    """Issue 16 item 15: the PDF had pages of five sizes, the use restriction in one table row
    only, and metric names cut on its first page. pdfinfo and pdftotext (poppler) read it back."""
    from dicom_cae.report_html import METRICS

    doc = pydicom.dcmread(_pdf_instance(_study(converted_samples[0], "CT")))
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(doc.EncapsulatedDocument[: doc.EncapsulatedDocumentLength])
    need_tool("pdftoppm")
    info = subprocess.run(["pdfinfo", "-f", "1", "-l", "99", str(pdf)], capture_output=True, text=True, check=True).stdout
    sizes = [line for line in info.splitlines() if line.startswith("Page") and "size:" in line]
    assert len(sizes) >= 4 and all("(A4)" in line for line in sizes), sizes
    for n in range(1, len(sizes) + 1):
        text = subprocess.run(["pdftotext", "-f", str(n), "-l", str(n), str(pdf), "-"], capture_output=True, text=True,
                              check=True).stdout
        assert "not for primary diagnosis" in text.replace("\n", " "), n
        if n == 1:
            for _, name in METRICS:
                if name.startswith(("Mean", "PSNR", "SSIM", "Pixel", "Blockiness")):
                    assert name in text, name


def test_the_agreement_statistics_have_their_signs_and_figures_from_the_tags(converted_samples):
    """Bland-Altman is reconstructed - original (a reconstruction brighter than its original is a
    positive bias), its limits are bias -/+ 1.96 SD, and the regression is reconstructed on
    original: each recomputed here from the private tags of the derived files."""
    import numpy as np

    out, _ = converted_samples
    for study in out.glob("*/report.json"):
        rep = json.loads(study.read_text())
        tags = [private_tags.read(pydicom.dcmread(f)) for f in study.parent.rglob("*.dcm")
                if pydicom.dcmread(f, stop_before_pixels=True).Modality != "DOC"]
        x = np.array([v for t in tags for v in t["MeanIntensityOriginal"]])
        y = np.array([v for t in tags for v in t["MeanIntensityReconstructed"]])
        ba = rep["bland_altman"]
        assert ba["bias"] == pytest.approx(float(np.mean(y - x)), abs=1e-6)  # the report rounds to 6 decimals
        if len(x) > 1:
            sd = float(np.std(y - x, ddof=1))
            assert ba["sd"] == pytest.approx(sd, abs=1e-6)
            assert ba["lower"] == pytest.approx(ba["bias"] - 1.96 * sd, abs=2e-6)
            assert ba["upper"] == pytest.approx(ba["bias"] + 1.96 * sd, abs=2e-6)
            slope, intercept = np.polyfit(x, y, 1)
            assert rep["regression"]["slope"] == pytest.approx(slope, abs=1e-6)
            assert rep["regression"]["intercept"] == pytest.approx(intercept, abs=1e-6)


def test_the_pdf_shows_the_htmls_png_pixels_without_compressing_them_again(tmp_path):
    """Issue 17 (reports that cost little): a picture is PNG-encoded once; the PDF takes the
    PNG's compressed data with its predictors. The images a PDF reader extracts (poppler's
    pdfimages) are the pixels, whether the PDF reused the PNG or compressed them itself."""
    import numpy as np
    from PIL import Image

    from dicom_cae import pdf, report_html

    pixels = np.random.default_rng(0).integers(0, 256, (40, 60, 3)).astype(np.uint8)
    pixels[:, :30] = np.arange(30, dtype=np.uint8)[None, :, None] * 8  # a smooth part: the predictors do work
    doc = pdf.Document("png reuse")
    page = doc.page()
    page.image(pixels, 10, 10, 200, report_html.png(pixels))
    page.image(pixels, 10, 300, 200)
    data = bytes(doc)
    assert data.count(b"/Predictor 15") == 1
    (tmp_path / "t.pdf").write_bytes(data)
    subprocess.run([need_tool("pdfimages"), "-png", str(tmp_path / "t.pdf"), str(tmp_path / "im")], check=True)
    extracted = sorted(tmp_path.glob("im-*.png"))
    assert len(extracted) == 2
    for path in extracted:
        assert np.array_equal(np.asarray(Image.open(path).convert("RGB")), pixels), path.name
    assert pdf.png_data(b"not a png", pixels.shape) is None
    assert pdf.png_data(report_html.png(pixels[:, :, 0]), pixels.shape) is None  # grey: not what the PDF declares
    assert pdf.png_data(report_html.png(pixels), (41, 60, 3)) is None


def test_one_image_has_a_bias_but_no_limits_of_agreement(converted_samples):
    """A study of one image has no standard deviation: its Bland-Altman chart draws the bias
    alone (three labels on one line overlapped before) and its text says why there are no
    limits, nor a regression line; a study of several draws and states them."""
    import numpy as np

    from dicom_cae.report_html import agreement_lines

    out, _ = converted_samples
    seen = set()
    for report in out.glob("*/report.json"):
        rep = json.loads(report.read_text())
        lines = agreement_lines(rep["bland_altman"])
        diff = np.array([r["mean_reconstructed"] - r["mean_original"] for r in rep["per_image"]])
        if len(diff) == 1:
            assert [dashed for _, dashed, _ in lines] == [False]
        else:
            sd = float(np.std(diff, ddof=1))
            assert [dashed for _, dashed, _ in lines] == [False, True, True]
            assert lines[1][0] == pytest.approx(diff.mean() + 1.96 * sd, abs=2e-6)
            assert lines[2][0] == pytest.approx(diff.mean() - 1.96 * sd, abs=2e-6)
        page = (report.parent / "report.html").read_text()
        one = rep["images"] == 1
        assert ("no limits of agreement (they need two images or more)" in page) == one
        assert ("No least-squares line over 1 image(s)" in page) == one
        if not one:
            assert f"limits of agreement {rep['bland_altman']['lower']:.5f} to" in page
        seen.add(one)
    assert seen == {True, False}


def test_the_model_row_names_the_precision_the_model_computed_in(converted_samples, model):
    """Issue 15 (say truthfully what the model did): each derived instance records the
    arithmetic its model ran in (ModelPrecision), as its Derivation Description does, and the
    report's Model row names it."""
    out, _ = converted_samples
    precision = model.precision
    for report in out.glob("*/report.json"):
        rep = json.loads(report.read_text())
        for f in report.parent.rglob("*.dcm"):
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            if ds.Modality == "DOC":
                continue
            assert private_tags.read(ds)["ModelPrecision"] == precision
            assert ("computed in bfloat16" in ds.DerivationDescription) == (precision == "bfloat16")
        assert rep["models"] and all(f"convolutions in {precision}" in m for m in rep["models"])
        assert f"convolutions in {precision}" in (report.parent / "report.html").read_text()
