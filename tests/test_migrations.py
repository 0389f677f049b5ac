"""The migrations are the schema: one head, upgrade from empty, no drift from the models."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.command import downgrade
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, inspect

from service import migrate
from service.migrate import alembic_config, upgrade
from service.models import Base
from tests.helpers.settings import scratch_postgres


def test_there_is_a_single_head(tmp_path: Path) -> None:
    script = ScriptDirectory.from_config(alembic_config(f"sqlite:///{tmp_path}/x.db"))
    assert len(script.get_heads()) == 1


def test_upgrade_from_empty_matches_the_models_and_downgrades_cleanly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/nested/tapefit.db"
    upgrade(url)  # also makes the folder
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    assert set(inspect(engine).get_table_names()) >= {"jobs", "metrics", "epochs"}
    downgrade(alembic_config(url), "base")
    assert inspect(engine).get_table_names() == ["alembic_version"]
    engine.dispose()


def test_upgrade_is_idempotent(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tapefit.db"
    upgrade(url)
    upgrade(url)


def test_postgresql_migrates_from_empty_to_the_models(postgres_url: str) -> None:
    # The session's scratch database was made by upgrade() from empty.
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


# Several processes start at once (`tapefit serve` and its workers, a fleet of workers):
# each calls upgrade(), and the schema must come out whole, made once.
_UPGRADE = "import sys; from service.migrate import upgrade; upgrade(sys.argv[1])"


def _upgrade_at_once(url: str, processes: int = 6) -> None:
    started = [
        subprocess.Popen([sys.executable, "-c", _UPGRADE, url], stderr=subprocess.PIPE, text=True)
        for _ in range(processes)
    ]
    for process in started:
        _, err = process.communicate(timeout=120)
        assert process.returncode == 0, err


def _assert_at_head_without_drift(url: str) -> None:
    engine = create_engine(url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        heads = ScriptDirectory.from_config(alembic_config(url)).get_heads()
        assert set(context.get_current_heads()) == set(heads)
    engine.dispose()


@pytest.mark.slow
def test_concurrent_upgrades_of_a_new_sqlite_file_make_the_schema_once(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/tapefit.db"
    _upgrade_at_once(url)
    _assert_at_head_without_drift(url)
    engine = create_engine(url)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


@pytest.mark.slow
def test_concurrent_upgrades_of_a_new_postgresql_database_make_the_schema_once() -> None:
    with scratch_postgres("concurrent") as url:
        _upgrade_at_once(url)
        _assert_at_head_without_drift(url)


def test_a_database_at_head_is_only_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The second and later starts run no migration: one read of the version, no lock."""
    url = f"sqlite:///{tmp_path}/tapefit.db"
    upgrade(url)
    lock = tmp_path / "tapefit.db.migrate-lock"
    lock.unlink()
    statements: list[str] = []
    real_create_engine = migrate.create_engine

    def spying_create_engine(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        engine = real_create_engine(*args, **kwargs)
        event.listen(engine, "before_cursor_execute",
                     lambda _conn, _cursor, statement, *_: statements.append(statement))
        return engine

    monkeypatch.setattr(migrate, "create_engine", spying_create_engine)
    upgrade(url)
    assert not lock.exists()
    writes = ("CREATE", "INSERT", "UPDATE", "ALTER", "DROP", "PRAGMA JOURNAL_MODE")
    assert statements and not [s for s in statements if s.lstrip().upper().startswith(writes)]


@pytest.mark.slow
def test_the_installed_wheel_finds_its_migrations(tmp_path: Path) -> None:
    """`pip install .` (not editable) into a fresh venv ships the migrations: `tapefit db
    upgrade` there, run away from the source tree, makes the schema."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"  # a copy: pip builds in the source tree and leaves build/
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(repo / name, source / name)
    for name in ("service", "worker", "benchmarks", "migrations"):
        shutil.copytree(repo / name, source / name,
                        ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--no-deps", str(source)],
        capture_output=True, text=True, timeout=600,
    )
    assert install.returncode == 0, install.stderr
    # The dependencies come from this environment's site-packages (not its editable
    # tapefit: a path on PYTHONPATH runs no .pth file), tapefit itself from the wheel.
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    data = tmp_path / "data"
    env = {**os.environ, "PYTHONPATH": site_packages, "TAPEFIT_DATA_DIR": str(data)}
    env.pop("TAPEFIT_DATABASE_URL", None)
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c",
         "import service.migrate as m; print(m.migrations_dir())"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True,
    )
    assert Path(where.stdout.strip()).is_relative_to(venv)
    result = subprocess.run([str(venv / "bin" / "tapefit"), "db", "upgrade"], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    _assert_at_head_without_drift(f"sqlite:///{data}/tapefit.db")
