"""POST /v1/predict."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Header, UploadFile

from flywheel.serving.deps import ProjectDep, require
from flywheel.serving.schemas import PredictionPublic

__all__ = ["router"]

router = APIRouter(tags=["predict"])

UserHeader = Annotated[
    str | None, Header(alias="X-User-Id", description="The end user's pseudonymous id.")
]


@router.post(
    "/v1/predict",
    response_model=PredictionPublic,
    dependencies=[Depends(require("predict"))],
    summary="Predict the label of one image",
    responses={
        413: {"description": "The body is over the size limit."},
        422: {"description": "The upload is missing, empty or not an image."},
        503: {"description": "No production model yet."},
    },
)
def create_prediction(
    project: ProjectDep,
    file: Annotated[UploadFile, File(description="An image (PNG or JPEG).")],
    x_user_id: UserHeader = None,
) -> PredictionPublic:
    result = project.predict(file.file.read(), user_id=x_user_id)
    return PredictionPublic(
        prediction_id=result.prediction_id,
        label=result.label,
        probabilities=result.probabilities,
        model_version=result.model_version,
    )
