"""Job states from Slurm's clients, faked by scripts on the PATH: a failing squeue is an error
naming it, never "not listed" (a running step's job would look gone and be submitted again),
and a job squeue does not know (purged) is simply not listed."""

from __future__ import annotations

import re

import pytest

from benchmark.config import resolve
from benchmark.errors import StageError
from benchmark.pipeline import slurm, state
from benchmark.pipeline.executors import submit_plan
from benchmark.pipeline.plan import Step

DOWN = "slurm_load_jobs error: Unable to contact slurm controller (connect failure)"


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    """A folder that alone is the PATH; ``add(name, body)`` puts a shell script there that logs
    its arguments to ``<name>.calls`` and then runs ``body``."""
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", str(folder))

    def add(name: str, body: str) -> None:
        script = folder / name
        script.write_text(f'#!/bin/sh\necho "$@" >> {folder}/{name}.calls\n{body}\n')
        script.chmod(0o755)

    add.folder = folder
    return add


def test_a_failing_squeue_is_a_one_line_error_naming_it(fake_bin):
    fake_bin("squeue", f"echo '{DOWN}' >&2; exit 1")
    with pytest.raises(StageError) as info:
        slurm.job_states(["123", "124_1"])
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("squeue --noheader --states=all --format=%i|%T --jobs=123,124")
    assert f"failed (exit 1): {DOWN}" in message


def test_a_squeue_that_cannot_run_is_an_error_too(fake_bin):
    fake_bin("squeue", "exit 0")
    script = fake_bin.folder / "squeue"
    script.write_text("#!/no/such/shell\n")  # on the PATH, executable, but it cannot start
    with pytest.raises(StageError, match="^squeue .*No such file"):
        slurm.job_states(["123"])


def test_purged_jobs_are_not_listed_and_sacct_is_asked_for_them(fake_bin):
    # squeue refuses a list holding a purged id, answers for the others one by one.
    fake_bin(
        "squeue",
        'case "$4" in --jobs=2) echo "2|RUNNING";; '
        "*) echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1;; esac",
    )
    fake_bin("sacct", 'echo "1|COMPLETED"')
    assert slurm.job_states(["1", "2", "3"]) == {"1": "COMPLETED", "2": "RUNNING"}
    # Without accounting sacct fails: the purged jobs have ended anyway, and stay unlisted.
    fake_bin("sacct", "echo 'Slurm accounting storage is disabled' >&2; exit 1")
    assert slurm.job_states(["1", "2"]) == {"2": "RUNNING"}


def test_a_submission_submits_nothing_when_squeue_fails(fake_bin, tmp_path):
    cfg = resolve("smoke", [f"paths.runs_dir={tmp_path / 'runs'}", "executor.kind=slurm"])
    state.add_jobs(cfg, {"pretrain:cola:s0": "77"})  # submitted before, maybe running now
    fake_bin("squeue", f"echo '{DOWN}' >&2; exit 1")
    fake_bin("sbatch", "echo 'Submitted batch job 78'")
    fake_bin("srun", "exit 0")  # submitit looks for it
    with pytest.raises(StageError, match=f"^nothing submitted: squeue .*{re.escape(DOWN)}"):
        submit_plan(cfg, [Step("pretrain:cola:s0", "pretrain")], tracker=None)
    assert not (fake_bin.folder / "sbatch.calls").exists()
    assert set(state.read_jobs(cfg)) == {"pretrain:cola:s0"}
