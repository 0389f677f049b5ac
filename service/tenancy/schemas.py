"""The keys' request and response bodies (the token appears in one response only)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.schemas import Int, Strict
from service.tenancy.identity import Scope

MAX_QUOTA = 100_000


class KeyCreate(Strict):
    name: str = Field(min_length=1, max_length=100, pattern=r"^[\x20-\x7e]+$",
                      description="who or what uses it (printable ASCII)")
    scopes: list[Scope] = Field(
        default_factory=lambda: [Scope.read, Scope.train], min_length=1, max_length=3,
        description="read (GETs and predictions), train (submit, cancel, delete its own "
        "jobs; implies read), admin (everything, every key's jobs, the keys)",
    )
    max_queued: Int | None = Field(
        default=None, ge=1, le=MAX_QUOTA,
        description="jobs it may have queued at once (429 past it); null: no limit",
    )
    max_running: Int | None = Field(
        default=None, ge=1, le=MAX_QUOTA,
        description="jobs of it that train at once; more wait in the queue; null: no limit",
    )


class KeyRead(BaseModel):
    id: int
    name: str
    prefix: str = Field(description="the start of its token, tfk_<prefix>_…, to tell keys apart")
    scopes: list[Scope]
    max_queued: int | None
    max_running: int | None
    created_at: datetime
    last_used_at: datetime | None = Field(description="to the minute: written once a minute")
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    token: str = Field(description="the key's token: shown this once, never stored")


class IdentityRead(BaseModel):
    """Who a token is: an API key, or the admin token (key_id null)."""

    key_id: int | None = Field(description="the key's id; null: the admin token (or an open "
                               "server, where every request is the admin's)")
    name: str
    scopes: list[Scope]
    admin: bool = Field(description="sees every key's jobs and manages the keys")
    max_queued: int | None
    max_running: int | None
