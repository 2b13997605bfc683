"""POST /predict."""

from __future__ import annotations

from fastapi import APIRouter, Request

from app.api.deps import PredictCaller, SessionDep, SettingsDep
from app.api.docs import errors
from app.api.uploads import PREDICT_OPENAPI, read_predict_form
from app.schemas import ImagePrediction, LabelScore, PredictResponse
from app.services.prediction import decode_uploads, select_model

router = APIRouter(tags=["predict"])


@router.post(
    "/predict",
    response_model=PredictResponse,
    summary="Classify images",
    responses=errors(404, 409, 413, 415, 422, 429),
    openapi_extra=PREDICT_OPENAPI,
)
def predict(request: Request, caller: PredictCaller, session: SessionDep, settings: SettingsDep) -> PredictResponse:
    """Top-k labels with probabilities per image, from the serving (best or pinned) version."""
    # The body is read only here, after the dependencies (the key check) passed, each image and all bounded.
    form = read_predict_form(request, settings)
    images = decode_uploads(
        form.images,
        settings.max_predict_images,
        settings.max_predict_image_bytes,
        max_pixels=settings.max_predict_pixels,
        max_request_pixels=settings.max_predict_request_pixels,
    )
    cache = request.app.state.model_cache
    chosen, loaded = select_model(session, cache, caller.project, form.model, form.version, settings.predict_device)
    results = loaded.predict(images, form.top_k)
    return PredictResponse(
        model_name=chosen.model_name,
        version=chosen.version,
        job_id=chosen.job_id,
        arch=chosen.arch,
        predictions=[
            ImagePrediction(filename=u.filename, top=[LabelScore(label=lab, probability=p) for lab, p in row])
            for u, row in zip(form.images, results, strict=True)
        ],
    )
