"""A study's search space: dotted paths into the job spec (`optimizer.learning_rate`,
`model.layers.0.units`: a list index is a number), each a range or a set of choices.

Every path and every value is checked against the real `JobSpec`: a value is put into the
study's base spec and the spec is validated, so a range outside a field's bounds or a
choice the field refuses is refused with the path named, by the same rules a job has.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import ValidationError

from service.schemas import JobSpec


class SpaceError(ValueError):
    """A path the spec does not have, or a value its field refuses; the message names it."""


def _step_into(node: Any, part: str, walked: str) -> Any:
    where = walked or "the job spec"
    if isinstance(node, dict):
        if part not in node:
            fields = ", ".join(sorted(node)) or "none"
            raise SpaceError(f"{where} has no field '{part}' (its fields: {fields})")
        return node[part]
    if isinstance(node, list):
        if not part.isdigit() or (len(part) > 1 and part[0] == "0"):
            raise SpaceError(f"{where} is a list: '{part}' must be an index (0, 1, ...)")
        if int(part) >= len(node):
            raise SpaceError(f"{where} has {len(node)} entries: no index {part}")
        return node[int(part)]
    if node is None:
        raise SpaceError(f"{where} is null in the base spec: set it there to search its fields")
    raise SpaceError(f"{where} is a value, not an object: it has no field '{part}'")


def check_path(base: dict[str, Any], path: str) -> None:
    """SpaceError unless `path` names a field of the (dumped, defaults filled) base spec."""
    parts = path.split(".")
    if not path or any(not part for part in parts):
        raise SpaceError(f"'{path}' is not a dotted path such as optimizer.learning_rate")
    node, walked = base, ""
    try:
        for part in parts:
            node = _step_into(node, part, walked)
            walked = f"{walked}.{part}" if walked else part
    except SpaceError as exc:
        raise SpaceError(f"{path}: {exc}") from None
    if isinstance(node, dict | list):
        raise SpaceError(f"{path} is an object or a list: name one of its fields")


def with_values(base: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `base` with each dotted path set to its value (paths checked before)."""
    spec = copy.deepcopy(base)
    for path, value in values.items():
        *parents, last = path.split(".")
        node: Any = spec
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return spec


def validated(base: dict[str, Any], values: dict[str, Any]) -> JobSpec:
    """The job spec of `base` with `values` set; SpaceError naming the first refused field."""
    try:
        return JobSpec.model_validate(with_values(base, values))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the spec"
        raise SpaceError(f"{where}: {first['msg']}") from None


def check_value(base: dict[str, Any], path: str, value: Any, what: str) -> None:
    """SpaceError, naming `path` and `what` (e.g. "high"), when the field refuses `value`."""
    try:
        validated(base, {path: value})
    except SpaceError as exc:
        raise SpaceError(f"{path} {what} {value!r} is refused by the job spec: {exc}") from None
