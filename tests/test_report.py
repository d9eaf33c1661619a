"""`connprune report`: Markdown tables whose numbers are the store's (mean ± std over seeds) and readable PNGs."""

from __future__ import annotations

import random
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from connprune import cli
from connprune.errors import UserError
from connprune.experiments.config import RunSpec, expand, parse_config
from connprune.experiments.report import Point, build_report, figures_of, mean_std, takeaway
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


def fill_store(directory: Path, config_text: str, metrics_of: Callable[[RunSpec], dict | None],
               dense_accuracy: Callable[[int], float]) -> Path:
    """A store in ``directory`` filled the way `connprune run` fills it (no training): every run of the config
    claimed and finished with ``metrics_of(run)``, or failed where that is None; one dense model per seed."""
    loaded = parse_config(config_text, file="synthetic.yaml")
    url = f"sqlite:///{directory / 'runs.db'}"
    with Store(url) as store:
        store.register_config(loaded.hash, loaded.name, loaded.config.model_dump(mode="json", by_alias=True))
        runs = expand(loaded)
        store.add_runs(runs)
        for seed in sorted({run.seed for run in runs}):
            store.put_dense(f"{loaded.hash}/mlp-s{seed}", loaded.hash, "mlp", seed,
                            {"accuracy": dense_accuracy(seed), "train_seconds": 1.5, "epochs": 1,
                             "history": [{"epoch": 1, "train_loss": 1.0, "test_accuracy": 0.9},
                                         {"epoch": 2, "train_loss": 0.5, "test_accuracy": 0.93}]},
                            params=50826, macs=50432, output_dir=None)
        for run in runs:
            assert store.claim(run.key, "test:1")
            metrics = metrics_of(run)
            if metrics is None:
                store.fail(run.key, "Traceback ...\nRuntimeError: synthetic failure", "test:1")
            else:
                assert store.finish(run.key, {"method": run.method, "model": run.model, "data": "digits",
                                              "seed": run.seed, "label": run.label, **metrics}, "test:1")
    _write_experiment(directory, loaded, url)
    return directory


@pytest.fixture
def experiment(tmp_path) -> Path:
    """A store with synthetic random numbers, one run failed."""
    rng = random.Random(0)

    def metrics_of(run: RunSpec) -> dict | None:
        if run.method == "snip" and run.sparsity == 0.9 and run.seed == 2:
            return None
        sparsity = float(run.sparsity)
        return {"target_sparsity": sparsity, "achieved_sparsity": sparsity + rng.uniform(0, 0.01),
                "params_before": 50826, "params_after": int(50826 * (1 - sparsity)) + rng.randint(0, 50),
                "macs_before": 50432, "macs_after": int(50432 * (1 - sparsity)),
                "acc_before": rng.uniform(0.1, 0.95), "acc_pruned": rng.uniform(0.1, 0.9),
                "acc_after": rng.uniform(0.5, 0.95), "prune_seconds": rng.uniform(0.01, 0.5),
                "finetune_seconds": rng.uniform(0.5, 2.0), "shift_acc_before": shift(rng),
                "shift_acc_after": shift(rng), "wall_seconds": rng.uniform(1, 3)}

    return fill_store(tmp_path, CONFIG, metrics_of, lambda seed: rng.uniform(0.9, 0.95))


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
            "mlp-shift-heatmap.png", "mlp-shift-vs-dense.png", "prune-time.png", "dense-training.png"} <= names
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


# -- the takeaway: computed from the numbers -----------------------------------------------------------------------

KNOWN = """\
name: known
models: [mlp]
data: digits
train: {epochs: 1}
methods: [magnitude, snip]
sparsities: [0.5, 0.9]
seeds: [0, 1]
fine-tune: {epochs: 1}
shift: fog:3
"""
# per (method, sparsity): accuracy after fine-tuning and mean shifted accuracy for seeds 0 and 1 (None: failed)
FIRST = {("magnitude", 0.5): ((0.92, 0.94), (0.70, 0.72)), ("magnitude", 0.9): ((0.80, 0.84), (0.60, 0.62)),
         ("snip", 0.5): ((0.90, 0.90), (0.68, 0.70)), ("snip", 0.9): ((0.85, 0.87), (0.70, 0.74))}
SECOND = {**FIRST, ("snip", 0.9): None}  # snip's 0.9 runs failed: 0.5 is the highest sparsity both reached
DENSE = (0.95, 0.97)           # dense accuracy per seed: mean 0.96
DENSE_SHIFTED = (0.66, 0.68)   # the dense model under shift per seed (shift_acc_before): mean 0.67


def known_store(directory: Path, numbers: dict) -> Path:
    def metrics_of(run: RunSpec) -> dict | None:
        entry = numbers[(run.method, float(run.sparsity))]
        if entry is None:
            return None
        (acc, shifted) = (entry[0][run.seed], entry[1][run.seed])
        sparsity = float(run.sparsity)
        return {"target_sparsity": sparsity, "achieved_sparsity": sparsity, "acc_after": acc, "acc_pruned": 0.5,
                "acc_before": DENSE[run.seed], "shift_acc_after": {"fog:3": shifted, "mean": shifted},
                "shift_acc_before": {"fog:3": DENSE_SHIFTED[run.seed], "mean": DENSE_SHIFTED[run.seed]},
                "params_before": 50826, "params_after": round(50826 * (1 - sparsity)), "macs_before": 50432,
                "macs_after": round(50432 * (1 - sparsity)), "prune_seconds": 0.1, "finetune_seconds": 1.0,
                "wall_seconds": 2.0}

    return fill_store(directory, KNOWN, metrics_of, lambda seed: DENSE[seed])


