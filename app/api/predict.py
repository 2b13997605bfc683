"""POST /predict."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import PredictCaller, SettingsDep
from app.api.docs import errors
from app.api.uploads import PREDICT_OPENAPI, read_predict_request
from app.schemas import ImagePrediction, LabelScore, PredictResponse
from app.services.prediction import check_uploads, decode_uploads
from app.serving.predictor import top_labels

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify images",
    responses=errors(404, 409, 413, 415, 422, 429, 503),
    openapi_extra=PREDICT_OPENAPI,
)
def predict(request: Request, caller: PredictCaller, settings: SettingsDep) -> PredictResponse:
    """Top-k labels with probabilities per image, from the serving (best or pinned) version.

    A sync route on purpose: the body readers and the decoding are synchronous and run in this worker thread,
    in parallel with other requests and with the inference thread, and the wait for the batcher is a plain
    blocking `Future.result()` here. An async route would hop to a thread for each of those steps and gain
    nothing on the CPU. No database session is held past the version lookup, so none is held during inference.
    """
    # The body is read only here, after the dependencies (the key check) passed, each image and all bounded; every
    # image's header is checked before the version is looked up or any model loaded.
    form = read_predict_request(request, settings)
    limits = {"max_pixels": settings.max_predict_pixels, "max_request_pixels": settings.max_predict_request_pixels}
    check_uploads(form.images, settings.max_predict_images, settings.max_predict_image_bytes, **limits)
    device = settings.resolved_predict_device()
    targets = request.app.state.serving_targets
    served = targets.resolve(
        request.app.state.sessionmaker, caller.project, form.model, form.version, settings.predict_backend, device
    )
    threads = settings.predict_threads or settings.torch_threads
    # A switch of target (promotion, alias move, rollback, better job) takes traffic once the new one is warm.
    target = (caller.project, form.model) if form.version is None else (caller.project, form.model, form.version)
    served, predictor = targets.predictor_for(target, served, lambda s: targets.load(s, device, threads))
    images = decode_uploads(
        form.images,
        settings.max_predict_images,
        settings.max_predict_image_bytes,
        **limits,
        draft_side=predictor.image_size,
        checked=True,
    )
    probs = request.app.state.batcher.submit_images(served.cache_key, predictor, images).result()
    results = top_labels(probs, predictor.class_names, form.top_k)
    return PredictResponse(
        model_name=served.model_name,
        version=served.version,
        job_id=served.job_id,
        arch=served.arch,
        backend=predictor.backend,
        predictions=[
            ImagePrediction(filename=u.filename, top=[LabelScore(label=lab, probability=p) for lab, p in row])
            for u, row in zip(form.images, results, strict=True)
        ],
    )
