import numpy as np
import pytest

from dicom_cae import codec
from dicom_cae.errors import ModelError
from dicom_cae.model import build, load
from dicom_cae.model.reconstructor import sha256_of, shipped_cards
from dicom_cae.weights import DEFAULT_MODEL


def test_seed_is_exactly_the_fixed_architecture():
    m = build("seed")
    assert m.count_params() == 591_617
    convs = [l for l in m.layers if l.__class__.__name__ == "Conv2D"]
    assert [c.filters for c in convs] == [64, 128, 128, 128, 128, 64, 1]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert [c.activation.__name__ for c in convs] == ["relu"] * 6 + ["sigmoid"]
    kinds = [l.__class__.__name__ for l in m.layers]
    assert kinds.count("MaxPooling2D") == 3 and kinds.count("UpSampling2D") == 3
    assert m.input_shape == (None, 256, 256, 1) and m.output_shape == (None, 256, 256, 1)


def test_variants_keep_the_seed_budget():
    assert build("seed-residual").count_params() == 591_617
    assert build("blockres").count_params() == 591_552


def test_residual_models_start_as_the_identity_on_the_jpeg_image():
    # Zero-initialized last layer: before training the output is the JPEG decode itself.
    from dicom_cae.model.reconstructor import from_model

    rng = np.random.default_rng(0)
    jpeg = np.stack([codec.jpeg_roundtrip(rng.random((256, 256)), 10)[0] for _ in range(3)])
    for name in ("seed-residual", "blockres"):
        out = from_model(build(name), name)(jpeg, 10, batch_size=2)
        np.testing.assert_allclose(out, jpeg, atol=1e-6)


def test_unknown_model_name_is_a_clear_error():
    with pytest.raises(ModelError, match="unknown model 'nope'; known: seed, seed-residual, blockres, deblock, deblock-deep"):
        load("nope")


def test_shipped_weights_match_their_card_and_beat_jpeg():
    """The default weights' card: hash, patient-level split, and what is stored (never below
    plain JPEG) ahead of plain JPEG where a reader looks, at every quality on the card."""
    cards = shipped_cards()
    assert {DEFAULT_MODEL, "seed"} <= set(cards)
    card = cards[DEFAULT_MODEL]
    assert sha256_of(card["weights_path"]) == card["sha256"]
    assert card["sha256"][:8] in card["weights_file"]
    assert card["data"]["train_patients"] > 0 and card["data"]["val_patients"] > 0
    assert card["training"]["jpeg_encoder"] == codec.DEFAULT_ENCODER
    from dicom_cae.model.train import decoder_note

    # its figures were measured with today's decoding around the model (flips, edge filter)
    assert card["decoder"] == decoder_note(DEFAULT_MODEL)
    for q, row in card["validation"]["reader_by_quality"].items():
        assert row["model"]["display_psnr"] >= row["jpeg"]["display_psnr"], q
        assert row["model"]["display_blockiness"] <= row["jpeg"]["display_blockiness"], q
        assert row["model"]["model_used"] > 0.3, q
    from dicom_cae.pipeline import DEFAULT_QUALITY

    near = [row for q, row in card["validation"]["reader_by_quality"].items() if abs(int(q) - DEFAULT_QUALITY) <= 10]
    assert near and all(row["model"]["model_used"] >= 0.9 for row in near)  # the model at (around) the default


def test_default_model_improves_jpeg_on_a_sample_image(model):
    from dicom_cae import image, io
    from tests.conftest import SAMPLES

    unit, _ = image.normalize(io.read(SAMPLES / "mr_nonsquare.dcm"), "mr")
    jpeg, _ = codec.jpeg_roundtrip(unit[0], 5)
    out = model(jpeg[None], 5)
    err_jpeg = np.mean((jpeg - unit[0]) ** 2)
    err_model = np.mean((out[0] - unit[0]) ** 2)
    assert err_model < err_jpeg


def test_weights_file_of_the_wrong_architecture_is_refused(tmp_path, model):
    with pytest.raises(ModelError, match="do not fit model 'seed'"):
        load("seed", weights=model.weights_path)
    with pytest.raises(ModelError, match="weights file not found"):
        load("seed", weights=tmp_path / "none.weights.h5")


