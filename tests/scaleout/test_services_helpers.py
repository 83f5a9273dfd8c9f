"""The engine helpers without engines: package policy, skip/fail policy, process tracking."""

from __future__ import annotations

import sys
import time

import pytest

from benchmark.pipeline import services
from tests.scaleout import conftest, engines


def test_missing_packages_say_what_would_be_installed(monkeypatch):
    monkeypatch.setattr(engines, "missing_programs", lambda e: ["munged"] if e == "slurm" else [])
    with pytest.raises(services.ServiceUnavailable) as info:
        engines.ensure_packages(["slurm", "postgres"], install=False)
    message = str(info.value)
    assert "\n" not in message
    assert "missing munged (not asked to install)" in message
    assert message.endswith(
        "would install: apt-get install -y --no-install-recommends "
        "slurmctld slurmd slurm-client munge"
    )
    assert engines.ensure_packages(["postgres"], install=False) == []  # nothing missing


def test_slurm_needs_root(tmp_path, monkeypatch):
    monkeypatch.setattr(engines.os, "geteuid", lambda: 1000)
    with pytest.raises(services.ServiceUnavailable, match="needs root"):
        engines.start_slurm(tmp_path)


def test_unavailable_engine_skips_on_a_laptop_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="no slurm"):
        conftest.unavailable("no slurm")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true.*no slurm"):
        conftest.unavailable("no slurm")


def test_spawned_processes_and_their_children_are_tracked_and_stopped(tmp_path):
    marker = services.new_marker("test")
    # A parent that ignores SIGTERM and a child in its session: stop() must end both.
    code = (
        "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN);"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
        "print('up', flush=True); time.sleep(60)"
    )
    daemon = services.spawn("stubborn", [sys.executable, "-c", code], tmp_path / "log", marker)
    services.wait_until(lambda: "up" in daemon.tail(), 30, "the process to start")
    assert len(services.marked_processes(marker)) == 2
    assert daemon.died() is None

    t0 = time.monotonic()
    daemon.stop(timeout=1)  # SIGTERM ignored: SIGKILL to the group after 1 s
    daemon.stop(timeout=1)  # idempotent
    services.sweep(marker)
    assert time.monotonic() - t0 < 15
    assert services.marked_processes(marker) == []
    assert "exited with -9" in daemon.died()


def test_a_service_that_fails_to_start_leaves_nothing_running(tmp_path):
    """``starting``: a start that fails part-way (the daemon is up, its readiness check is
    not) stops what it spawned and raises; one that succeeds records its start time."""
    marker = services.new_marker("test")

    class Service:
        daemon = None
        started_s = 0.0

        def stop(self):
            self.daemon.stop(timeout=1)

    code = "import time; print('up', flush=True); time.sleep(60)"
    service = Service()
    with pytest.raises(services.ServiceError, match="never ready"):
        with services.starting(service, "sleeper", time.monotonic()):
            service.daemon = services.spawn(
                "sleeper", [sys.executable, "-c", code], tmp_path / "log", marker
            )
            services.wait_until(lambda: "up" in service.daemon.tail(), 30, "the process")
            services.wait_until(lambda: False, 0.1, "never ready")
    try:
        assert services.marked_processes(marker) == [] and service.started_s == 0.0
    finally:
        services.sweep(marker)
    ready = Service()
    with services.starting(ready, "nothing", time.monotonic() - 2):
        pass
    assert 2 <= ready.started_s < 10


def test_wait_until_reports_a_dead_daemon_at_once():
    t0 = time.monotonic()
    with pytest.raises(services.ServiceError, match="server: it died"):
        services.wait_until(lambda: False, 30, "server", alive=lambda: "it died")
    assert time.monotonic() - t0 < 1
    with pytest.raises(services.ServiceError, match="timed out after 0 s"):
        services.wait_until(lambda: False, 0.1, "nothing")


def test_a_tracking_server_beyond_loopback_is_said_to_have_no_authentication():
    info = {
        "folder": "/runs/tracking-server",
        "host": "127.0.0.1",
        "mlflow": {"port": 5000},
        "tracking_uri": "http://127.0.0.1:5000",
        "optuna_storage": "postgresql+psycopg2://mscol@127.0.0.1:5433/optuna",
        "pgpassfile": "/runs/tracking-server/postgres/pgpass",
    }
    lines = services._tracking_lines(info, "started")
    assert "  export PGPASSFILE=/runs/tracking-server/postgres/pgpass" in lines[3]
    assert not any("warning" in line for line in lines)
    (warning,) = [
        line
        for line in services._tracking_lines({**info, "host": "0.0.0.0"}, "started")
        if "warning" in line
    ]
    assert "no authentication" in warning and "0.0.0.0:5000" in warning


def test_a_host_must_be_an_ipv4_address():
    services.check_host("0.0.0.0")
    with pytest.raises(services.ServiceError, match="IPv4 address"):
        services.check_host("login01")