@pytest.mark.parametrize("numbers,expected", [
    (FIRST, "On mlp at 0.9 sparsity, the highest that both methods reached, snip keeps the most accuracy: 0.8600 "
            "after fine-tuning, -0.1000 against the dense model's 0.9600 (next: magnitude, 0.8200). Under "
            "distribution shift at that sparsity the pruned models reach 0.6100 to 0.7200 mean accuracy against the "
            "dense model's 0.6700: 1 of 2 match or beat it (snip)."),
    (SECOND, "On mlp at 0.5 sparsity, the highest that both methods reached, magnitude keeps the most accuracy: "
             "0.9300 after fine-tuning, -0.0300 against the dense model's 0.9600 (next: snip, 0.9000). Under "
             "distribution shift at that sparsity the pruned models reach 0.6900 to 0.7100 mean accuracy against "
             "the dense model's 0.6700: both match or beat it."),
])
def test_the_takeaway_at_the_top_is_computed_from_the_numbers(tmp_path, numbers, expected):
    text = build_report(known_store(tmp_path, numbers)).read_text()
    lines = text.split("\n\n")
    assert lines[0] == "# known" and lines[1] == f"**Takeaway.** {expected}"


def test_takeaway_without_shared_sparsities_or_shift():
    points = [Point("a", 0.5, 0.9, None), Point("a", 0.8, 0.85, None), Point("b", 0.8, 0.87, None),
              Point("c", 0.95, 0.6, None), Point("auto-method", None, 0.99, None)]
    assert takeaway("m", points, None, None) == (
        "On m at 0.8 sparsity, the highest that 2 of 3 methods reached, b keeps the most accuracy: 0.8700 after "
        "fine-tuning (next: a, 0.8500). No shifted accuracy was recorded there, so robustness is not compared.")
    only = [Point("slim", None, 0.8, 0.5)]
    assert takeaway("m", only, 0.9, 0.55) == (
        "On m among methods that choose their own sparsity, slim keeps the most accuracy: 0.8000 after fine-tuning, "
        "-0.1000 against the dense model's 0.9000. Under distribution shift the pruned model reaches 0.5000 mean "
        "accuracy against the dense model's 0.5500: it falls short of it.")


# -- the report's figures, checked through what they draw -----------------------------------------------------------


def test_report_figures_are_fitted_to_the_store(experiment, monkeypatch):
    from connprune.experiments import plots

    drawn: dict[str, plots.Drawn] = {}
    real = plots.save_figure

    def keep(fig, path):
        drawn[Path(path).name] = real(fig, path)
        return drawn[Path(path).name]

    monkeypatch.setattr(plots, "save_figure", keep)
    text = build_report(experiment).read_text()
    with Store(f"sqlite:///{experiment / 'runs.db'}") as store:
        rows = [r for r in store.runs() if r["status"] == "done"]
    groups = {(label, sparsity): [r for r in rows if (r["label"], r["sparsity"]) == (label, sparsity)]
              for label, sparsity in {(r["label"], r["sparsity"]) for r in rows}}

    [sparsity_axes] = drawn["mlp-accuracy-vs-sparsity.png"].axes
    assert sparsity_axes.xscale == "logit"  # 0.5 and 0.9: densities 0.5 and 0.1
    for label in ("magnitude", "snip"):
        expected = sorted([statistics.fmean(r["achieved_sparsity"] for r in runs),
                           statistics.fmean(r["acc_after"] for r in runs)]
                          for (name, _), runs in groups.items() if name == label)
        assert np.allclose(sparsity_axes.series[label], expected)
    spread = [(statistics.fmean(r["achieved_sparsity"] for r in runs), mean + side * std)
              for runs in groups.values() for mean, std in [mean_std([r["acc_after"] for r in runs])]
              for side in (-1, 1)]
    (x0, x1), (y0, y1) = sparsity_axes.xlim, sparsity_axes.ylim
    assert all(x0 < x < x1 and y0 < y < y1 for x, y in spread)
    assert not sparsity_axes.legend_box.overlaps(sparsity_axes.axes_box)

    [heat] = drawn["mlp-shift-heatmap.png"].axes
    shift_table = table_after(text, "### mlp under distribution shift")
    cells = [float(line[c].split(" ± ")[0]) for line in shift_table for c in ("clean", "fog", "gaussian_noise",
                                                                              "mean shifted")]
    assert heat.color_range == pytest.approx((min(cells), max(cells)), abs=5e-5)  # the table shows 4 decimals
    assert [float(t) for t in heat.texts] == pytest.approx(cells, abs=0.0051)  # 2 decimals against 4

    [versus] = drawn["mlp-shift-vs-dense.png"].axes
    dense = {r["seed"]: r["shift_acc_before"] for r in rows if r["needs_trained"]}
    assert versus.series["dense model"][:, 0] == pytest.approx([statistics.fmean(dense.values())] * len(groups))
    for sparsity in ("0.5", "0.9"):
        expected = [statistics.fmean(r["shift_acc_after"] for r in groups[(label, sparsity)])
                    for label in ("magnitude", "snip")]
        assert versus.series[f"sparsity {sparsity}"][:, 0] == pytest.approx(expected)
    assert "report-figures/mlp-shift-vs-dense.png)" in text