def test_batching_pads_the_last_batch_and_gives_the_same_result(model):
    rng = np.random.default_rng(1)
    jpeg = np.stack([codec.jpeg_roundtrip(rng.random((256, 256)), 20)[0] for _ in range(5)])
    a = model(jpeg, 20, batch_size=4)
    b = np.concatenate([model(jpeg[i : i + 1], 20, batch_size=4) for i in range(5)])
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_the_default_model_is_the_mean_over_four_flips_and_so_flips_with_its_input(model):
    """Issue 15: the stored reconstruction is the mean of the model's outputs over the input
    flipped none, left-right, up-down and both ways (each flipped back; reconstructor.FLIPS), a
    self-ensemble that gains in the worst display window. The four are a group, so a flipped
    image comes back as the reconstruction flipped, which the model alone does not do."""
    from dicom_cae import image, io
    from dicom_cae.model.reconstructor import FLIPS
    from tests.conftest import SAMPLES

    assert model.flips == len(FLIPS) == 4
    unit, _ = image.normalize(io.read(SAMPLES / "mr_nonsquare.dcm"), "mr")
    jpeg = codec.jpeg_roundtrip(unit[0], 10)[0][None]
    for axes in ((2,), (1,), (1, 2)):
        flipped = np.ascontiguousarray(np.flip(jpeg, axes))
        np.testing.assert_allclose(model(flipped, 10), np.flip(model(jpeg, 10), axes), atol=1e-5)
        alone = np.abs(model(flipped, 10, flips=1) - np.flip(model(jpeg, 10, flips=1), axes)).max()
        assert alone > 1e-3  # the model alone is not flip-equivariant: the test above can fail
    each = [np.flip(model(np.ascontiguousarray(np.flip(jpeg, a)), 10, flips=1, filter_edges=False), a) for a in FLIPS]
    np.testing.assert_allclose(model(jpeg, 10, filter_edges=False), np.mean(each, axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="flips must be 1 to 4"):
        model(jpeg, 10, flips=5)


def test_the_precision_is_float32_unless_bfloat16_units_or_the_setting_say_otherwise(monkeypatch):
    """The deblock model runs in bfloat16 where the CPU has bfloat16 units and no GPU is
    visible, or where DICOM_CAE_PRECISION says so; float32 elsewhere, and the seed always
    (its published figures stay reproducible). A mistyped setting is a clear error."""
    from dicom_cae.model.reconstructor import choose_precision
    from dicom_cae.precision import PRECISION_VARIABLE

    amx = frozenset({"avx512f", "amx_bf16"})
    assert choose_precision("deblock", setting="auto", flags=amx, gpu=False) == "bfloat16"
    assert choose_precision("deblock", setting="", flags=frozenset({"avx512_bf16"}), gpu=False) == "bfloat16"
    assert choose_precision("deblock", setting="auto", flags=frozenset({"avx2", "avx512f"}), gpu=False) == "float32"
    assert choose_precision("deblock", setting="auto", flags=amx, gpu=True) == "float32"
    assert choose_precision("deblock", setting="float32", flags=amx, gpu=False) == "float32"
    assert choose_precision("deblock", setting="bfloat16", flags=frozenset(), gpu=True) == "bfloat16"
    assert choose_precision("seed", setting="bfloat16", flags=amx, gpu=False) == "float32"
    monkeypatch.setenv(PRECISION_VARIABLE, " Float32 ")
    assert choose_precision("deblock", flags=amx, gpu=False) == "float32"
    assert load("deblock").precision == "float32"
    monkeypatch.setenv(PRECISION_VARIABLE, "fp16")
    with pytest.raises(ModelError, match="DICOM_CAE_PRECISION='fp16': expected float32, bfloat16 or auto"):
        load("deblock")
    with pytest.raises(ModelError, match="model 'seed' runs in float32, not 'bfloat16'"):
        build("seed", precision="bfloat16")


def test_bfloat16_runs_the_convolutions_in_bfloat16_and_adds_the_correction_in_float32():
    """In bfloat16 the model's convolutions compute in bfloat16 (4x faster on CPUs with bfloat16
    units) and its correction is added to the float32 input in float32: the reconstruction
    differs from float32's by about 1e-4 rms, where rounding the output to bfloat16 would
    differ by about 1e-3 (its 8-bit mantissa: steps of 0.004 near 1)."""
    from dicom_cae import image, io
    from tests.conftest import SAMPLES

    fp32, bf16 = load("deblock", precision="float32"), load("deblock", precision="bfloat16")
    convs = [l for l in bf16.model.layers if l.__class__.__name__ == "Conv2D"]
    assert convs and all(c.compute_dtype == "bfloat16" and c.variable_dtype == "float32" for c in convs)
    assert bf16.model.layers[-1].compute_dtype == "float32" and bf16.model.output.dtype == "float32"
    assert all(c.compute_dtype == "float32" for c in fp32.model.layers if c.__class__.__name__ == "Conv2D")
    unit, _ = image.normalize(io.read(SAMPLES / "mr_nonsquare.dcm"), "mr")
    reference = unit[0]
    for q in (10, 50):
        jpeg = codec.jpeg_roundtrip(reference, q)[0][None]
        a, b = fp32(jpeg, q), bf16(jpeg, q)
        diff = np.sqrt(np.mean((a - b) ** 2))
        assert 0 < diff < 4e-4, (q, diff)
        err_a, err_b = (np.mean((x[0] - reference) ** 2) for x in (a, b))
        assert abs(10 * np.log10(err_a / err_b)) < 0.02, q  # PSNR within 0.02 dB
