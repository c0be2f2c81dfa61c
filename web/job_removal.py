"""`DELETE /v1/jobs/<id>`: a finished job, its items and its outputs, removed at once
(the reconciler removes them anyway once GENQ_RESULT_TTL has passed; see
`shared.retention`)."""
from __future__ import annotations

from flask import Response

from shared.notices import notices_for
from shared.retention import delete_job, remove_outputs
from web import queries
from web.api import JOB_ID, NO_JOB
from web.auth import current_principal, require_api_key
from web.context import db, genq
from web.operations import DocumentedBlueprint, Reply
from web.response_models import ErrorResponse

removal = DocumentedBlueprint("removal", __name__, url_prefix="/v1", secured=True)
removal.before_request(require_api_key)


@removal.operation(
    "DELETE", "/jobs/<job_id>", "Delete a job", tag="jobs",
    description="Removes a finished job (succeeded, failed or cancelled), its items and its outputs from the ledger "
    "and from storage. A queued or running job is refused: cancel it first. Without this, a finished job is removed "
    "GENQ_RESULT_TTL after it finished (its `expires_at`).",
    params=(JOB_ID,),
    responses={204: Reply("Deleted: the job, its items and outputs are gone."), 404: NO_JOB,
               409: Reply("The job has not finished, or an OpenAI batch still needs it (`conflict`).", ErrorResponse)},
)
def delete_job_view(job_id: str):
    session = db()
    job = queries.find_job(session, current_principal(), job_id)
    with_outputs = delete_job(session, job)
    session.commit()  # the rows first: no row ever points to a deleted object
    ctx = genq()
    notices_for(ctx.settings.redis_url).publish([job_id])  # event streams re-read the ledger and find it gone
    remove_outputs(ctx.sessions, ctx.storage, with_outputs)  # on failure, output_removals keeps it for the sweep
    return Response(status=204)
