"""Names a model answers to: a job id, `latest` and `best`, each with its one version."""

from __future__ import annotations

import re

import pytest

from service.config import Settings
from service.db import Database
from service.models import Job
from service.schemas import JobState
from service.serving import catalog as serving
from service.serving.catalog import Catalog, ModelNotFound, ModelNotReady
from service.serving.store import ModelStore
from tests.helpers.serving import add_job


def resolve(database: Database, name: str, version: str | None = None) -> serving.ModelRef:
    with database.session() as session:
        return serving.resolve(session=session, name=name, version=version)


def test_aliases_resolve_at_request_time(database: Database) -> None:
    first = add_job(database, JobState.succeeded, accuracy=0.90)
    assert resolve(database, "latest").job_id == first
    assert resolve(database, "best").job_id == first
    second = add_job(database, JobState.succeeded, accuracy=0.80)
    add_job(database, JobState.running)  # newer, but not servable
    assert resolve(database, "latest").job_id == second
    assert resolve(database, "best").job_id == first
    third = add_job(database, JobState.succeeded, accuracy=0.95)
    assert (resolve(database, "latest").job_id, resolve(database, "best").job_id) == (third, third)


def test_best_prefers_the_newer_job_on_a_tie_and_ignores_a_missing_accuracy(
    database: Database,
) -> None:
    older = add_job(database, JobState.succeeded, accuracy=0.9)
    newer = add_job(database, JobState.succeeded, accuracy=0.9)
    add_job(database, JobState.succeeded, accuracy=None)
    assert older < newer
    assert resolve(database, "best").job_id == newer


def test_a_job_id_is_a_name_and_its_version(database: Database) -> None:
    job_id = add_job(database, JobState.succeeded, accuracy=0.5)
    ref = resolve(database, str(job_id), version=str(job_id))
    assert (ref.name, ref.job_id, ref.ready) == (str(job_id), job_id, True)
    assert ref.version == str(job_id)
    assert resolve(database, "best", version=str(job_id)).job_id == job_id


@pytest.mark.parametrize(
    "name", ["999", "abc", "-1", "1e3", "1.0", " 1", "٣", "99999999999999999999999", "", "LATEST"]
)
def test_unknown_names_are_not_found(database: Database, name: str) -> None:
    add_job(database, JobState.succeeded, accuracy=0.5)
    with pytest.raises(ModelNotFound, match="not found"):
        resolve(database, name)


def test_a_version_other_than_the_job_id_is_not_found(database: Database) -> None:
    job_id = add_job(database, JobState.succeeded, accuracy=0.5)
    for version in (str(job_id + 1), "latest", "0", ""):
        with pytest.raises(ModelNotFound, match="has no version"):
            resolve(database, str(job_id), version=version)


def test_aliases_name_nothing_before_a_job_succeeds(database: Database) -> None:
    add_job(database, JobState.running)
    add_job(database, JobState.failed, error="diverged at step 3")
    for alias in ("latest", "best"):
        with pytest.raises(ModelNotFound, match="no job has succeeded yet"):
            resolve(database, alias)
    with database.session() as session:
        assert serving.servable_names(session=session) == []


@pytest.mark.parametrize(
    ("state", "error", "message"),
    [
        (JobState.queued, None, "is queued: it has no trained model"),
        (JobState.running, None, "is still running: it has no trained model"),
        (JobState.failed, "diverged at step 3", "failed (diverged at step 3): it has no"),
        (JobState.cancelled, None, "was cancelled: it has no trained model"),
    ],
)
def test_an_unfinished_job_is_found_but_not_ready(
    database: Database, state: JobState, error: str | None, message: str
) -> None:
    job_id = add_job(database, state, error=error)
    with database.session() as session:
        ref = serving.find_model(session=session, name=str(job_id))
    assert (ref.state, ref.ready, ref.error) == (state, False, error)
    with pytest.raises(ModelNotReady, match=re.escape(f"job {job_id} {message}")) as caught:
        resolve(database, str(job_id))
    assert caught.value.state == state


def test_servable_names_are_succeeded_ids_newest_first_then_aliases(database: Database) -> None:
    a = add_job(database, JobState.succeeded, accuracy=0.5)
    add_job(database, JobState.queued)
    b = add_job(database, JobState.succeeded, accuracy=0.6)
    with database.session() as session:
        assert serving.servable_names(session=session) == [str(b), str(a), "latest", "best"]
        assert serving.database_ready(session=session)


def test_the_catalog_remembers_succeeded_ids_but_not_other_states(
    database: Database, settings: Settings
) -> None:
    catalog = Catalog(database=database, store=ModelStore(settings.models_dir, capacity=1))
    job_id = add_job(database, JobState.running)
    with pytest.raises(ModelNotReady):
        catalog.resolve(str(job_id))
    set_state(database, job_id, JobState.succeeded)
    assert catalog.resolve(str(job_id)).ready  # a not-ready answer was not remembered
    newer = add_job(database, JobState.succeeded, accuracy=0.5)
    with database.session(write=True) as session:  # succeeded is final; prove no query is made
        session.delete(session.get(Job, job_id))
    assert catalog.resolve(str(job_id)).job_id == job_id
    with pytest.raises(ModelNotFound, match="has no version '9'"):
        catalog.resolve(str(job_id), version="9")
    assert catalog.find(str(newer)).ready and catalog.names() == [str(newer), "latest", "best"]


def set_state(database: Database, job_id: int, state: JobState) -> None:
    with database.session(write=True) as session:
        session.get(Job, job_id).state = state


def test_an_alias_is_read_once_per_ttl_and_dropped_when_a_job_is_deleted_here(
    database: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = Catalog(database=database, store=ModelStore(settings.models_dir, capacity=1))
    first = add_job(database, JobState.succeeded, accuracy=0.9)
    assert catalog.resolve("latest").job_id == catalog.resolve("best").job_id == first
    newer = add_job(database, JobState.succeeded, accuracy=0.95)
    # Within ALIAS_TTL the aliases answer from memory: no query, the newer job not yet seen.
    assert catalog.resolve("latest").job_id == catalog.resolve("best").job_id == first
    with pytest.raises(ModelNotFound, match="has no version"):
        catalog.resolve("latest", version=str(newer))
    monkeypatch.setattr(Catalog, "ALIAS_TTL", 0.0)  # the second has passed
    assert catalog.resolve("latest").job_id == catalog.resolve("best").job_id == newer
    assert catalog.resolve("latest", version=str(newer)).job_id == newer
    monkeypatch.setattr(Catalog, "ALIAS_TTL", 3600.0)
    with database.session(write=True) as session:
        session.delete(session.get(Job, newer))
    assert catalog.resolve("best").job_id == newer  # deleted elsewhere: kept for the TTL
    catalog.forget(newer, None)  # deleted through this process: dropped at once
    assert catalog.resolve("latest").job_id == catalog.resolve("best").job_id == first
