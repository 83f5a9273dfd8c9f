"""Session fixtures: real engines for the scale-out tests (``pytest -m services``).

``slurm_cluster`` (a one-node Slurm cluster), ``postgres_server`` / ``postgres_url`` (PostgreSQL
on 127.0.0.1) and ``mlflow_server`` (``mlflow server`` on that PostgreSQL, artifacts served
over HTTP), each started once per session (Slurm by :mod:`tests.scaleout.engines`, the others
by :mod:`benchmark.pipeline.services`, as a user's tracking server) and stopped at its end.

Where an engine is missing the tests skip with a one-line reason, except under ``CI=true``,
where a skip would hide a broken pipeline: there missing Debian packages are installed (CI runs
as root) and anything still unavailable fails the tests.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pytest

from benchmark.pipeline import services
from tests.scaleout import engines

ROOT = Path(__file__).resolve().parents[2]
TIMINGS: dict[str, float] = {}  # what each engine took to start and stop, for the summary


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def unavailable(reason: str):
    """Skip (laptop) or fail (CI) a test whose engine cannot run here."""
    if in_ci():
        pytest.fail(f"CI=true, so this is a failure: {reason}", pytrace=False)
    pytest.skip(reason)


def _packages(engine: str) -> None:
    try:
        engines.ensure_packages([engine], install=in_ci())
    except services.ServiceUnavailable as exc:
        unavailable(str(exc))


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A running one-node Slurm cluster; ``SLURM_CONF`` points this session's clients at it.

    ``PYTHONPATH`` gets the repository root, so submitit jobs (which start a fresh interpreter
    in the submitting process' folder) can import ``tests.scaleout.jobs`` from anywhere.
    """
    _packages("slurm")
    try:
        cluster = engines.start_slurm(tmp_path_factory.mktemp("slurm"))
    except services.ServiceUnavailable as exc:
        unavailable(str(exc))
    TIMINGS["slurm start"] = cluster.started_s
    with pytest.MonkeyPatch.context() as mp:
        for key, value in cluster.env.items():
            mp.setenv(key, value)
        mp.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        )
        yield cluster
    t0 = time.monotonic()
    cluster.stop()
    TIMINGS["slurm stop"] = time.monotonic() - t0


@pytest.fixture(scope="session")
def postgres_server():
    """A running PostgreSQL server (throwaway: no fsync) with an empty database ``mscol``;
    ``PGPASSFILE`` gives this session's clients (and the jobs and workers they start) its
    password, as it does a user's."""
    _packages("postgres")
    try:
        server = services.start_postgres(os_user=engines.postgres_user())
    except services.ServiceUnavailable as exc:
        unavailable(str(exc))
    TIMINGS["postgres start"] = server.started_s
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.env.items():
            mp.setenv(key, value)
        yield server
    t0 = time.monotonic()
    server.stop()
    TIMINGS["postgres stop"] = time.monotonic() - t0


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """SQLAlchemy URL of the session's database, ``postgresql+psycopg2://mscol@127.0.0.1:P/mscol``
    (the password comes from ``PGPASSFILE``)."""
    return postgres_server.url("mscol")


@pytest.fixture
def fresh_database(postgres_server, request) -> str:
    """A new, empty database for one test (e.g. an Optuna storage); returns its URL."""
    name = "t_" + "".join(c if c.isalnum() else "_" for c in request.node.name)[:40].lower()
    return postgres_server.create_database(f"{name}_{time.monotonic_ns() % 10**6}")


@pytest.fixture(scope="session")
def mlflow_server(postgres_server, tmp_path_factory):
    """``mlflow server`` on database ``mlflow`` of the session's PostgreSQL, serving artifacts."""
    backend = postgres_server.create_database("mlflow")
    folder = tmp_path_factory.mktemp("mlflow")
    server = services.start_mlflow_server(backend, folder / "artifacts", env=postgres_server.env)
    TIMINGS["mlflow server start"] = server.started_s
    # MLflow's client (requests) would send 127.0.0.1 traffic through a configured HTTP proxy.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", ",".join(filter(None, ["127.0.0.1", os.environ.get("NO_PROXY")])))
        yield server
    t0 = time.monotonic()
    server.stop()
    TIMINGS["mlflow server stop"] = time.monotonic() - t0


@pytest.fixture
def tracking(postgres_server, tmp_path, request):
    """A fresh MLflow server (its own database: experiments of other tests stay apart) and a
    fresh Optuna database; returns (the server, the overrides that point a plan at them)."""
    name = re.sub(r"\W", "_", request.node.name)[:30].lower() + f"_{time.monotonic_ns() % 10**6}"
    server = services.start_mlflow_server(
        postgres_server.create_database(f"ml_{name}"),
        tmp_path / "artifacts",
        env=postgres_server.env,
    )
    optuna = postgres_server.create_database(f"op_{name}")
    with pytest.MonkeyPatch.context() as mp:  # as in mlflow_server: no proxy for 127.0.0.1
        mp.setenv("NO_PROXY", ",".join(filter(None, ["127.0.0.1", os.environ.get("NO_PROXY")])))
        yield server, [f"paths.tracking_uri={server.uri}", f"paths.optuna_storage={optuna}"]
    server.stop()


def pytest_terminal_summary(terminalreporter):
    if TIMINGS:
        terminalreporter.write_line(
            "services: " + ", ".join(f"{k} {v:.1f} s" for k, v in TIMINGS.items())
        )
