"""``/jobs/<id>``: a tracked job (move, drain, backup, …) with its steps, to follow what a
``202 {"job_id"}`` started (the admin's view permission on jobs), and ``/jobs/<id>/cancel``."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Router, Status
from ninja.params.functions import Path
from pydantic import WithJsonSchema

from apps_registry.api.auth import TokenAuth
from apps_registry.api.errors import ApiError
from apps_registry.api.responses import documented
from apps_registry.api.schemas import JobOut
from apps_registry.control.lifecycle import requests as lifecycle
from apps_registry.models import Job

router = Router()
_DOCUMENTED = documented(200, JobOut, "The job and its steps", 404)
_DOCUMENTED["openapi_extra"]["responses"][404] = {"description": "No such job"}
JobPath = Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]
EXAMPLE_ID = "00000000-0000-4000-8000-000000000000"


def job_json(job: Job) -> dict[str, Any]:
    return {
        "id": str(job.pk),
        "kind": job.kind,
        "status": job.status,
        "steps": [
            {
                "name": step.name,
                "status": step.status,
                "started_at": step.started_at.isoformat() if step.started_at else None,
                "finished_at": step.finished_at.isoformat() if step.finished_at else None,
                "error": step.error,
            }
            for step in job.steps.order_by("position")
        ],
    }


@router.get(
    "/jobs/{job_id}",
    auth=TokenAuth("apps_registry.view_job"),
    summary="A tracked job (move, drain, backup, …) and its steps",
    **_DOCUMENTED,
)
def get_job(request: HttpRequest, job_id: JobPath = Path(..., example=EXAMPLE_ID)) -> Any:
    return job_json(_get_job(job_id))


def _get_job(job_id: str) -> Job:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        key = None  # not a job id: simply no such job
    job = Job.objects.filter(pk=key).first() if key is not None else None
    if job is None:
        raise ApiError(404, f"no job {job_id[:60]!r}")
    return job


_CANCEL = documented(
    202, JobOut, "Cancel asked: a queued job is cancelled at once, a running one at its next step", 404, 409
)
_CANCEL["openapi_extra"]["responses"][404] = {"description": "No such job"}
_CANCEL["openapi_extra"]["responses"][409] = {"description": "The job is finished already; nothing changed"}


@router.post(
    "/jobs/{job_id}/cancel",
    auth=TokenAuth("apps_registry.cancel_job"),
    summary="Cancel a tracked job (a move only up to its route switch; a drain's moves with it)",
    description=(
        "A queued job is cancelled at once; a running one stops at its next step boundary, where it can: a move "
        "before its switch removes the environments it added (the app stays where it was), after its switch it "
        "goes on. Needs apps_registry.cancel_job."
    ),
    **_CANCEL,
)
def cancel_job(request: HttpRequest, job_id: JobPath = Path(..., example=EXAMPLE_ID)) -> Status[dict[str, Any]]:
    job = _get_job(job_id)
    if not lifecycle.cancel(job, request.auth, via="api"):
        raise ApiError(409, f"job {job.pk} is {job.status} already")
    job.refresh_from_db()
    return Status(202, job_json(job))
