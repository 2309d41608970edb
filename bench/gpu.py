"""Images/s on the device TensorFlow sees (a GPU when there is one), end to end and for the
model alone, and which stage bounds the pipeline.

    python bench/gpu.py [--data DIR] [--files 64] [--batch-sizes 16,64] [--quality 30]

Prints, from one run: TensorFlow's devices; per stage, ms per image (read; prepare: value
mapping + JPEG; model: batched reconstruction; finish: guard + metrics + derived instance +
write) at each batch size; the model alone (warm, its input already in memory) in images/s;
``convert`` end to end in this process (reports included) in images/s; and the stage that
bounds it (the CPU stages run in threads beside the model's calls, so the slowest stage sets
the pace). Ready for a machine with a GPU; on the CPU it gives the CPU's figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "ct" / "pancreas-ct-cb-001"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA if DEFAULT_DATA.exists() else ROOT / "sample_dicom")
    ap.add_argument("--files", type=int, default=64)
    ap.add_argument("--batch-sizes", default="16,64")
    ap.add_argument("--quality", type=int, default=30)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from dicom_cae import convert, io
    from dicom_cae.errors import DicomInputError
    from dicom_cae.model import load
    from dicom_cae.pipeline import Pipeline

    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}; devices: {', '.join(d.device_type + ':' + d.name for d in tf.config.list_physical_devices())}")
    files = io.walk(args.data)[: args.files]
    reconstructor = load()
    tmp = Path(tempfile.mkdtemp(prefix="dicom-cae-gpu-"))
    try:
        src = tmp / "src"
        src.mkdir()
        for f in files:
            os.symlink(f.resolve(), src / f.name)
        for b in [int(x) for x in args.batch_sizes.split(",")]:
            pipe = Pipeline(reconstructor, batch_size=b)
            t0 = time.perf_counter()
            datasets = [io.read(f) for f in files]
            t_read = time.perf_counter() - t0
            t0 = time.perf_counter()
            preps = []
            for f, ds in zip(files, datasets):
                try:
                    preps.append(pipe.prepare(ds, str(f), quality=args.quality))
                except DicomInputError:
                    pass
            t_prep = time.perf_counter() - t0
            n = sum(p.frames for p in preps)
            pipe.reconstruct(preps[:1])  # warm: graph and device set up
            t0 = time.perf_counter()
            recon = [r for i in range(0, len(preps), b) for r in pipe.reconstruct(preps[i : i + b])]
            t_model = time.perf_counter() - t0
            t0 = time.perf_counter()
            for p, r in zip(preps, recon):
                io.write(pipe.finish(p, r).dataset, tmp / "finish" / f"{len(os.listdir(tmp))}.dcm")
            t_finish = time.perf_counter() - t0
            import numpy as np

            jpeg = np.concatenate([p.jpeg for p in preps])
            reconstructor(jpeg[:b], args.quality, batch_size=b)
            t0 = time.perf_counter()
            reconstructor(jpeg, args.quality, batch_size=b)
            t_alone = time.perf_counter() - t0
            out = tmp / f"out-{b}"
            s = convert.convert(src, out, pipe, quality=args.quality, progress=False)
            stages = {"read": t_read, "prepare": t_prep, "model": t_model, "finish": t_finish}
            print(f"\nbatch {b}: {n} images ({len(files)} files)")
            for name, t in stages.items():
                print(f"  {name:8s} {1000 * t / n:7.1f} ms/image")
            print(f"  model alone: {n / t_alone:8.1f} images/s")
            print(f"  convert end to end (reports included): {s.frames / s.seconds:8.1f} images/s ({s.seconds:.1f} s)")
            print(f"  bound by: {max(stages, key=stages.get)}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
