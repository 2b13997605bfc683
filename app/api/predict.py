"""POST /predict."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile

from app.api.deps import SessionDep, SettingsDep
from app.schemas import ImagePrediction, LabelScore, PredictResponse
from app.services.prediction import ImageUpload, decode_uploads, select_model

router = APIRouter(tags=["predict"])


@router.post("/predict", response_model=PredictResponse, summary="Classify images")
def predict(
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    files: Annotated[list[UploadFile] | None, File(description="One or more images")] = None,
    model: Annotated[str | None, Form(description="Registered model name")] = None,
    version: Annotated[int | None, Form(ge=1, description="A specific version instead of the serving one")] = None,
    top_k: Annotated[int, Form(ge=1, le=1000)] = 5,
) -> PredictResponse:
    """Top-k labels with probabilities per image, from the serving (best or pinned) version."""
    uploads = [ImageUpload(f.filename, f.file.read(settings.max_predict_image_bytes + 1)) for f in files or []]
    images = decode_uploads(uploads, settings.max_predict_images, settings.max_predict_image_bytes)
    chosen, loaded = select_model(session, request.app.state.model_cache, model, version, settings.predict_device)
    results = loaded.predict(images, top_k)
    return PredictResponse(
        model_name=chosen.model_name,
        version=chosen.version,
        job_id=chosen.job_id,
        arch=chosen.arch,
        predictions=[
            ImagePrediction(filename=u.filename, top=[LabelScore(label=lab, probability=p) for lab, p in row])
            for u, row in zip(uploads, results, strict=True)
        ],
    )
