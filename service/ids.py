"""The one rule for ids in a path: a job id, or a model's version (which is its job id).

An id is a positive integer written in ASCII digits with no leading zero, no larger than the
jobs table's id column holds (2**31 - 1). Anything else names nothing: `01`, `+1`, ` 1`,
and digits of other scripts (`١`, `１`, `१`) that `int()` and `str.isdecimal()` would accept,
so every route answers the same 404 for the same text, and one job has one spelling.
"""

from __future__ import annotations

import re

# jobs.id is an INTEGER column: 64 bits on SQLite but 32 on PostgreSQL, where comparing it
# with a larger number is an error (a 500), not a miss.
MAX_ID = 2**31 - 1
PATTERN = "[1-9][0-9]{0,9}"  # [0-9], not \d: \d matches every script's digits
_ID = re.compile(PATTERN)


def parse_id(text: str) -> int | None:
    """The id `text` spells, or None when it spells none (the caller answers 404)."""
    if _ID.fullmatch(text) is None:
        return None
    value = int(text)
    return value if value <= MAX_ID else None
