"""The ``dicom-cae`` command line: a thin layer over the library."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from importlib.metadata import entry_points
from pathlib import Path

from dicom_cae import __version__

LOGGER = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILURES, EXIT_USAGE = 0, 1, 2


def _quality(text: str) -> int:
    try:
        q = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= q <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality must be in 1..100, got {q}")
    return q


#: From this many input files, ``convert --workers auto`` runs local processes (their start-up pays).
AUTO_WORKERS_FILES = 64


def _at_least(text: str, minimum: int) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {n}")
    return n


def _workers(text: str) -> int | str:
    """A number of processes (0: this process) or 'auto'."""
    return text if text == "auto" else _at_least(text, 0)


def auto_workers(files: int, cpus: int | None) -> int:
    """``--workers auto``: one process per CPU (up to 4) for AUTO_WORKERS_FILES files or more
    on 2 CPUs or more; else 0 (this process: a small job does not pay the processes' start)."""
    return min(cpus or 1, 4) if files >= AUTO_WORKERS_FILES and (cpus or 1) >= 2 else 0


def _positive(text: str) -> int:
    return _at_least(text, 1)


def _qualities(text: str) -> tuple[int, ...]:
    return tuple(_quality(t) for t in text.split(",") if t.strip())


def _ratios(text: str) -> tuple[float, ...]:
    from dicom_cae.evaluation import DEFAULT_RATIOS

    if text == "default":
        return DEFAULT_RATIOS
    try:
        values = tuple(float(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not values or not all(0 < v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"compression ratios are in (0, 1], got {text!r}")
    return values


def _add_mapping_arg(p: argparse.ArgumentParser) -> None:
    from dicom_cae import mapping

    p.add_argument("--value-mapping", choices=mapping.NAMES, default=mapping.DEFAULT, metavar="NAME",
                   help=f"how modality values become the [0, 1] image JPEG codes: {', '.join(mapping.NAMES)} "
                        f"(default {mapping.DEFAULT}; minmax is the seed's)")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from dicom_cae.weights import DEFAULT_MODEL

    p.add_argument("--model", metavar="NAME", help=f"model name (see 'dicom-cae models'); default: {DEFAULT_MODEL}")
    p.add_argument("--weights", metavar="FILE", help="weights file (.weights.h5) instead of the shipped ones")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-cae",
        description="JPEG compression with autoencoder reconstruction for DICOM images.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-cae {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (per-file messages)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from dicom_cae.pipeline import DEFAULT_BATCH_SIZE, DEFAULT_QUALITY

    c = sub.add_parser("convert", help="convert a folder of DICOM files into derived reconstructed series")
    c.add_argument("src", metavar="SRC", help="a DICOM file or a folder (searched recursively)")
    c.add_argument("dst", metavar="DST", help="output folder: DST/<study>/<series>/<instance>.dcm")
    c.add_argument("--quality", type=_quality, default=None, metavar="Q", help=f"JPEG quality 1-100 (default {DEFAULT_QUALITY})")
    c.add_argument("--target-psnr", type=float, metavar="DB", help="per image, the lowest JPEG quality whose reconstruction reaches this PSNR (instead of --quality)")
    c.add_argument("--target-ssim", type=float, metavar="S", help="the same for SSIM (with --target-psnr: both)")
    c.add_argument("--target-ratio", type=float, metavar="R",
                   help="per image, the coding size (256 down to 128) and JPEG quality that spend at most R x 65,536 bytes "
                        "per frame and store the best image (instead of --quality; 0.0093 is the seed's point)")
    c.add_argument("--target-on", choices=("display", "seed"), default="display",
                   help="measure the target in the worst display window (default) or on the seed's min/max image")
    _add_mapping_arg(c)
    _add_model_args(c)
    c.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE, metavar="N", help=f"images per model batch (default {DEFAULT_BATCH_SIZE})")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.add_argument("--workers", type=_workers, metavar="N", default="auto",
                   help="run the batches and reports in N local processes, each with the model loaded once (a few "
                        "seconds and ~0.5 GB each); 0: in this process; auto (default): one per CPU, up to 4, when "
                        f"there are {AUTO_WORKERS_FILES} files or more and 2 CPUs or more, else this process")
    c.add_argument("--dask", metavar="tcp://HOST:PORT",
                   help="run the batches and reports on this Dask scheduler's workers (they need dicom-cae and the "
                        "same paths to SRC and DST)")

    t = sub.add_parser("train", help="train a model through the same normalize and JPEG path")
    t.add_argument("data", nargs="+", metavar="DATA", help="training folders")
    t.add_argument("--val", nargs="+", required=True, metavar="DATA", help="validation folders (other patients)")
    t.add_argument("--model", default="blockres", metavar="NAME", help="architecture (default blockres)")
    t.add_argument("--epochs", type=_positive, default=5, help="epochs (default 5)")
    t.add_argument("--passes", type=_positive, default=1, help="passes over the training set per epoch, each with new JPEG qualities and flips (default 1)")
    t.add_argument("--batch-size", type=_positive, default=16, help="training batch size (default 16)")
    t.add_argument("--learning-rate", type=float, default=3e-4, help="initial learning rate, cosine decay (default 3e-4)")
    t.add_argument("--qualities", type=_qualities, help="JPEG qualities to train at, comma separated (default 1-50 spread; one value trains a single-quality model)")
    t.add_argument("--val-qualities", type=_qualities, help="JPEG qualities to validate at after each epoch (default 1,10)")
    t.add_argument("--ssim-weight", type=float, default=0.005, help="weight of (1 - SSIM) added to the MSE loss (default 0.005; 0 for MSE only)")
    t.add_argument("--loss", choices=["mse", "bce"], help="base loss (default: bce for the seed's sigmoid output, mse otherwise)")
    t.add_argument("--no-augment", action="store_true", help="no flips or transposes")
    compute = t.add_mutually_exclusive_group()
    compute.add_argument("--mixed-precision", action="store_true", help="float16 compute (GPU)")
    compute.add_argument("--precision", choices=("float32", "bfloat16"), default="float32",
                   help="compute precision of models that allow bfloat16 (deblock): bfloat16 trains ~5x faster on CPUs "
                        "with bfloat16 units; weights stay float32 (default float32)")
    t.add_argument("--init-weights", metavar="FILE", help="start from these weights")
    t.add_argument("--coding-size", type=int, choices=(256, 224, 192, 160, 128), default=256,
                   help="train to restore JPEG of the image reduced to this size and upsampled (default 256: JPEG artefacts only)")
    t.add_argument("--quality-min", type=_quality, default=1, metavar="Q",
                   help="models told the coding size (deblock): the lowest quality trained at (default 1)")
    t.add_argument("--quality-max", type=_quality, default=95, metavar="Q",
                   help="models told the coding size (deblock): train at qualities --quality-min..Q, log-uniform (default 95)")
    t.add_argument("--display-weight", type=float, default=1.0,
                   help="deblock: weight of the MSE in the display windows (default 1)")
    t.add_argument("--block-weight", type=float, default=1.0,
                   help="deblock: weight of the error of the steps across block edges (default 1)")
    t.add_argument("--blockiness-weight", type=float, default=0.0,
                   help="deblock: weight of the squared log blockiness ratio against the original's (default 0)")
    _add_mapping_arg(t)
    t.add_argument("--out", default="runs/train", metavar="DIR", help="output folder (default runs/train)")
    t.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    e = sub.add_parser("evaluate", help="rate-distortion evaluation: JPEG, JPEG + model and JPEG 2000 at the same bytes")
    e.add_argument("data", nargs="+", metavar="DATA", help="folders or files of DICOM images")
    from dicom_cae.evaluation import DEFAULT_RD_QUALITIES

    e.add_argument("--qualities", type=_qualities, default=DEFAULT_RD_QUALITIES, metavar="Q,Q,...",
                   help="JPEG qualities (default " + ",".join(map(str, DEFAULT_RD_QUALITIES)) + ")")
    _add_model_args(e)
    e.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE, metavar="N",
                   help=f"images per model batch (default {DEFAULT_BATCH_SIZE})")
    e.add_argument("--out", default="runs/evaluate", metavar="DIR", help="output folder (default runs/evaluate)")
    _add_mapping_arg(e)
    e.add_argument("--ratios", type=_ratios, default=None, metavar="R,R,...",
                   help="also adaptive coding (size and quality per image) at these compression ratios, against "
                        "JPEG 2000 at the same bytes (default: none; 'default' for the seed's 0.0093 up to 0.0625)")

    r = sub.add_parser("report", help="rebuild the study reports of an output folder from its derived instances")
    r.add_argument("dir", metavar="DIR", help="an output folder of convert or serve (or one study folder in it)")
    r.add_argument("--sources", metavar="DIR", help="folder of the original files, to show them beside the reconstructions")
    r.add_argument("--identifiers", action="store_true", help="show the patient's name and ID in the reports")
    r.add_argument("--no-dicom", action="store_true", help="do not write the Encapsulated PDF instance")

    m = sub.add_parser("models", help="list the models and the weights that ship")
    m.add_argument("--json", action="store_true", help="print the model cards as JSON")

    # Commands of other installed packages (the DICOM node's 'serve'), found by entry point.
    for ep in entry_points(group="dicom_cae.commands"):
        try:
            ep.load()(sub)
        except ImportError as exc:  # a broken plugin must not take the other commands down
            print(f"dicom-cae: command {ep.name!r} unavailable: {exc}", file=sys.stderr)
    return parser


def _load_model(args: argparse.Namespace):
    from dicom_cae.model import load

    return load(args.model, weights=args.weights)


def cmd_convert(args: argparse.Namespace) -> int:
    from dicom_cae.convert import ERRORS_FILE, convert
    from dicom_cae.pipeline import Pipeline

    src = Path(args.src)
    if not src.exists():
        print(f"dicom-cae convert: error: {src} does not exist", file=sys.stderr)
        return EXIT_USAGE
    from dicom_cae.pipeline import DEFAULT_QUALITY, RatioTarget, Target

    try:
        if args.target_ratio is not None and (args.target_psnr or args.target_ssim):
            raise ValueError("--target-ratio and --target-psnr/--target-ssim exclude each other")
        if args.quality is not None and (args.target_ratio is not None or args.target_psnr or args.target_ssim):
            raise ValueError("--quality and a target (--target-psnr, --target-ssim, --target-ratio) exclude each other: "
                             "a target chooses the quality per image")
        args.quality = DEFAULT_QUALITY if args.quality is None else args.quality
        target = (Target(args.target_psnr, args.target_ssim, args.target_on)
                  if args.target_psnr or args.target_ssim else None)
        if args.target_ratio is not None:
            target = RatioTarget(args.target_ratio)
    except ValueError as exc:
        print(f"dicom-cae convert: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.dask:
        if args.workers not in ("auto", 0):
            print("dicom-cae convert: error: --workers and --dask exclude each other", file=sys.stderr)
            return EXIT_USAGE
        args.workers = 0
    elif args.workers == "auto":
        import os

        from dicom_cae import io as dicom_io

        args.workers = auto_workers(len(dicom_io.walk(src, skip=(Path(args.dst),))), os.cpu_count())
    recon = _load_model(args)
    pipe = Pipeline(recon, batch_size=args.batch_size, mapping=args.value_mapping)
    from dicom_cae import engines, runner

    settings = runner.Settings.of(pipe, quality=args.quality, target=target)
    try:
        engine = engines.engine_for(settings, workers=args.workers or 0, dask=args.dask)
    except (OSError, TimeoutError) as exc:
        print(f"dicom-cae convert: error: cannot reach the Dask scheduler at {args.dask}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from dicom_cae import io

    try:
        with engine:
            s = convert(src, args.dst, pipe, progress=not args.no_progress, engine=engine, settings=settings)
    except io.FolderInUse as exc:
        print(f"dicom-cae convert: error: another conversion (pid {exc.holder}) is writing into {args.dst}; "
              "run this one when it has finished, or into another folder", file=sys.stderr)
        return EXIT_USAGE
    rate = s.frames / s.seconds if s.seconds else 0.0
    print(
        f"converted {s.converted} instance(s) ({s.frames} image(s)) in {s.seconds:.1f} s ({rate:.1f} images/s) "
        f"with {recon.short_id}, value mapping {args.value_mapping}, on {engine.name}, at "
        + (f"{target.describe}; " if target else f"JPEG quality {args.quality}; ") +
        f"{s.skipped_done} already done, {len(s.duplicates)} duplicate(s), {len(s.not_images)} not image(s), "
        f"{len(s.not_dicom)} not DICOM, "
        f"{len(s.failed)} failed, {len(s.warnings)} converted with a warning; "
        f"{len(s.studies)} study report(s) in {args.dst}"
    )
    for e in s.failed:
        print(f"  failed: {e}", file=sys.stderr)
    for e in s.not_images:
        print(f"  not converted: {e}", file=sys.stderr)
    for e in s.duplicates:
        print(f"  duplicate: {e}", file=sys.stderr)
    for e in s.warnings:
        print(f"  warning: {e}", file=sys.stderr)
    if s.failed or s.not_images or s.duplicates or s.warnings:
        print(f"  (listed in {Path(args.dst) / ERRORS_FILE})", file=sys.stderr)
    if s.interrupted:
        print("interrupted: what was written is kept and indexed; run the same command again to finish "
              "(done instances are skipped) and to write the study reports", file=sys.stderr)
    return s.exit_code


def cmd_train(args: argparse.Namespace) -> int:
    from dicom_cae.model.train import DEFAULT_TRAIN_QUALITIES, DEFAULT_VAL_QUALITIES, TrainConfig, train

    for d in [*args.data, *args.val]:
        if not Path(d).exists():
            print(f"dicom-cae train: error: {d} does not exist", file=sys.stderr)
            return EXIT_USAGE
    if args.quality_min > args.quality_max:
        print(f"dicom-cae train: error: --quality-min {args.quality_min} is above --quality-max {args.quality_max}",
              file=sys.stderr)
        return EXIT_USAGE
    cfg = TrainConfig(
        model=args.model,
        train_dirs=tuple(args.data),
        val_dirs=tuple(args.val),
        out_dir=args.out,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        train_qualities=args.qualities or DEFAULT_TRAIN_QUALITIES,
        val_qualities=args.val_qualities or DEFAULT_VAL_QUALITIES,
        augment=not args.no_augment,
        seed=args.seed,
        mixed_precision=args.mixed_precision,
        precision=args.precision,
        value_mapping=args.value_mapping,
        init_weights=args.init_weights,
        coding_size=args.coding_size,
        ssim_weight=args.ssim_weight,
        repeats=args.passes,
        loss=args.loss,
        quality_min=args.quality_min,
        quality_max=args.quality_max,
        display_weight=args.display_weight,
        block_weight=args.block_weight,
        blockiness_weight=args.blockiness_weight,
    )
    try:
        train(cfg)
    except ValueError as exc:
        print(f"dicom-cae train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from dicom_cae import dataset, evaluation, rd_report

    for d in args.data:
        if not Path(d).exists():
            print(f"dicom-cae evaluate: error: {d} does not exist", file=sys.stderr)
            return EXIT_USAGE
    recon = _load_model(args)
    images = dataset.load(list(args.data), mapping=args.value_mapping)
    if len(images) == 0:
        print("dicom-cae evaluate: error: no usable images", file=sys.stderr)
        return EXIT_USAGE
    print(f"{len(images)} image(s); qualities {','.join(map(str, args.qualities))}; model {recon.short_id}; "
          f"value mapping {args.value_mapping}", flush=True)
    codec_name = f"JPEG+{recon.name}"
    reconstruct = lambda x, q: recon(x, q, batch_size=args.batch_size, mapping=args.value_mapping)  # noqa: E731
    filtered = recon.edge_filter is not None  # what is stored of its output is filtered too (guard.stored_candidates)
    rows = evaluation.rd_rows(images, list(args.qualities), reconstruct, recon.name, edge_filter=filtered)
    coded = lambda x, q, size: recon(x, q, batch_size=args.batch_size, mapping=args.value_mapping, coding_size=size)  # noqa: E731
    ratio_rows = (evaluation.ratio_rows(images, list(args.ratios), coded, recon.name, edge_filter=filtered)
                  if args.ratios else None)
    summary = rd_report.write(rows, Path(args.out), model_codec=codec_name,
                              description=f"JPEG + {recon.name} reconstruction (weights sha256 {recon.sha256[:16]})",
                              value_mapping=args.value_mapping, ratio_rows=ratio_rows)
    print(rd_report.markdown(summary, codec_name) + (rd_report.adaptive_markdown(summary["adaptive"]) if ratio_rows else ""))
    print(f"written to {args.out}: jpeg.json, {codec_name.lower().replace('+', '-')}.json, jpeg2000.json, rd.png, per_image.csv, summary.json, tables.md")
    return EXIT_OK


def cmd_report(args: argparse.Namespace) -> int:
    from dicom_cae import io, report

    root = Path(args.dir)
    if not root.is_dir():
        print(f"dicom-cae report: error: {root} is not a folder", file=sys.stderr)
        return EXIT_USAGE
    sources: dict[str, Path] = {}
    if args.sources:
        for f in io.walk(args.sources):
            try:
                sources[str(io.read(f, pixels=False).SOPInstanceUID)] = f
            except Exception:  # not DICOM, or no UID: not a source
                continue
    # A study folder holds series folders of .dcm files; the output root holds study folders.
    studies = [root] if any(root.glob("*/*.dcm")) else sorted(d for d in root.iterdir() if d.is_dir() and any(d.glob("*/*.dcm")))
    if not studies:
        print(f"dicom-cae report: error: no study folders with derived instances under {root}", file=sys.stderr)
        return EXIT_USAGE
    for study in studies:
        path = report.write(study, sources=sources, identifiers=args.identifiers, document=not args.no_dicom)
        print(f"{study.name}: {path.name}, {report.REPORT_HTML}" + ("" if args.no_dicom else ", Encapsulated PDF"))
    return EXIT_OK


def cmd_models(args: argparse.Namespace) -> int:
    from dicom_cae.model.architectures import ARCHITECTURES
    from dicom_cae.model.reconstructor import choose_precision
    from dicom_cae.precision import PRECISION_VARIABLE
    from dicom_cae.weights import DEFAULT_MODEL, shipped_card_list

    cards = shipped_card_list()
    if args.json:
        print(json.dumps(cards, indent=2))
        return EXIT_OK
    for name, arch in ARCHITECTURES.items():
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name}{default}: {arch.description}")
        if arch.bfloat16:  # where it runs in bfloat16, what it stores differs a little from float32
            print(f"  runs here in {choose_precision(name)} (set {PRECISION_VARIABLE} to float32, bfloat16 or auto)")
        mine = sorted((c for c in cards if c["model"] == name), key=lambda c: "serves" in c)
        if not mine:
            print(f"  no weights ship; train it with 'dicom-cae train --model {name}'")
        for card in mine:
            band = f"JPEG qualities {card['serves'][0]}-{card['serves'][1]}" if "serves" in card else "every JPEG quality"
            if arch.uses_coding:
                band += " and coding size"
            band += f", value mapping {card['data'].get('value_mapping', 'minmax')}"
            band += f", JPEG by the {card['training'].get('jpeg_encoder', 'pillow')} encoder"
            if card.get("coding_size", 256) != 256:
                band = f"JPEG of a {card['coding_size']}x{card['coding_size']} coding (upsampled), " + band
            stages = [*card["training"].get("earlier_stages", ()), card["training"]]
            epochs = f"{card['training']['epochs']} epochs" if len(stages) == 1 else (
                f"{sum(s['epochs'] for s in stages)} epochs in {len(stages)} stages "
                f"({' + '.join(str(s['epochs']) for s in stages)})")
            print(f"  weights {card['weights_file']} (sha256 {card['sha256'][:16]}...) for {band}; "
                  f"trained {epochs} on {card['data']['train_images']} images")
            if card.get("decoder"):  # what is done to the model's output (the figures below include it)
                print(f"  decoding: {card['decoder']}")
            reader = card["validation"].get("reader_by_quality")
            if reader:  # what is stored, as a reader sees it
                print("    validation, plain JPEG -> stored: worst display window PSNR; blockiness (x original); model used")
                for q, v in reader.items():
                    j, m = v["jpeg"], v["model"]
                    print(f"    q{q:>3}: {j['bpp']:.3f} bpp  {j['display_psnr']:.2f} -> {m['display_psnr']:.2f} dB  "
                          f"{j['display_blockiness']:.2f} -> {m['display_blockiness']:.2f}  {100 * m['model_used']:.0f} % of images")
                continue
            for q, v in card["validation"]["by_quality"].items():
                j, m = v["jpeg"], v["model"]
                print(f"    q{q:>3}: ratio {j['compression_ratio']:.4f}  PSNR {j['psnr']:.2f} -> {m['psnr']:.2f} dB  "
                      f"SSIM {j['ssim']:.4f} -> {m['ssim']:.4f}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from dicom_cae.errors import ModelError

    try:
        commands = {"convert": cmd_convert, "train": cmd_train, "models": cmd_models, "report": cmd_report,
                    "evaluate": cmd_evaluate}
        return commands[args.command](args) if args.command in commands else args.func(args)
    except ModelError as exc:
        print(f"dicom-cae {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C outside convert's own handling (loading the model, say): no traceback
        print(f"dicom-cae {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `dicom-cae models | head`: the reader left; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
