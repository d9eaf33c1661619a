"""`connprune run`: the grid runs once per point, reuses the dense model, survives SIGKILL + --resume with the same
rows as an uninterrupted run, records failures, and runs in parallel workers."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from connprune import cli
from connprune.experiments import runner
from connprune.experiments.runner import run_experiment
from connprune.experiments.store import DONE, FAILED, PENDING, RUNNING, Store

CONFIG = """\
name: tiny
models: [mlp]
data: digits
train: {epochs: 1}
methods: [magnitude, snip]
sparsities: [0.5, 0.9]
seeds: [0]
fine-tune: {epochs: 1}
shift: gaussian_noise:3
"""
TIMING = ("prune_seconds", "finetune_seconds", "wall_seconds", "dense_wait_seconds")


def rows_of(out: Path) -> dict[str, dict]:
    with Store(f"sqlite:///{out / 'runs.db'}") as store:
        return {row["key"]: row for row in store.runs()}


def deterministic(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if k not in TIMING}


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(CONFIG)
    return path


@pytest.fixture(scope="module")
def reference(config, tmp_path_factory) -> tuple[Path, dict[str, dict]]:
    """The grid run once, uninterrupted, in this process."""
    out = tmp_path_factory.mktemp("reference")
    summary = run_experiment(config, out, progress=False)
    assert summary.counts == {PENDING: 0, RUNNING: 0, DONE: 4, FAILED: 0} and not summary.failed
    return out, rows_of(out)


def test_grid_runs_once_and_reuses_the_dense_model(config, reference):
    out, rows = reference
    assert len(rows) == 4 and all(r["status"] == DONE and r["attempts"] == 1 for r in rows.values())
    assert sorted(p.name for p in (out / "dense").iterdir() if not p.name.startswith(".")) == ["mlp-s0"]
    with Store(f"sqlite:///{out / 'runs.db'}") as store:
        dense = store.dense()
    assert len(dense) == 1 and dense[0]["params"] > 0
    for key, row in rows.items():
        metrics = row["metrics"]
        assert (out / "runs" / key / "metrics.json").is_file() and row["output_dir"].endswith(key)
        assert metrics["run_key"] == key and metrics["method"] == row["method"] and "gaussian_noise:3" in \
            metrics["shift_acc_after"]
        assert row["acc_after"] == metrics["acc_after"] and row["achieved_sparsity"] == metrics["achieved_sparsity"]
        if row["method"] == "snip":  # prunes at initialisation: never touches the dense model
            assert not row["needs_trained"] and "dense_accuracy" not in metrics
        else:
            assert row["needs_trained"] and metrics["dense_accuracy"] == dense[0]["accuracy"]
            assert metrics["acc_before"] == pytest.approx(dense[0]["accuracy"])
    # a second run of the same config has nothing to do
    again = run_experiment(config, out, progress=False)
    assert again.counts[DONE] == 4
    assert {k: r["finished_at"] for k, r in rows_of(out).items()} == {k: r["finished_at"] for k, r in rows.items()}


def test_sigkill_then_resume_gives_the_uninterrupted_rows(config, reference, tmp_path):
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", "from connprune.cli import main; main()", "run", str(config),
                             "--out", str(out)], env=env, stdout=log, stderr=subprocess.STDOUT)
    db = out / "runs.db"
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if db.is_file():
            try:
                with sqlite3.connect(db, timeout=5) as conn:
                    done = conn.execute("SELECT COUNT(*) FROM connprune_runs WHERE status = 'done'").fetchone()[0]
            except sqlite3.OperationalError:
                done = 0
            if done >= 1:
                break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log.close()
    assert done >= 1, (tmp_path / "log.txt").read_text()
    before = rows_of(out)
    assert sum(r["status"] == DONE for r in before.values()) < 4, "the run finished before it could be killed"

    # without --resume a run left 'running' by the killed process is not touched; with --resume it is redone
    run_experiment(config, out, progress=False)
    stuck = [k for k, r in rows_of(out).items() if r["status"] == RUNNING]
    assert stuck == [k for k, r in before.items() if r["status"] == RUNNING]
    summary = run_experiment(config, out, resume=True, progress=False)
    assert {key for key, _ in summary.reset} == set(stuck)
    assert summary.counts[DONE] == 4

    _, expected = reference
    after = rows_of(out)
    assert after.keys() == expected.keys()
    for key, row in after.items():
        assert row["status"] == DONE
        assert row["attempts"] == (2 if key in stuck else 1)
        assert deterministic(row["metrics"]) == deterministic(expected[key]["metrics"]), key
        for column in ("achieved_sparsity", "params_after", "macs_after", "acc_pruned", "acc_after",
                       "shift_acc_after"):
            assert row[column] == expected[key][column], (key, column)


def test_failed_runs_are_recorded_and_retried_on_resume(tmp_path, monkeypatch, capsys):
    config = tmp_path / "fail.yaml"
    config.write_text(CONFIG.replace("[magnitude, snip]", "[magnitude, random]").replace("[0.5, 0.9]",
                                                                                             "[0.5]"))
    from connprune.experiments import jobs

    real = jobs.prune_job

    def flaky(job):
        if job.method == "random":
            raise RuntimeError("simulated crash in random")
        return real(job)

    monkeypatch.setattr(jobs, "prune_job", flaky)
    monkeypatch.setattr(sys, "argv", ["connprune", "run", str(config), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1 and "simulated crash" in capsys.readouterr().err
    rows = rows_of(tmp_path / "out")
    failed = [r for r in rows.values() if r["status"] == FAILED]
    assert len(failed) == 1 and "simulated crash in random" in failed[0]["error"]
    assert [r["method"] for r in rows.values() if r["status"] == DONE] == ["magnitude"]
    monkeypatch.setattr(jobs, "prune_job", real)
    summary = run_experiment(config, tmp_path / "out", resume=True, progress=False)
    assert summary.counts[DONE] == 2 and not summary.failed


def test_bad_config_exits_2_naming_the_line(tmp_path, monkeypatch, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text(CONFIG.replace("seeds: [0]", "seeds: [0]\nepochs: 3"))
    monkeypatch.setattr(sys, "argv", ["connprune", "run", str(config), "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "line 8" in err and "'epochs'" in err
    assert not (tmp_path / "out").exists()


def test_parallel_workers_claim_each_run_once(config, reference, tmp_path):
    out = tmp_path / "parallel"
    summary = run_experiment(config, out, jobs=2, progress=False)
    assert summary.counts[DONE] == 4
    rows = rows_of(out)
    _, expected = reference
    assert rows.keys() == expected.keys()
    assert all(r["attempts"] == 1 and r["status"] == DONE for r in rows.values())
    workers = {r["claimed_by"] for r in rows.values()}
    assert all(not w.endswith(f":{os.getpid()}") for w in workers) and 1 <= len(workers) <= 2
    for key, row in rows.items():
        assert row["target_sparsity"] == expected[key]["target_sparsity"]


def one_pending_run(out: Path) -> tuple:
    """A store in ``out`` with one pending run, and the settings of a worker for it."""
    from connprune.experiments.config import RunSpec

    url = f"sqlite:///{out / 'runs.db'}"
    run = RunSpec(key="k1", config_hash="h", model="mlp", method="magnitude", label="magnitude", params={},
                  params_json="{}", sparsity=0.5, seed=0, needs_trained=False)
    with Store(url) as store:
        store.add_runs([run])
    return run, runner.Settings(out_dir=str(out), store_url=url, config_hash="h", data="digits", data_dir=None,
                                train={}, train_epochs=1, fine_tune_epochs=0, shift="none", progress=False)


def test_a_worker_that_lost_its_claim_overwrites_nothing(tmp_path, monkeypatch):
    """While this worker computes, its heartbeat goes stale, a --resume elsewhere reclaims the run and another worker
    claims it and writes its folder. This worker re-checks its claim before it stores anything: the other worker's
    row and folder stay as they are, this worker's staged output is discarded, and it says why."""
    run, settings = one_pending_run(tmp_path)
    theirs = runner.run_dir(tmp_path, "k1")

    def execute(run, settings, store, out=None):
        store._run("UPDATE connprune_runs SET heartbeat_at = ? WHERE key = ?", (time.time() - 3600, run.key))
        assert [key for key, _ in store.reclaim([run.key], stale_after=600)] == [run.key]
        assert store.claim(run.key, "elsewhere:7")
        theirs.mkdir(parents=True)
        (theirs / "metrics.json").write_text('{"by": "elsewhere:7"}')
        out.mkdir(parents=True)
        (out / "metrics.json").write_text('{"by": "this worker"}')
        return {"acc_after": 0.25, "achieved_sparsity": 0.5}

    class Recorder(runner._Reporter):
        def __init__(self) -> None:
            self.said: list[tuple] = []

        def finished(self, run, metrics, error):
            self.said.append((metrics, error))

    monkeypatch.setattr(runner, "execute", execute)
    reporter = Recorder()
    assert runner.work(settings, [run], reporter) == 0
    [(metrics, error)] = reporter.said
    assert metrics is None and "lost its claim" in error and "claimed by elsewhere:7" in error
    row = rows_of(tmp_path)["k1"]
    assert row["status"] == RUNNING and row["claimed_by"] == "elsewhere:7" and row["metrics"] is None
    assert row["acc_after"] is None and row["attempts"] == 2
    assert (theirs / "metrics.json").read_text() == '{"by": "elsewhere:7"}'
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["k1"]  # no staged folder left behind


def test_a_worker_that_holds_its_claim_publishes_its_staged_output(tmp_path, monkeypatch):
    """The run is written to a hidden staging folder and replaces the run folder (here, a killed attempt's) only
    once the claim is confirmed."""
    run, settings = one_pending_run(tmp_path)
    old = runner.run_dir(tmp_path, "k1")
    old.mkdir(parents=True)
    (old / "metrics.json").write_text('{"by": "a killed attempt"}')
    staged = []

    def execute(run, settings, store, out=None):
        assert out.name.startswith(".k1.") and not out.exists()  # a hidden staging folder beside the run folder
        staged.append(out)
        out.mkdir()
        (out / "metrics.json").write_text('{"by": "this worker"}')
        return {"acc_after": 0.25, "achieved_sparsity": 0.5}

    monkeypatch.setattr(runner, "execute", execute)
    assert runner.work(settings, [run]) == 1
    row = rows_of(tmp_path)["k1"]
    assert row["status"] == DONE and row["acc_after"] == 0.25 and row["output_dir"] == str(old)
    assert (old / "metrics.json").read_text() == '{"by": "this worker"}' and not staged[0].exists()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["k1"]
