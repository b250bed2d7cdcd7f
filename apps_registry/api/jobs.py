"""``/jobs/<id>``: a tracked job (move, drain, backup, …) with its steps, to follow what a
``202 {"job_id"}`` started. Readable with the admin's view permission on jobs."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from django.http import HttpRequest
from ninja import Router
from ninja.params.functions import Path
from pydantic import WithJsonSchema

from apps_registry.api.auth import TokenAuth
from apps_registry.api.errors import ApiError
from apps_registry.api.responses import documented
from apps_registry.api.schemas import JobOut
from apps_registry.models import Job

router = Router()
_DOCUMENTED = documented(200, JobOut, "The job and its steps", 404)
_DOCUMENTED["openapi_extra"]["responses"][404] = {"description": "No such job"}
JobPath = Annotated[str, WithJsonSchema({"type": "string", "format": "uuid"})]


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
def get_job(request: HttpRequest, job_id: JobPath = Path(..., example="00000000-0000-4000-8000-000000000000")) -> Any:
    try:
        key = uuid.UUID(job_id)
    except ValueError:
        key = None  # not a job id: simply no such job
    job = Job.objects.filter(pk=key).first() if key is not None else None
    if job is None:
        raise ApiError(404, f"no job {job_id[:60]!r}")
    return job_json(job)
