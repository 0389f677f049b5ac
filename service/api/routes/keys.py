"""API keys, for admins: make one (its token shown once), list them, revoke one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request, Response, status
from starlette.convertors import StringConvertor, register_url_convertor

from service.api.deps import AdminDep, IdentityDep, SessionDep, WriteSessionDep
from service.api.responses import errors
from service.ids import PATTERN, parse_id
from service.tenancy import keys
from service.tenancy.schemas import IdentityRead, KeyCreate, KeyCreated, KeyRead


class _Digits(StringConvertor):
    """A key id in a path: digits only, so `/keys/me` is never taken for a key (a DELETE there
    is a 405 that allows GET). `01` still matches, and the id rule answers it 404."""

    regex = "[0-9]+"


register_url_convertor("digits", _Digits())

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
def list_keys(admin: AdminDep, session: SessionDep) -> list[KeyRead]:
    """Every key, revoked ones too: names, scopes, quotas, last use; never a token."""
    return [KeyRead.model_validate(key, from_attributes=True)
            for key in keys.list_keys(session=session)]


@router.get("/me", response_model=IdentityRead)
async def whoami(identity: IdentityDep) -> IdentityRead:
    """Who this token is: its key's name, scopes and quotas, or the admin token."""
    return IdentityRead(key_id=identity.key_id, name=identity.name,
                        scopes=sorted(identity.scopes), admin=identity.is_admin,
                        max_queued=identity.max_queued, max_running=identity.max_running)


@router.delete("/{key_id:digits}", status_code=status.HTTP_204_NO_CONTENT,
               response_class=Response,
               responses=errors(403, 404, 503))
def revoke_key(
    admin: AdminDep,
    session: WriteSessionDep,
    key_id: Annotated[str, Path(description="the key's id",
                                json_schema_extra={"pattern": f"^{PATTERN}$"})],
) -> Response:
    """Revoke a key: its token is refused (401) from the next request on. Its jobs stay,
    seen by admins."""
    parsed = parse_id(key_id)
    if parsed is None:
        raise keys.KeyNotFound(key_id[:40])
    keys.revoke_key(session=session, key_id=parsed)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
