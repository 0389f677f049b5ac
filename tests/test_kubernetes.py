"""deploy/kubernetes/, checked offline (no cluster runs here): the core kinds against the
Kubernetes API's own schemas with kubernetes-validate (strict: an unknown or misspelt field
fails), KEDA's objects against the fields KEDA documents, and what the manifests promise
against the code: real commands, probes that answer as they must, the Secret's keys, and
KEDA's query run on a real PostgreSQL queue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text, update

from service.api.app import create_app
from service.api.middleware.auth import PUBLIC_PATHS
from service.cli.main import _parser
from service.db import Database
from service.models import Job
from service.queue import jobs
from service.schemas import JobSpec, JobState
from tests.helpers.settings import empty_postgres, make_settings

ROOT = Path(__file__).resolve().parent.parent
FOLDER = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests are meant for, and the newest the validator knows.
VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

# KEDA's documented fields (keda.sh/docs/2.x: reference/scaledobject-spec,
# concepts/authentication, scalers/postgresql), written out here: the CRDs are not
# installed, so nothing else would catch a misspelt or misplaced field.
SCALED_OBJECT_SPEC = {
    "scaleTargetRef", "pollingInterval", "cooldownPeriod", "initialCooldownPeriod",
    "idleReplicaCount", "minReplicaCount", "maxReplicaCount", "fallback", "advanced",
    "triggers",
}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
ADVANCED = {"restoreToOriginalReplicaCount", "horizontalPodAutoscalerConfig",
            "scalingModifiers"}
HPA_CONFIG = {"name", "behavior"}
TRIGGER = {"type", "metadata", "name", "useCachedMetrics", "authenticationRef", "metricType"}
AUTHENTICATION_REF = {"name", "kind"}
POSTGRESQL_METADATA = {
    "connectionFromEnv", "host", "userName", "passwordFromEnv", "port", "dbName", "sslmode",
    "query", "targetQueryValue", "activationTargetQueryValue", "metricName",
}
POSTGRESQL_AUTH_PARAMETERS = {"connection", "host", "userName", "password", "port", "dbName",
                              "sslmode"}
TRIGGER_AUTHENTICATION_SPEC = {
    "podIdentity", "secretTargetRef", "env", "configMapTargetRef", "hashiCorpVault",
    "azureKeyVault", "awsSecretManager", "gcpSecretManager", "boundServiceAccountToken",
}
SECRET_TARGET_REF = {"parameter", "name", "key"}


def documents() -> dict[str, list[dict[str, Any]]]:
    """Every manifest in the folder, by file name (kustomization.yaml apart)."""
    return {
        path.name: [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
        for path in sorted(FOLDER.glob("*.yaml"))
        if path.name != "kustomization.yaml"
    }


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for docs in documents().values() for doc in docs
               if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(matches) == 1, (kind, name)
    return matches[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    (only,) = workload["spec"]["template"]["spec"]["containers"]
    return only


def env(workload: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item for item in container(workload)["env"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_core_manifests_are_valid_kubernetes_objects(version: str) -> None:
    kinds = []
    for name, docs in documents().items():
        for doc in docs:
            if doc["apiVersion"].startswith("keda.sh/"):
                continue  # a CRD: checked against KEDA's documented fields below
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")
            kinds.append(doc["kind"])
    assert sorted(kinds) == ["Deployment", "Deployment", "Job", "Secret", "Service"]


def test_a_misspelt_field_would_be_caught() -> None:
    deployment = find("Deployment", "tapefit-worker")
    deployment["spec"]["template"]["spec"]["terminationGracePeriod"] = 120
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[0], strict=True)


def test_kustomization_applies_everything_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((FOLDER / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) == set(documents()) - {"secret.example.yaml"}


def test_commands_are_real_tapefit_commands() -> None:
    commands = {name: container(find(kind, name))["command"] for kind, name in [
        ("Deployment", "tapefit-api"), ("Deployment", "tapefit-worker"),
        ("Job", "tapefit-migrate"),
    ]}
    for command in commands.values():
        assert command[0] == "tapefit"
        _parser().parse_args(command[1:])  # exits (SystemExit) on a wrong argument
    assert commands["tapefit-api"][1:] == [
        "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
    assert commands["tapefit-worker"][1:] == ["worker"]
    assert commands["tapefit-migrate"][1:] == ["db", "upgrade"]


def test_every_secret_reference_names_a_key_of_the_example_secret() -> None:
    secret = find("Secret", "tapefit")
    references = [
        item["valueFrom"]["secretKeyRef"]
        for kind, name in [("Deployment", "tapefit-api"), ("Deployment", "tapefit-worker"),
                           ("Job", "tapefit-migrate")]
        for item in container(find(kind, name))["env"] if "valueFrom" in item
    ]
    references += find("TriggerAuthentication", "tapefit-postgresql")["spec"]["secretTargetRef"]
    assert len(references) >= 5
    for reference in references:
        assert reference["name"] == "tapefit"
        assert reference["key"] in secret["stringData"]
    # SQLAlchemy's URL for tapefit, libpq's for KEDA (which cannot read "+psycopg").
    assert secret["stringData"]["database-url"].startswith("postgresql+psycopg://")
    assert secret["stringData"]["keda-postgresql-connection"].startswith("postgresql://")


def test_the_api_is_served_and_probed_on_routes_that_answer_without_a_worker(
    client: TestClient,
) -> None:
    api = find("Deployment", "tapefit-api")
    service = find("Service", "tapefit-api")
    pod_labels = api["spec"]["template"]["metadata"]["labels"]
    assert api["spec"]["selector"]["matchLabels"] == pod_labels
    assert service["spec"]["selector"] == pod_labels
    (port,) = container(api)["ports"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert port["containerPort"] == int(container(api)["command"][5])

    probes = {kind: container(api)[kind]["httpGet"]["path"]
              for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"] == "/healthz"
    # No worker is alive here, as when KEDA has scaled them to zero: /readyz says 503, and
    # an API probed on it would never get traffic, so no job would ever wake a worker.
    assert client.get("/readyz").status_code == 503
    for path in probes.values():
        assert path in PUBLIC_PATHS  # probes carry no token
        assert client.get(path).status_code == 200, path


def test_the_readiness_probe_fails_while_the_database_does_not_answer(tmp_path: Path) -> None:
    path = container(find("Deployment", "tapefit-api"))["readinessProbe"]["httpGet"]["path"]
    # A PostgreSQL port where nothing listens; no lifespan, so no sweeper either.
    settings = make_settings(
        tmp_path / "data",
        database_url="postgresql+psycopg://nobody@127.0.0.1:9/none?connect_timeout=2",
    )
    client = TestClient(create_app(settings))
    assert client.get(path).status_code == 503  # taken out of the Service until it does
    assert client.get("/healthz").status_code == 200  # but not restarted for it


def test_workers_have_time_to_checkpoint_and_keep_no_fixed_replica_count() -> None:
    worker = find("Deployment", "tapefit-worker")
    assert worker["spec"]["selector"]["matchLabels"] == (
        worker["spec"]["template"]["metadata"]["labels"])
    # KEDA owns the count: a `replicas` here would be reset by every apply.
    assert "replicas" not in worker["spec"]
    # SIGTERM: finish the compiled call, checkpoint, hand back; well past the default 30 s.
    assert worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    assert "ports" not in container(worker)
    assert env(worker)["TAPEFIT_DATA_DIR"]["value"] == "/data"


def test_the_scaled_object_uses_only_fields_keda_documents() -> None:
    scaled = find("ScaledObject", "tapefit-worker")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC
    assert set(spec["scaleTargetRef"]) <= SCALE_TARGET_REF
    assert set(spec["advanced"]) <= ADVANCED
    assert set(spec["advanced"]["horizontalPodAutoscalerConfig"]) <= HPA_CONFIG
    assert spec["scaleTargetRef"]["name"] == "tapefit-worker"
    assert spec["minReplicaCount"] == 0 and spec["maxReplicaCount"] >= 1
    (trigger,) = spec["triggers"]
    assert set(trigger) <= TRIGGER
    assert trigger["type"] == "postgresql"
    assert set(trigger["metadata"]) <= POSTGRESQL_METADATA
    # KEDA reads every metadata value as a string.
    assert all(isinstance(value, str) for value in trigger["metadata"].values())
    assert float(trigger["metadata"]["targetQueryValue"]) == 1
    assert set(trigger["authenticationRef"]) <= AUTHENTICATION_REF
    # The HPA's behavior is the autoscaling/v2 object: validate it as one.
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "keda-hpa-tapefit-worker"},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                       "name": "tapefit-worker"},
                    "minReplicas": 1, "maxReplicas": spec["maxReplicaCount"],
                    "behavior": behavior}}
    kubernetes_validate.validate(hpa, VERSIONS[0], strict=True)

    auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["apiVersion"] == "keda.sh/v1alpha1"
    assert set(auth["spec"]) <= TRIGGER_AUTHENTICATION_SPEC
    for reference in auth["spec"]["secretTargetRef"]:
        assert set(reference) == SECRET_TARGET_REF
        assert reference["parameter"] in POSTGRESQL_AUTH_PARAMETERS


def test_kedas_query_counts_the_queued_and_running_jobs(postgres_url: str) -> None:
    empty_postgres(postgres_url)
    query = find("ScaledObject", "tapefit-worker")["spec"]["triggers"][0]["metadata"]["query"]
    database = Database(postgres_url)
    spec = JobSpec.model_validate({"epochs": 1})
    with database.session(write=True) as session:
        ids = [jobs.submit_job(session=session, spec=spec).id for _ in range(5)]
        for job_id, state in zip(ids, [JobState.running, JobState.succeeded,
                                       JobState.cancelled], strict=False):
            session.execute(update(Job).where(Job.id == job_id).values(state=state))
    database.dispose()
    # Run as KEDA does: a plain libpq connection, the query as written, one number back.
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        assert connection.execute(text(query)).scalar_one() == 3  # 2 queued + 1 running
    engine.dispose()
