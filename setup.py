"""The packages of the tapefit distribution (the rest of its metadata is in pyproject.toml).

migrations/ stays at the top of the source tree, where Alembic's tooling expects it, and is
shipped inside the wheel as service/migrations, where `service.migrate` finds it once
installed.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["service*", "worker*", "benchmarks*"])
    + ["service.migrations", "service.migrations.versions"],
    package_dir={"service.migrations": "migrations"},
    package_data={"service": ["static/*"], "service.migrations": ["script.py.mako"]},
)
