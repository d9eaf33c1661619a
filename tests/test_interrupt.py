"""Ctrl-C: `connprune run` and `connprune train` say how to continue and exit 130, leave no lock file and nothing
half-written, and the rerun continues where the interrupted one stopped. The runner's file lock excludes and cleans
up after itself."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from connprune.cli import INTERRUPTED
from connprune.experiments.runner import _lock_busy, file_lock

SRC = Path(__file__).resolve().parents[1] / "src"
EPOCHS = 40
CONFIG = f"""\
name: interrupt
models: [mlp]
data: digits
train: {{epochs: {EPOCHS}}}
methods: [magnitude]
sparsities: [0.5, 0.8]
seeds: [0]
fine-tune: {{epochs: 1}}
"""


def start_cli(*args: str, log: Path) -> subprocess.Popen:
    """``connprune ARGS`` in a new process, stderr (and stdout) into ``log``."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "COLUMNS": "200"}
    with open(log, "w") as handle:
        return subprocess.Popen([sys.executable, "-c", "from connprune.cli import main; main()", *args], env=env,
                                stdout=handle, stderr=subprocess.STDOUT)


def saved_epoch(state_json: Path) -> int:
    """The last finished epoch the trainer saved (0 while there is none)."""
    try:
        return json.loads(state_json.read_text())["epoch"]
    except (OSError, ValueError, KeyError):
        return 0


def wait_for(condition, proc: subprocess.Popen, log: Path, timeout: float = 180.0) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"exited {proc.returncode} too early:\n{log.read_text()[-3000:]}"
        assert time.time() < deadline, f"timed out:\n{log.read_text()[-3000:]}"
        time.sleep(0.02)


def interrupt(proc: subprocess.Popen, log: Path) -> str:
    """SIGINT ``proc``; returns its output after checking the exit status and the closing line."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, log.read_text()[-3000:]
    text = log.read_text()
    assert text.strip().splitlines()[-1] == INTERRUPTED and "Traceback" not in text, text[-3000:]
    return text


def first_epoch_line(text: str) -> int:
    return int(re.search(rf"epoch (\d+)/{EPOCHS}", text).group(1))


def run_statuses(db: Path) -> dict[str, str]:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return dict(conn.execute("SELECT key, status FROM connprune_runs").fetchall())
    except sqlite3.OperationalError:  # not created yet
        return {}


def test_sigint_during_run_says_how_to_continue_and_leaves_no_lock(tmp_path):
    config = tmp_path / "interrupt.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "out"
    state = out / "dense" / ".mlp-s0.partial" / "train_state" / "state.json"
    log = tmp_path / "first.log"
    proc = start_cli("run", str(config), "--out", str(out), log=log)
    # a run is claimed and its dense model has finished (and saved) at least one epoch: interrupt mid-training
    wait_for(lambda: "running" in run_statuses(out / "runs.db").values() and saved_epoch(state) >= 1, proc, log)
    interrupt(proc, log)
    assert not list(out.rglob("*.lock")), "a stale lock file was left"
    assert set(run_statuses(out / "runs.db").values()) == {"pending"}  # the claimed run was given back
    leftovers = list((out / "runs").rglob("*")) if (out / "runs").exists() else []
    assert not (out / "dense" / "mlp-s0").exists() and not leftovers  # nothing half-written
    stopped_at = saved_epoch(state)
    assert 1 <= stopped_at < EPOCHS

    log = tmp_path / "rerun.log"
    rerun = start_cli("run", str(config), "--out", str(out), log=log)  # the same command, no --resume
    assert rerun.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert first_epoch_line(text) == stopped_at + 1  # the dense training continued, not restarted
    assert set(run_statuses(out / "runs.db").values()) == {"done"} and not list(out.rglob("*.lock"))
    history = json.loads((out / "dense" / "mlp-s0" / "metrics.json").read_text())["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))


def test_sigint_during_train_keeps_the_state_for_resume(tmp_path):
    out = tmp_path / "ck"
    state = tmp_path / ".ck.partial" / "train_state" / "state.json"
    log = tmp_path / "train.log"
    proc = start_cli("train", "--model", "mlp", "--epochs", str(EPOCHS), "--out", str(out), log=log)
    wait_for(lambda: saved_epoch(state) >= 1, proc, log)
    interrupt(proc, log)
    assert not out.exists()  # nothing half-written where the checkpoint goes
    stopped_at = saved_epoch(state)
    log = tmp_path / "resume.log"
    resumed = start_cli("train", "--model", "mlp", "--epochs", str(EPOCHS), "--out", str(out), "--resume", log=log)
    assert resumed.wait(timeout=300) == 0, log.read_text()[-3000:]
    assert first_epoch_line(log.read_text()) == stopped_at + 1
    assert (out / "model.json").is_file() and not state.parent.parent.exists()


# ----------------------------------------------------------------------------------------------------- the lock


def test_the_lock_file_is_removed_on_release_and_on_ctrl_c(tmp_path):
    path = tmp_path / ".model.lock"
    with file_lock(path):
        assert path.exists() and _lock_busy(path)  # flock excludes every other open file, in this process too
    assert not path.exists()
    with pytest.raises(KeyboardInterrupt), file_lock(path):
        raise KeyboardInterrupt
    assert not path.exists()
    assert _lock_busy(path) is False and not path.exists()  # asking never creates it


def test_the_lock_excludes_while_holders_remove_it(tmp_path):
    """Threads take the lock repeatedly and do a read-sleep-write increment under it; with the file removed at every
    release, a waiter that wins the removed file must retry on the new one, or increments get lost."""
    path = tmp_path / ".model.lock"
    counter = tmp_path / "counter"
    counter.write_text("0")
    holders: list[int] = []

    def worker() -> None:
        for _ in range(15):
            with file_lock(path):
                holders.append(threading.get_ident())
                value = int(counter.read_text())
                time.sleep(0.002)
                counter.write_text(str(value + 1))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert int(counter.read_text()) == 4 * 15 and len(set(holders)) == 4
    assert not path.exists()
