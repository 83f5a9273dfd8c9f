"""``python -m benchmark tracking-server start|status|stop``: PostgreSQL + MLflow server for a
user, outliving the command, stopped from its state file, its data kept across restarts; its
PostgreSQL admits no superuser over TCP and its role only with the password of a private file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from benchmark.pipeline import services
from tests.scaleout import engines
from tests.scaleout.conftest import ROOT, in_ci, unavailable

pytestmark = pytest.mark.services


def _cli(*args: str) -> str:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "NO_PROXY": ",".join(filter(None, ["127.0.0.1", os.environ.get("NO_PROXY")])),
    }
    done = subprocess.run(
        [sys.executable, "-m", "benchmark", "tracking-server", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _uris(out: str) -> tuple[str, str]:
    return (
        re.search(r"paths\.tracking_uri=(\S+)", out).group(1),
        re.search(r"paths\.optuna_storage=(\S+)", out).group(1),
    )


def _passfile(out: str) -> Path:
    return Path(re.search(r"export PGPASSFILE=(\S+)", out).group(1))


@pytest.fixture
def folder():
    """A folder the PostgreSQL user can reach (pytest's are 0700 root when run as root)."""
    try:
        engines.ensure_packages(["postgres"], install=in_ci())
    except services.ServiceUnavailable as exc:
        unavailable(str(exc))
    path = Path(tempfile.mkdtemp(prefix="mscol-tracking-"))
    path.chmod(0o711)
    yield path / "server"
    state = path / "server" / services.TRACKING_STATE
    if state.is_file():  # a failed test must not leave the servers running
        services.stop_tracking_server(path / "server")
    shutil.rmtree(path, ignore_errors=True)


def test_start_log_stop_and_restart_with_the_data_kept(folder, monkeypatch):
    import optuna
    from optuna.trial import TrialState

    from benchmark.pipeline.tracking import Tracker

    # Another loopback address stands for a cluster's network: both servers listen there and
    # the URIs name it (MLflow checks the Host header against the addresses it was given).
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,127.0.0.2")
    started = _cli("start", "--folder", str(folder), "--host", "127.0.0.2")
    tracking_uri, optuna_url = _uris(started)
    assert tracking_uri.startswith("http://127.0.0.2:") and "@127.0.0.2:" in optuna_url
    passfile = _passfile(started)
    monkeypatch.setenv("PGPASSFILE", str(passfile))
    assert passfile.stat().st_mode & 0o777 == 0o600
    assert folder.stat().st_mode & 0o077 == (0o011 if os.geteuid() == 0 else 0)
    # The password is in that file only: not in the URIs, the state file or any command line.
    password = passfile.read_text().split(":")[-1].strip()
    state = json.loads((folder / services.TRACKING_STATE).read_text())
    assert password not in started and password not in json.dumps(state)
    for kind in ("postgres", "mlflow"):
        for pid in services.marked_processes(state[kind]["marker"]):
            with contextlib.suppress(FileNotFoundError):
                assert password not in Path(f"/proc/{pid}/cmdline").read_text(errors="replace")
    # The command has ended; the servers run on.
    assert "tracking server running" in _cli("status", "--folder", str(folder))
    assert "already running" in _cli("start", "--folder", str(folder))

    tracker = Tracker(tracking_uri, "mscol-user", artifact_root=folder / "not-used")
    experiment = tracker.client.get_experiment(tracker.experiment_id)
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # served, not file://
    with tracker.run("k1", "probe", "probe-x") as handle:
        handle.metrics({"roc_auc": 0.75})
        handle.artifact_dict({"ok": True}, "details.json")
    assert list((folder / "artifacts").rglob("details.json"))
    assert not (folder / "not-used").exists()
    study = optuna.create_study(study_name="s", storage=optuna_url, direction="maximize")
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)

    assert "tracking server stopped" in _cli("stop", "--folder", str(folder))
    for kind in ("postgres", "mlflow"):
        assert services.marked_processes(state[kind]["marker"]) == []
    assert "tracking server stopped" in _cli("status", "--folder", str(folder))

    # A restart keeps the address and ports (the URIs a configuration holds) and the data.
    assert _uris(_cli("start", "--folder", str(folder))) == (tracking_uri, optuna_url)
    again = Tracker(tracking_uri, "mscol-user")
    assert again.is_done("k1") and again.find("k1").data.metrics["roc_auc"] == 0.75
    reloaded = optuna.load_study(study_name="s", storage=optuna_url)
    assert len(reloaded.get_trials(states=(TrialState.COMPLETE,))) == 2
    _cli("stop", "--folder", str(folder))


def test_the_database_admits_its_role_by_password_and_no_superuser(postgres_server, monkeypatch):
    """On a shared machine anyone may connect to a port of 127.0.0.1: the superuser (who could
    run programs as the server's user with COPY ... TO PROGRAM) has no way in over TCP, and the
    databases' owner, no superuser, needs the password of the 0600 file."""
    import psycopg2

    server = postgres_server
    assert server.passfile.stat().st_mode & 0o777 == 0o600
    tcp = {"host": "127.0.0.1", "port": server.port, "dbname": "mscol", "connect_timeout": 10}
    with pytest.raises(psycopg2.OperationalError, match="no pg_hba.conf entry"):
        psycopg2.connect(user=server.os_user, **tcp)
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(user="mscol", password="guessed", **tcp)
    with monkeypatch.context() as mp:
        mp.delenv("PGPASSFILE")
        mp.setenv("HOME", str(server.folder))  # no ~/.pgpass either
        with pytest.raises(psycopg2.OperationalError, match="no password supplied"):
            psycopg2.connect(user="mscol", **tcp)

    connection = psycopg2.connect(user="mscol", **tcp)  # the password from PGPASSFILE
    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles "
                "WHERE rolname = current_user"
            )
            assert cursor.fetchone() == (False, False, False)
            cursor.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mscol'"
            )
            assert cursor.fetchone() == ("mscol",)
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cursor.execute("COPY (SELECT 1) TO PROGRAM 'true'")
    finally:
        connection.close()
