"""The identity a request carries: the admin token, or one API key with its scopes and
quotas. The auth middleware (service/api/middleware/auth.py) puts it in the ASGI scope;
routes read it through the typed dependencies of service/api/deps.py."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from sqlalchemy import ColumnElement, Select


class Scope(StrEnum):
    """What a key may do. Each implies the ones below it: admin > train > read."""

    read = "read"  # every GET, and predictions (a query of a model, not a change)
    train = "train"  # submit, cancel and delete its own jobs
    admin = "admin"  # every job of every key, and the keys themselves

    @property
    def implied(self) -> frozenset[Scope]:
        order = list(Scope)
        return frozenset(order[: order.index(self) + 1])


class ScopeMissing(PermissionError):
    """The key lacks the scope the request needs (403, naming it)."""

    def __init__(self, identity: Identity, needed: Scope, what: str) -> None:
        held = ", ".join(sorted(identity.scopes)) or "none"
        super().__init__(
            f"{what} needs the '{needed}' scope; key '{identity.name}' has: {held}"
        )


@dataclass(frozen=True)
class Identity:
    """Who a request comes from. `key_id` is None for the admin token (and for every request
    to a server without TAPEFIT_API_TOKEN, which is open to all)."""

    key_id: int | None
    name: str
    scopes: frozenset[Scope]
    max_queued: int | None = None
    max_running: int | None = None

    ADMIN: ClassVar[Identity]

    @property
    def is_admin(self) -> bool:
        return Scope.admin in self.scopes

    @property
    def owner(self) -> int | None:
        """What the rows this identity makes carry in their `owner` column."""
        return self.key_id

    @property
    def sees(self) -> int | None:
        """The one owner whose rows it sees; None: every row (an admin)."""
        return None if self.is_admin else self.key_id

    def allows(self, scope: Scope) -> bool:
        return any(scope in held.implied for held in self.scopes)

    def require(self, scope: Scope, what: str) -> None:
        """ScopeMissing unless this identity holds `scope` (or one that implies it)."""
        if not self.allows(scope):
            raise ScopeMissing(self, scope, what)

    def can_see(self, owner: int | None) -> bool:
        """Whether a row owned by `owner` is visible to this identity."""
        return self.is_admin or (owner is not None and owner == self.key_id)


Identity.ADMIN = Identity(key_id=None, name="admin", scopes=frozenset(Scope))

S = TypeVar("S", bound=Select[Any])


def only_visible(statement: S, owner_column: ColumnElement[Any], identity: Identity) -> S:
    """`statement` narrowed to the rows `identity` may see (all of them for an admin)."""
    if identity.sees is None:
        return statement
    return statement.where(owner_column == identity.sees)
