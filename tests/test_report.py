"""`connprune report`: Markdown tables whose numbers are the store's (mean ± std over seeds) and readable PNGs."""

from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

import pytest
from PIL import Image

from connprune import cli
from connprune.errors import UserError
from connprune.experiments.config import expand, parse_config
from connprune.experiments.report import build_report, figures_of
from connprune.experiments.runner import _write_experiment
from connprune.experiments.store import Store

CONFIG = """\
name: synthetic
models: [mlp]
data: digits
train: {epochs: 1}
methods: [magnitude, snip]
sparsities: [0.5, 0.9]
seeds: [0, 1, 2]
fine-tune: {epochs: 1}
shift: gaussian_noise:3,fog:3
paper:
  source: Made-up et al.
  accuracy:
    mlp: {magnitude: {0.9: 0.8125}}
"""


def shift(rng: random.Random) -> dict[str, float]:
    values = {"gaussian_noise:3": rng.uniform(0.3, 0.9), "fog:3": rng.uniform(0.3, 0.9)}
    return {**values, "mean": statistics.fmean(values.values())}


@pytest.fixture
def experiment(tmp_path) -> Path:
    """A store filled the way `connprune run` fills it, with synthetic numbers (no training), one run failed."""
    loaded = parse_config(CONFIG, file="synthetic.yaml")
    rng = random.Random(0)
    url = f"sqlite:///{tmp_path / 'runs.db'}"
    with Store(url) as store:
        store.register_config(loaded.hash, loaded.name, loaded.config.model_dump(mode="json", by_alias=True))
        runs = expand(loaded)
        store.add_runs(runs)
        for seed in (0, 1, 2):
            store.put_dense(f"{loaded.hash}/mlp-s{seed}", loaded.hash, "mlp", seed,
                            {"accuracy": rng.uniform(0.9, 0.95), "train_seconds": 1.5, "epochs": 1,
                             "history": [{"epoch": 1, "train_loss": 1.0, "test_accuracy": 0.9},
                                         {"epoch": 2, "train_loss": 0.5, "test_accuracy": 0.93}]},
                            params=50826, macs=50432, output_dir=None)
        for run in runs:
            assert store.claim(run.key, "test:1")
            if run.method == "snip" and run.sparsity == 0.9 and run.seed == 2:
                store.fail(run.key, "Traceback ...\nRuntimeError: synthetic failure", "test:1")
                continue
            sparsity = float(run.sparsity)
            metrics = {"method": run.method, "model": run.model, "data": "digits", "seed": run.seed,
                       "target_sparsity": sparsity, "achieved_sparsity": sparsity + rng.uniform(0, 0.01),
                       "params_before": 50826, "params_after": int(50826 * (1 - sparsity)) + rng.randint(0, 50),
                       "macs_before": 50432, "macs_after": int(50432 * (1 - sparsity)),
                       "acc_before": rng.uniform(0.1, 0.95), "acc_pruned": rng.uniform(0.1, 0.9),
                       "acc_after": rng.uniform(0.5, 0.95), "prune_seconds": rng.uniform(0.01, 0.5),
                       "finetune_seconds": rng.uniform(0.5, 2.0), "shift_acc_before": shift(rng),
                       "shift_acc_after": shift(rng), "wall_seconds": rng.uniform(1, 3), "label": run.label}
            assert store.finish(run.key, metrics, "test:1")
    _write_experiment(tmp_path, loaded, url)
    return tmp_path


def table_after(text: str, heading: str) -> list[dict[str, str]]:
    """The first Markdown table after ``heading``, as dicts by column."""
    block = text.split(heading + "\n", 1)[1]
    start = block.index("\n|") + 1
    lines = block[start:].split("\n\n", 1)[0].splitlines()
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(columns, [c.strip() for c in line.strip("|").split("|")])) for line in lines[2:]]


def expected(values: list[float], digits: int = 4) -> str:
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def test_report_tables_equal_the_store(experiment):
    report = build_report(experiment)
    text = report.read_text()
    with Store(f"sqlite:///{experiment / 'runs.db'}") as store:
        rows = [r for r in store.runs() if r["status"] == "done"]
        dense = store.dense()
    table = table_after(text, "## mlp")
    assert len(table) == 4
    for line in table:
        runs = [r for r in rows if r["label"] == line["method"] and r["sparsity"] == line["target sparsity"]]
        assert line["seeds"] == str(len(runs))
        assert line["acc after"] == expected([r["acc_after"] for r in runs])
        assert line["acc pruned"] == expected([r["acc_pruned"] for r in runs])
        assert line["achieved sparsity"] == expected([r["achieved_sparsity"] for r in runs])
        assert line["shifted acc (mean)"] == expected([r["shift_acc_after"] for r in runs])
        assert line["relative robustness"] == expected([r["shift_acc_after"] / r["acc_after"] for r in runs])
        assert line["prune s"] == expected([r["prune_seconds"] for r in runs], 2)
        assert line["MACs after"] == f"{runs[0]['macs_after']:,}"
        assert line["paper acc"] == ("0.8125" if (line["method"], line["target sparsity"]) == ("magnitude", "0.9")
                                     else "—")
    snip_high = next(line for line in table if line["method"] == "snip" and line["target sparsity"] == "0.9")
    assert snip_high["seeds"] == "2"  # the failed seed is left out of the mean ...
    assert "synthetic failure" in text and "1 failed" in text  # ... and listed
    dense_table = table_after(text, "## Dense models")
    assert dense_table[0]["accuracy"] == expected([d["accuracy"] for d in dense])
    shift_table = table_after(text, "### mlp under distribution shift")
    fog = [r["metrics"]["shift_acc_after"]["fog:3"] for r in rows
           if r["label"] == "magnitude" and r["sparsity"] == "0.5"]
    assert next(line for line in shift_table if line["method"] == "magnitude" and line["sparsity"] == "0.5")["fog"] \
        == expected(fog)


def test_report_figures_are_real_images(experiment, monkeypatch, capsys):
    out = experiment / "elsewhere" / "summary.md"
    monkeypatch.setattr(sys, "argv", ["connprune", "report", str(experiment), "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 0 and f"wrote {out}" in capsys.readouterr().out
    figures = figures_of(out)
    names = {p.name for p in figures}
    assert {"mlp-accuracy-vs-sparsity.png", "mlp-accuracy-vs-macs.png", "mlp-clean-vs-shifted.png",
            "mlp-shift-heatmap.png", "prune-time.png", "dense-training.png"} <= names
    for path in figures:
        assert path.is_file() and path.parent == out.parent / "summary-figures"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 200
            low, high = zip(*image.convert("RGB").getextrema())
            assert min(low) < 100 and max(high) > 200  # ink on paper, not one colour
            assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or range(2)) > 10


def test_report_errors(tmp_path):
    with pytest.raises(UserError, match="experiment.json"):
        build_report(tmp_path)
    with pytest.raises(UserError, match="not a directory"):
        build_report(tmp_path / "missing")
    with pytest.raises(UserError, match=r"\.md"):
        (tmp_path / "runs.db").touch()
        build_report(tmp_path, tmp_path / "report.txt")
