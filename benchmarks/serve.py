"""The served model's in-process ceiling: decode + preprocess + forward, one image per forward against batches
of 32, directly and through the batcher (concurrent single-image requests, as /predict makes them).

    python benchmarks/serve.py                      # prints a table, writes benchmarks/results/serve.json
    python benchmarks/serve.py --arch resnet18 --image-size 160 --images 64

The model has random weights (speed does not depend on them); the images are 640×480 JPEGs decoded the way
/predict decodes them. Ratios are against the batch-1 row of the same run. No HTTP here: that is another script.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.ml.backbones import build_model  # noqa: E402
from app.ml.predictor import LoadedModel  # noqa: E402
from app.services.prediction import ImageUpload, decode_uploads  # noqa: E402
from app.serving.batcher import Batcher, serving_threads  # noqa: E402
from app.serving.predictor import TorchPredictor  # noqa: E402


def jpegs(n: int, width: int = 640, height: int = 480) -> list[bytes]:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        base = np.stack([(xx + 7 * i) % 256, (yy + 3 * i) % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
        noisy = np.clip(base.astype(np.int16) + rng.integers(-20, 20, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(noisy).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def decode(data: list[bytes]) -> list[Image.Image]:
    s = Settings()
    return decode_uploads(
        [ImageUpload(f"{i}.jpg", d) for i, d in enumerate(data)], len(data), s.max_predict_image_bytes
    )


def direct(predictor: TorchPredictor, data: list[bytes], batch: int) -> float:
    """Seconds for every image, `batch` per forward, decode and preprocess included (one thread)."""
    start = time.perf_counter()
    for i in range(0, len(data), batch):
        images = decode(data[i : i + batch])
        predictor.predict_batch(torch.stack([predictor.preprocess(img) for img in images]))
    return time.perf_counter() - start


def batched(predictor: TorchPredictor, data: list[bytes], clients: int, settings: Settings) -> tuple[float, list[int]]:
    """Seconds for every image as single-image requests from `clients` threads through the batcher."""
    sizes: list[int] = []
    forward = predictor.predict_batch

    def counted(x: torch.Tensor) -> torch.Tensor:
        sizes.append(int(x.shape[0]))
        return forward(x)

    predictor.predict_batch = counted  # type: ignore[method-assign]
    batcher = Batcher.from_settings(settings)
    todo = list(range(len(data)))
    lock = threading.Lock()

    def client() -> None:
        while True:
            with lock:
                if not todo:
                    return
                i = todo.pop()
            batcher.submit_images("m", predictor, decode([data[i]])).result()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    batcher.close()
    predictor.predict_batch = forward  # type: ignore[method-assign]
    return seconds, sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--images", type=int, default=128, help="images per row (a multiple of 32)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per row; the median is reported")
    parser.add_argument("--device", default="cpu", help="as VISIONTUNE_PREDICT_DEVICE")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "serve.json")
    args = parser.parse_args()

    settings = Settings()
    torch.set_num_threads(serving_threads(settings))
    built = build_model(args.arch, args.classes, "none")
    meta = {
        "arch": args.arch,
        "class_names": [f"c{i}" for i in range(args.classes)],
        "image_size": args.image_size,
        "preprocessing": built.preprocessing.as_dict(),
    }
    predictor = TorchPredictor(LoadedModel(built.model.state_dict(), meta, args.device))
    data = jpegs(args.images)
    direct(predictor, data[:32], 32)  # warm-up: allocator, kernels, for both batch sizes
    direct(predictor, data[:4], 1)
    rows = []
    for label, batch in (("batch 1 (one image per forward)", 1), ("batch 32 (direct)", 32)):
        seconds = statistics.median(direct(predictor, data, batch) for _ in range(args.repeats))
        rows.append({"row": label, "batch": batch, "seconds": seconds, "images_per_second": len(data) / seconds})
    runs = sorted((batched(predictor, data, 32, settings) for _ in range(args.repeats)), key=lambda r: r[0])
    seconds, sizes = runs[len(runs) // 2]
    rows.append(
        {
            "row": "batcher, 32 concurrent 1-image requests",
            "batch": settings.predict_max_batch,
            "seconds": seconds,
            "images_per_second": len(data) / seconds,
            "forwards": len(sizes),
            "mean_batch": sum(sizes) / len(sizes),
        }
    )
    base = rows[0]["images_per_second"]
    print(
        f"{args.arch} at {args.image_size} px on {args.device}, {args.images} JPEGs 640x480, "
        f"{torch.get_num_threads()} threads, median of {args.repeats}"
    )
    print(f"{'row':42}  {'images/s':>9}  {'vs batch 1':>10}  {'forwards':>8}")
    for row in rows:
        row["ratio_vs_batch1"] = row["images_per_second"] / base
        forwards = row.get("forwards", math.ceil(args.images / row["batch"]))
        print(f"{row['row']:42}  {row['images_per_second']:9.1f}  {row['ratio_vs_batch1']:9.2f}x  {forwards:8}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    env = {
        "arch": args.arch,
        "image_size": args.image_size,
        "images": args.images,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "repeats": args.repeats,
        "cpu_count": os.cpu_count(),
    }
    args.out.write_text(json.dumps({"config": env, "rows": rows}, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
