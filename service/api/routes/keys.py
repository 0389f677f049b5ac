"""API keys, for admins: make one (its token shown once), list them, revoke one."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from service.api.deps import AdminDep, WriteSessionDep
from service.api.responses import errors
from service.ids import parse_id
from service.tenancy import keys
from service.tenancy.schemas import KeyCreate, KeyCreated, KeyRead

router = APIRouter(prefix="/keys", tags=["keys"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated,
             responses=errors(403, 409, 415, 503))
def create_key(
    admin: AdminDep, session: WriteSessionDep, request: Request, response: Response,
    body: KeyCreate,
) -> KeyCreated:
    """Make an API key; the response holds its token, which is shown this once and never
    stored (409 on a server without TAPEFIT_API_TOKEN, which is open to all)."""
    if request.app.state.settings.api_token is None:
        raise keys.KeysNeedAdminToken()
    key, token = keys.create_key(session=session, name=body.name, scopes=body.scopes,
                                 max_queued=body.max_queued, max_running=body.max_running)
    response.headers["Location"] = f"/keys/{key.id}"
    return KeyCreated(**KeyRead.model_validate(key, from_attributes=True).model_dump(),
                      token=token)


@router.get("", response_model=list[KeyRead], responses=errors(403))
def list_keys(admin: AdminDep, request: Request) -> list[KeyRead]:
    """Every key, revoked ones too: names, scopes, quotas, last use; never a token."""
    with request.app.state.database.session() as session:
        return [KeyRead.model_validate(key, from_attributes=True)
                for key in keys.list_keys(session=session)]


@router.delete("/{key_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses=errors(403, 404, 503))
def revoke_key(admin: AdminDep, session: WriteSessionDep, key_id: str) -> Response:
    """Revoke a key: its token is refused (401) from the next request on. Its jobs stay,
    seen by admins."""
    parsed = parse_id(key_id)
    if parsed is None:
        raise keys.KeyNotFound(key_id[:40])
    keys.revoke_key(session=session, key_id=parsed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
