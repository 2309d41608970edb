import json
from pathlib import Path

import pytest

from dicom_cae import cli
from dicom_cae.model import load
from tests.conftest import SAMPLES


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Sample files split by patient: CT and CR to train, MR to validate."""
    root = tmp_path_factory.mktemp("split")
    for sub, names in {
        "train": ["ct_phantom_1.dcm", "ct_phantom_2.dcm", "cr_monochrome1.dcm", "sr_not_an_image.dcm"],
        "val": ["mr_nonsquare.dcm", "mr_rle.dcm"],
    }.items():
        (root / sub).mkdir()
        for n in names:
            (root / sub / n).write_bytes((SAMPLES / n).read_bytes())
    return root


@pytest.mark.slow
def test_train_writes_weights_card_log_and_curves(split, tmp_path, capsys):
    out = tmp_path / "run"
    rc = cli.main([
        "train", str(split / "train"), "--val", str(split / "val"), "--model", "blockres",
        "--epochs", "2", "--batch-size", "2", "--qualities", "5,10", "--val-qualities", "10",
        "--out", str(out),
    ])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed and "PSNR jpeg/cae" in printed
    weights = list(out.glob("blockres-*.weights.h5"))
    assert len(weights) == 1
    card = json.loads(weights[0].with_name(weights[0].name.replace(".weights.h5", ".json")).read_text())
    assert card["training"]["epochs"] == 2 and card["data"]["train_images"] == 3
    assert card["data"]["val_patients"] == 1
    assert set(card["validation"]["by_quality"]) >= {"1", "10"}
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"mse", "psnr", "ssim", "pixel_accuracy", "compression_ratio"} <= set(log[0]["val"]["10"]["model"])
    assert (out / "curves.png").stat().st_size > 10_000
    # The trained weights load by file, their architecture read from the card beside them.
    recon = load(weights=weights[0])
    assert recon.name == "blockres" and recon.sha256 == card["sha256"]


def test_train_refuses_a_split_that_shares_patients(split, tmp_path, capsys):
    rc = cli.main(["train", str(split / "train"), "--val", str(split / "train"), "--epochs", "1", "--out", str(tmp_path)])
    assert rc == 2
    assert "the split must be at patient level" in capsys.readouterr().err


@pytest.mark.slow
def test_training_changes_the_weights_and_lowers_the_loss(split, tmp_path):
    """Starting from the shipped weights, at one quality without augmentation: the loss falls
    from the first epoch to the last and the weights that come out are not the ones that went in."""
    import numpy as np

    start = load("blockres")
    out = tmp_path / "run"
    rc = cli.main([
        "train", str(split / "train"), "--val", str(split / "val"), "--model", "blockres", "--epochs", "4",
        "--batch-size", "3", "--qualities", "5", "--val-qualities", "5", "--no-augment", "--learning-rate", "1e-3",
        "--init-weights", start.weights_path, "--out", str(out),
    ])
    assert rc == 0
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    trained = load(weights=next(out.glob("blockres-*.weights.h5")))
    assert trained.sha256 != start.sha256
    before, after = start.model.get_weights(), trained.model.get_weights()
    assert any(not np.allclose(a, b) for a, b in zip(before, after))


def test_a_deblock_epoch_draws_its_qualities_within_the_range_asked(split, tmp_path, capsys):
    """`--quality-min` narrows the log-uniform draw of a deblock epoch (a fine-tune aimed at the
    qualities the settings pick); the default keeps 1..95; a range upside down is refused."""
    import numpy as np

    from dicom_cae.model.train import TrainConfig, _reader_epoch_inputs

    images = np.random.default_rng(1).random((40, 256, 256), dtype=np.float32)
    windows = np.tile(np.asarray([0.0, 1.0], np.float32), (40, 3, 1))
    drawn = {}
    for lo, hi in ((1, 95), (4, 60)):
        cfg = TrainConfig(model="deblock", train_dirs=(), val_dirs=(), out_dir="", quality_min=lo, quality_max=hi,
                          repeats=3)
        x, _, _ = _reader_epoch_inputs(images, windows, cfg, np.random.default_rng(0))
        q = np.rint(x[1][:, 0] * 100).astype(int)
        assert q.min() >= lo and q.max() <= hi
        drawn[lo] = q
    assert drawn[1].min() < 4 and drawn[4].min() <= 5 and drawn[4].max() >= 40
    rc = cli.main(["train", str(split / "train"), "--val", str(split / "val"), "--model", "deblock",
                   "--quality-min", "40", "--quality-max", "20", "--out", str(tmp_path)])
    assert rc == 2 and "--quality-min 40 is above --quality-max 20" in capsys.readouterr().err


def test_a_deeper_deblock_starts_as_the_one_it_starts_from():
    """deblock-deep (seven convolutions) started from deblock's weights (five): the two more
    layers begin as the identity, so before any training it reconstructs exactly as deblock."""
    import numpy as np

    from dicom_cae import codec, image, io
    from dicom_cae.model import build
    from dicom_cae.model.reconstructor import from_model
    from dicom_cae.model.train import init_from

    shipped = load("deblock", precision="float32")
    deep = build("deblock-deep")
    assert deep.count_params() == 887_872
    init_from(deep, Path(shipped.weights_path))
    unit, _ = image.normalize(io.read(SAMPLES / "mr_nonsquare.dcm"), "mr")
    jpeg = codec.jpeg_roundtrip(unit[0], 10)[0][None]
    np.testing.assert_allclose(from_model(deep, "deblock-deep")(jpeg, 10), shipped(jpeg, 10), atol=1e-6)
    assert not np.allclose(shipped(jpeg, 10), jpeg, atol=1e-3)  # (the model does something to compare)


@pytest.mark.slow
def test_training_in_bfloat16_keeps_float32_weights_and_says_so(split, tmp_path, capsys):
    """`--precision bfloat16` trains deblock's convolutions in bfloat16: the weights saved are
    float32 and load in either precision, and the card says how it was trained."""
    out = tmp_path / "run"
    rc = cli.main([
        "train", str(split / "train"), "--val", str(split / "val"), "--model", "deblock", "--epochs", "1",
        "--batch-size", "2", "--val-qualities", "10", "--precision", "bfloat16", "--out", str(out),
    ])
    assert rc == 0
    weights = next(out.glob("deblock-*.weights.h5"))
    card = json.loads(weights.with_name(weights.name.replace(".weights.h5", ".json")).read_text())
    assert card["training"]["precision"] == "bfloat16 (float32 weights)"
    for precision in ("float32", "bfloat16"):
        recon = load(weights=weights, precision=precision)
        assert recon.precision == precision and all(w.dtype == "float32" for w in recon.model.weights)
    assert card["validated_in"] == "bfloat16"  # the figures on the card were computed so
    capsys.readouterr()
    rc = cli.main(["train", str(split / "train"), "--val", str(split / "val"), "--model", "seed", "--epochs", "1",
                   "--precision", "bfloat16", "--out", str(tmp_path / "seed")])
    assert rc == 2 and "model 'seed' trains in float32 only" in capsys.readouterr().err
