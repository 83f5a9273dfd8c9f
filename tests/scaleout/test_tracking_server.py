"""``python -m benchmark tracking-server start|status|stop``: PostgreSQL + MLflow server for a
user, outliving the command, stopped from its state file, its data kept across restarts."""

from __future__ import annotations

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

    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    started = _cli("start", "--folder", str(folder))
    tracking_uri, optuna_url = _uris(started)
    assert tracking_uri.startswith("http://127.0.0.1:") and "@127.0.0.1:" in optuna_url
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

    state = json.loads((folder / services.TRACKING_STATE).read_text())
    assert "tracking server stopped" in _cli("stop", "--folder", str(folder))
    for kind in ("postgres", "mlflow"):
        assert services.marked_processes(state[kind]["marker"]) == []
    assert "tracking server stopped" in _cli("status", "--folder", str(folder))

    # A restart keeps the ports (the URIs a configuration holds) and the data.
    assert _uris(_cli("start", "--folder", str(folder))) == (tracking_uri, optuna_url)
    again = Tracker(tracking_uri, "mscol-user")
    assert again.is_done("k1") and again.find("k1").data.metrics["roc_auc"] == 0.75
    reloaded = optuna.load_study(study_name="s", storage=optuna_url)
    assert len(reloaded.get_trials(states=(TrialState.COMPLETE,))) == 2
    _cli("stop", "--folder", str(folder))
