"""The peer of benchmarks/serve.py: a LitServe server answering POST /predict (JSON `{"image": base64}`, one image)
with a visiontune checkpoint, LitServe's dynamic batching on. Decoding and preprocessing are visiontune's own.

JSON, not multipart: LitServe 0.2.19 hands a parsed multipart form to its inference process through a
multiprocessing queue, and the form's UploadFile does not pickle ("Pickling an AuthenticationString object is
disallowed"), so every multipart request is a 500 there. fast_queue (its ZeroMQ transport): with the default
multiprocessing-manager queues a lone request took ~1.4 s here (against ~25 ms with ZeroMQ).

    python benchmarks/_litserve_peer.py --checkpoint PATH --port 8001 [--max-batch 32 --batch-timeout 0.005]
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from pathlib import Path

import litserve as ls
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from app.config import Settings  # noqa: E402
from app.ml.predictor import LoadedModel  # noqa: E402
from app.services.prediction import ImageUpload, decode_uploads  # noqa: E402


class CheckpointAPI(ls.LitAPI):
    """decode + preprocess per request, one forward per batch, top-5 labels per image."""

    def __init__(self, checkpoint: Path, threads: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.checkpoint, self.threads = checkpoint, threads

    def setup(self, device: str) -> None:
        torch.set_num_threads(self.threads)
        self.model = LoadedModel.from_file(self.checkpoint, None, "cpu")
        self.settings = Settings()

    def decode_request(self, request: dict) -> torch.Tensor:
        data = base64.b64decode(request["image"])
        s = self.settings
        upload = [ImageUpload(request.get("filename"), data)]
        image = decode_uploads(upload, 1, s.max_predict_image_bytes, draft_side=self.model.image_size)[0]
        return self.model.preprocess(image)

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.probabilities(x)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, probs: torch.Tensor) -> dict:
        values, indices = probs.topk(min(5, len(self.model.class_names)))
        names = self.model.class_names
        top = [{"label": names[int(i)], "probability": float(v)} for v, i in zip(values, indices, strict=True)]
        return {"predictions": [{"top": top}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--batch-timeout", type=float, default=0.005, help="seconds a batch waits to fill")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    api = CheckpointAPI(args.checkpoint, args.threads, max_batch_size=args.max_batch, batch_timeout=args.batch_timeout)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60, fast_queue=True)
    server.run(port=args.port, host="127.0.0.1", num_api_servers=1, generate_client_file=False)


if __name__ == "__main__":
    main()
