"""MLflow through a tracking server on PostgreSQL: clients speak HTTP only, artifacts included."""

from __future__ import annotations

import json
import multiprocessing

import pytest

from tests.scaleout import jobs

pytestmark = pytest.mark.services


def test_two_processes_log_runs_concurrently(mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("concurrent")
    experiment = client.get_experiment(experiment_id)
    # Served artifacts: the experiment's root is the server's proxy, not a path of this machine.
    assert experiment.artifact_location.startswith("mlflow-artifacts:")

    uploads = tmp_path / "uploads"
    uploads.mkdir()
    ctx = multiprocessing.get_context("spawn")
    with ctx.Manager() as manager:
        barrier, results = manager.Barrier(2), manager.dict()
        workers = [
            ctx.Process(
                target=jobs.log_runs,
                args=(mlflow_server.uri, experiment_id, w, 3, str(uploads), barrier, results),
            )
            for w in (0, 1)
        ]
        for p in workers:
            p.start()
        for p in workers:
            p.join(120)
        assert [p.exitcode for p in workers] == [0, 0]
        ids = [rid for w in (0, 1) for rid in results[w]]
    runs = client.search_runs([experiment_id], max_results=100)
    assert sorted(r.info.run_id for r in runs) == sorted(ids) and len(ids) == 6
    for run in runs:
        worker = int(run.data.tags["worker"])
        assert run.info.status == "FINISHED"
        assert run.data.params["lr"] == f"{1e-3 * (worker + 1):g}"
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == list(range(5))
        assert history[-1].value == pytest.approx(1.0 / (5 + worker))
        listed = [f.path for f in client.list_artifacts(run.info.run_id, "outputs")]
        name = f"w{worker}-r{run.data.tags['index']}.json"
        assert listed == [f"outputs/{name}"]
        local = client.download_artifacts(run.info.run_id, f"outputs/{name}", str(tmp_path))
        assert json.loads(open(local).read()) == {
            "worker": worker,
            "run": int(run.data.tags["index"]),
        }
    # ... and the files are in the server's artifact store, which only the server writes.
    stored = sorted(p.name for p in mlflow_server.artifacts_dir.rglob("*.json"))
    assert stored == sorted(f"w{w}-r{i}.json" for w in (0, 1) for i in range(3))


def test_tags_search_and_resume_like_the_tracker(mlflow_server):
    """What benchmark.pipeline.tracking relies on: search by tag, reopen an unfinished run, finish it."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("tracker-contract")
    run = client.create_run(experiment_id, tags={"bench.key": "k1", "bench.kind": "probe"})
    client.set_terminated(run.info.run_id, "KILLED")
    found = client.search_runs([experiment_id], filter_string="tags.`bench.key` = 'k1'")
    assert [r.info.run_id for r in found] == [run.info.run_id]
    client.update_run(run.info.run_id, status="RUNNING")
    client.log_metric(run.info.run_id, "auc", 0.9)
    client.set_terminated(run.info.run_id, "FINISHED")
    again = client.get_run(run.info.run_id)
    assert again.info.status == "FINISHED" and again.data.metrics["auc"] == 0.9


def test_json_artifacts_are_read_back_through_the_server(mlflow_server, tmp_path, monkeypatch):
    """The report reads JSON artifacts (e.g. a separation's activity.json) of a server-backed
    store through the client, whatever the process-wide tracking URI says: a Slurm report job
    has none set, and ``mlflow.artifacts.load_dict`` resolved ``mlflow-artifacts:`` against it."""
    from mlflow.tracking import MlflowClient

    from benchmark.pipeline.tracking import load_artifact_dict

    client = MlflowClient(tracking_uri=mlflow_server.uri)
    experiment_id = client.create_experiment("json-artifacts")
    run = client.create_run(experiment_id)
    client.log_dict(run.info.run_id, {"active": 3, "total": 4}, "activity.json")
    client.set_terminated(run.info.run_id, "FINISHED")
    # as in a job: the process default is some local store, not the server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert load_artifact_dict(client, run.info.run_id, "activity.json") == {
        "active": 3,
        "total": 4,
    }
