"""A study, live: Server-Sent Events of its trials starting, reporting epochs and ending,
and of its best trial changing. Each poll reads the study in a fresh short session and
sends what changed since the last one; the stream ends when the study does."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Callable
from typing import Any

from service.db import Database
from service.studies import studies
from service.studies.schemas import StudyRead, StudyState

POLL_S = 0.5
KEEP_ALIVE_S = 15.0


def read(database: Database, study_id: int) -> StudyRead:
    """The study's view now (StudyNotFound when it is not there)."""
    with database.session() as session:
        return studies.describe(session=session,
                                study=studies.get_study(session=session, study_id=study_id))


def _event(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def changes(before: StudyRead | None, now: StudyRead) -> list[str]:
    """The events that take a watcher from `before` to `now`."""
    out = []
    old = {t.number: t for t in before.trials} if before else {}
    for trial in now.trials:
        was = old.get(trial.number)
        data = trial.model_dump(mode="json")
        if was is None or (was.state == "queued" and trial.state != "queued"):
            out.append(_event("trial_started", data))
        if trial.epochs_run > (was.epochs_run if was else 0):
            out.append(_event("trial_reported", data))
        if trial.state not in ("queued", "running") and (
            was is None or was.state in ("queued", "running")
        ):
            out.append(_event("trial_ended", data))
    if now.best is not None and (before is None or before.best != now.best):
        out.append(_event("best", now.best.model_dump(mode="json")))
    if before is None or before.state != now.state:
        out.append(_event("state", now.model_dump(mode="json")))
    return out


async def stream(database: Database, study_id: int, first: StudyRead,
                 read_now: Callable[[], StudyRead] | None = None) -> AsyncGenerator[str, None]:
    """The study's state, then each change; ends after the study's final state."""
    read_now = read_now or (lambda: read(database, study_id))
    current = first
    for line in changes(None, current):
        yield line
    quiet = 0.0
    while current.state == StudyState.running:
        await asyncio.sleep(POLL_S)
        latest = await asyncio.to_thread(read_now)
        lines = changes(current, latest)
        current = latest
        if lines:
            quiet = 0.0
            for line in lines:
                yield line
        else:
            quiet += POLL_S
            if quiet >= KEEP_ALIVE_S:
                quiet = 0.0
                yield ": keep-alive\n\n"
