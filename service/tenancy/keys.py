"""API keys: made by an admin, shown once, stored as a hash, revoked for good.

A token is `tfk_<prefix>_<secret>`: the prefix (12 hex digits) finds the key's row, the
secret is 32 random bytes (256 bits) of which only the SHA-256 is stored. A fast hash is
enough for a secret that random: no guess list can reach it, so the slow, salted hashes made
for passwords (argon2, bcrypt) would only cost every request tens of milliseconds. A copy of
the database gives no usable token. The secret is compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Sequence
from datetime import timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.db import Database
from service.models import ApiKey, utcnow
from service.tenancy.identity import Identity, Scope

log = logging.getLogger("tapefit.keys")

TOKEN_PREFIX = "tfk"
_PREFIX_BYTES = 6  # 12 hex digits: the row's public handle, unique
_SECRET_BYTES = 32  # 256 bits
# A key's last use is written at most this often, so reads do not become writes.
LAST_USED_EVERY = timedelta(seconds=60)
# When this process last wrote each key's last use (by prefix, random and never reused): a
# burst of requests writes it once.
_touched: dict[str, float] = {}


class KeyNotFound(LookupError):
    def __init__(self, key_id: int | str) -> None:
        super().__init__(f"API key {key_id} not found")


class KeysNeedAdminToken(RuntimeError):
    """Keys are made only on a server with an admin token: without one it is open to all,
    and a key would protect nothing."""

    def __init__(self) -> None:
        super().__init__(
            "set TAPEFIT_API_TOKEN first: without it the API is open to anyone and a key "
            "would protect nothing"
        )


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def create_key(
    *,
    session: Session,
    name: str,
    scopes: Sequence[Scope],
    max_queued: int | None = None,
    max_running: int | None = None,
) -> tuple[ApiKey, str]:
    """A new key and its token; the token is never stored or shown again."""
    prefix = secrets.token_hex(_PREFIX_BYTES)
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    key = ApiKey(
        name=name,
        prefix=prefix,
        secret_sha256=_digest(secret),
        scopes=sorted({Scope(scope).value for scope in scopes}),
        max_queued=max_queued,
        max_running=max_running,
        created_at=utcnow(),
    )
    session.add(key)
    session.flush()
    return key, f"{TOKEN_PREFIX}_{prefix}_{secret}"


def list_keys(*, session: Session) -> Sequence[ApiKey]:
    """Every key, revoked ones too (their jobs still name them), oldest first."""
    return session.scalars(select(ApiKey).order_by(ApiKey.id)).all()


def get_key(*, session: Session, key_id: int) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise KeyNotFound(key_id)
    return key


def revoke_key(*, session: Session, key_id: int) -> ApiKey:
    """Revoke a key: from the next request on, its token is refused (401). Its jobs stay.
    Revoking it again changes nothing."""
    key = get_key(session=session, key_id=key_id)
    if key.revoked_at is None:
        key.revoked_at = utcnow()
    return key


def parse_token(token: str) -> tuple[str, str] | None:
    """(prefix, secret) of a key's token, or None when `token` has not its shape."""
    kind, _, rest = token.partition("_")
    prefix, _, secret = rest.partition("_")
    if kind != TOKEN_PREFIX or len(prefix) != 2 * _PREFIX_BYTES or not secret:
        return None
    return prefix, secret


def identity_of(key: ApiKey) -> Identity:
    return Identity(
        key_id=key.id,
        name=key.name,
        scopes=frozenset(Scope(scope) for scope in key.scopes),
        max_queued=key.max_queued,
        max_running=key.max_running,
    )


def authenticate(*, database: Database, token: str) -> Identity | None:
    """The identity of a live key's token; None for an unknown, wrong or revoked one.

    One indexed read per request: a revocation holds from the next request on, in every API
    process. The key's last use is written at most once a minute."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    prefix, secret = parsed
    with database.session() as session:
        key = session.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    if key is None or key.revoked_at is not None:
        return None
    if not hmac.compare_digest(_digest(secret), key.secret_sha256):
        return None
    if key.last_used_at is None or utcnow() - key.last_used_at >= LAST_USED_EVERY:
        recent = _touched.get(prefix)
        if recent is None or time.monotonic() - recent >= LAST_USED_EVERY.total_seconds():
            if len(_touched) > 100_000:
                _touched.clear()
            _touched[prefix] = time.monotonic()
            _touch(database, key.id)
    return identity_of(key)


def _touch(database: Database, key_id: int) -> None:
    """Record a key's use; the condition keeps concurrent requests (and API processes) from
    writing it more than once a minute. Best effort: a busy database skips it."""
    now = utcnow()
    try:
        with database.session(write=True) as session:
            session.execute(
                update(ApiKey)
                .where(ApiKey.id == key_id,
                       or_(ApiKey.last_used_at.is_(None),
                           ApiKey.last_used_at <= now - LAST_USED_EVERY))
                .values(last_used_at=now)
                .execution_options(synchronize_session=False)
            )
    except OperationalError as exc:
        log.debug("key %s: last use not recorded: %s", key_id, exc)
