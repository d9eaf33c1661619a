"""examples/own_model.py runs from a checkout in a fresh process, and its checkpoints reload in other fresh
processes, through the API (inside the example) and through ``connprune eval --model own_model:build``.

The oracle is the example's own in-process evaluation: a reloaded model must give the test accuracy the model had
when it was saved, and the CLI must agree with it on the same test split.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def example_run(tmp_path_factory) -> tuple[Path, dict[str, dict[str, float]]]:
    out = tmp_path_factory.mktemp("own")
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import own_model; "
            "print('ROWS', json.dumps(own_model.main(own_model.Path(sys.argv[2]))))")
    done = subprocess.run([sys.executable, "-c", code, str(EXAMPLES), str(out)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(next(line for line in done.stdout.splitlines() if line.startswith("ROWS "))[5:])
    return out, rows


def test_the_example_prunes_fine_tunes_and_reloads_in_a_fresh_process(example_run):
    _, rows = example_run
    assert rows["dense"]["accuracy"] > 0.9
    for method in ("l1-filter", "snacs"):
        row = rows[method]
        assert row["reloaded_accuracy"] == row["accuracy"]
        assert abs(row["sparsity"] - 0.5) < 0.02 and row["accuracy"] > 0.8
    assert rows["l1-filter"]["params"] < 0.6 * rows["dense"]["params"]  # physically smaller


def test_the_cli_evaluates_the_saved_user_model_through_its_factory(example_run):
    out, rows = example_run
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(EXAMPLES), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "connprune", "eval", "--checkpoint", str(out / "snacs"), "--model",
               "own_model:build", "--data", "digits", "--json"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["accuracy"] == pytest.approx(rows["snacs"]["accuracy"], abs=1e-9)
    refused = subprocess.run(command[:6] + ["--data", "digits"], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--model own_model:build" in refused.stderr
