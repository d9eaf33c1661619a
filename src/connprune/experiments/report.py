"""``connprune report DIR``: Markdown tables and PNG plots from the results store of ``connprune run``.

Every number in the tables is computed from the store's columns (``acc_after``, ``achieved_sparsity``, ...): one run
per seed, shown as the mean, and ``mean ± std`` (the sample standard deviation) when there are several seeds.
Accuracies and sparsities have 4 decimals, seconds 2, parameters and MACs are integers.

Written: ``FILE.md`` (default ``DIR/report.md``) and its figures in ``<FILE stem>-figures/`` beside it: per model,
accuracy vs sparsity (with the dense accuracy and the paper's numbers where the config names them; a logit sparsity
axis where the points crowd towards 1), accuracy vs MACs, and, when shifts were evaluated, each method's shifted
accuracy against the dense model's (the headline question), clean vs shifted accuracy (lines) and accuracy per
corruption (a heat map coloured over the data's range); prune time per method; training curves of the dense models.
The report opens with a two-sentence takeaway computed from the numbers (:func:`takeaway`).
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from connprune.errors import UserError
from connprune.experiments.config import ExperimentConfig, paper_accuracy
from connprune.experiments.store import DONE, FAILED, PENDING, RUNNING, Store, default_url
from connprune.utils.io import atomic_dir, atomic_path, read_json

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from connprune.experiments.plots import Drawn

MISSING = "—"


# -- numbers ---------------------------------------------------------------------------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Sequence[Any], digits: int = 4) -> str:
    """``mean`` or ``mean ± std`` of ``values`` (``—`` when there are none); equal integers stay integers."""
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not values:
        return MISSING
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values) and len(set(values)) == 1:
        return f"{values[0]:,}"
    mean, std = mean_std(values)
    if all(isinstance(v, int) for v in values):
        return f"{mean:,.0f}" + (f" ± {std:,.0f}" if len(values) > 1 else "")
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if len(values) > 1 else "")


def markdown_table(columns: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def per_corruption(shift: dict[str, float]) -> dict[str, float]:
    """``{"name:severity": acc}`` averaged over severities into ``{"name": acc}`` (shift data sets kept as they
    are; ``"mean"`` dropped)."""
    groups: dict[str, list[float]] = defaultdict(list)
    for key, value in shift.items():
        if key != "mean":
            groups[key.split(":")[0]].append(float(value))
    return {k: statistics.fmean(v) for k, v in groups.items()}


# -- the takeaway ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One method at one sparsity on one model: accuracy after fine-tuning, clean and mean shifted (means over
    seeds; ``sparsity`` None for methods that choose it, ``shifted`` None where no shift was evaluated)."""

    method: str
    sparsity: float | None
    accuracy: float
    shifted: float | None


def _compared_sparsity(points: Sequence[Point]) -> tuple[float | None, int]:
    """The highest sparsity that every method reached, else the highest reached by the most methods; with how many
    methods reached it (None, 0 without fixed sparsities)."""
    reached: dict[float, set[str]] = defaultdict(set)
    for point in points:
        if point.sparsity is not None:
            reached[point.sparsity].add(point.method)
    if not reached:
        return None, 0
    sparsity = max(reached, key=lambda s: (len(reached[s]), s))
    return sparsity, len(reached[sparsity])


def _accuracy_sentence(model: str, points: Sequence[Point], at: float | None, count: int,
                       dense: float | None) -> str:
    """Which method keeps the most clean accuracy at sparsity ``at`` (None: among the 'auto' ones), against dense."""
    methods = len({p.method for p in points if at is None or p.sparsity is not None})
    share = "both" if count == methods == 2 else f"all {methods}" if count == methods else f"{count} of {methods}"
    where = (f"at {at:g} sparsity, the highest that {share} methods reached" if at is not None
             else "among methods that choose their own sparsity")
    ranked = sorted((p for p in points if p.sparsity == at), key=lambda p: -p.accuracy)
    best = ranked[0]
    text = f"On {model} {where}, {best.method} keeps the most accuracy: {best.accuracy:.4f} after fine-tuning"
    if dense is not None:
        text += f", {best.accuracy - dense:+.4f} against the dense model's {dense:.4f}"
    if len(ranked) > 1:
        text += f" (next: {ranked[1].method}, {ranked[1].accuracy:.4f})"
    return text + "."


def _shift_sentence(points: Sequence[Point], at: float | None, dense_shifted: float | None) -> str:
    """How the pruned models' mean shifted accuracy at sparsity ``at`` compares with the dense model's."""
    shifted = [p for p in points if p.sparsity == at and p.shifted is not None]
    if not shifted:
        return "No shifted accuracy was recorded there, so robustness is not compared."
    low, high = min(p.shifted for p in shifted), max(p.shifted for p in shifted)  # type: ignore[type-var]
    span = f"{low:.4f}" if len(shifted) == 1 else f"{low:.4f} to {high:.4f}"
    subject = "the pruned model reaches" if len(shifted) == 1 else "the pruned models reach"
    text = f"Under distribution shift{' at that sparsity' if at is not None else ''} {subject} {span} mean accuracy"
    if dense_shifted is None:
        return text + "; no dense model was evaluated under shift to compare with."
    kept = [p.method for p in shifted if p.shifted >= dense_shifted]  # type: ignore[operator]
    if len(shifted) == 1:
        verdict = "it matches or beats it" if kept else "it falls short of it"
    elif len(kept) == len(shifted):
        verdict = ("both" if len(kept) == 2 else f"all {len(kept)}") + " match or beat it"
    else:
        verdict = f"{len(kept)} of {len(shifted)} match or beat it" + (f" ({', '.join(kept)})" if kept else "")
    return text + f" against the dense model's {dense_shifted:.4f}: {verdict}."


def takeaway(model: str, points: Sequence[Point], dense: float | None, dense_shifted: float | None) -> str:
    """Two sentences computed from the numbers: which method keeps the most accuracy at the highest sparsity the
    methods share (:func:`_compared_sparsity`), against the dense model; and how the pruned models' mean shifted
    accuracy at that sparsity compares with the dense model's."""
    if not points:
        raise ValueError("a takeaway needs at least one point")
    at, count = _compared_sparsity(points)
    return f"{_accuracy_sentence(model, points, at, count, dense)} {_shift_sentence(points, at, dense_shifted)}"


# -- loading ---------------------------------------------------------------------------------------------------------


def _open(run_dir: Path, store_url: str | None) -> tuple[Store, dict[str, dict[str, Any]]]:
    """The store of ``run_dir`` and the configs run there (hash → {name, config})."""
    record_path = run_dir / "experiment.json"
    record = read_json(record_path) if record_path.is_file() else None
    if store_url is None:
        if record is not None and record.get("store"):
            store_url = record["store"]
        elif (run_dir / "runs.db").is_file():
            store_url = default_url(run_dir)
        else:
            raise UserError(f"{run_dir} has no experiment.json or runs.db; pass the --out directory of "
                            "`connprune run` (or --store URL)")
    store = Store(store_url)
    configs = {h: {"name": c["name"], "config": c["config"]} for h, c in (record or {}).get("configs", {}).items()}
    if not configs:
        configs = store.configs()
    if not configs:
        store.close()
        raise UserError(f"the store {store.display_url} holds no experiment; run `connprune run CONFIG --out "
                        f"{run_dir}` first")
    return store, configs


def _config(raw: dict[str, Any]) -> ExperimentConfig | None:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError:
        return None


# -- the report ------------------------------------------------------------------------------------------------------


class _Section:
    """The report of one config (one config hash)."""

    def __init__(self, config_hash: str, name: str, config: ExperimentConfig | None, runs: list[dict[str, Any]],
                 dense: list[dict[str, Any]], figures: Path, link_dir: str, prefix: str) -> None:
        self.hash, self.name, self.config = config_hash, name, config
        self.runs, self.dense = runs, dense
        self.done = [r for r in runs if r["status"] == DONE]
        self.figures, self.link_dir, self.prefix = figures, link_dir, prefix
        labels = [m.display for m in config.methods] if config else []
        labels += sorted({r["label"] for r in runs} - set(labels))
        self.labels = [label for label in labels if any(r["label"] == label for r in runs)]
        self.colors = _colors(self.labels)
        models = list(config.models) if config else []
        self.models = [m for m in models + sorted({r["model"] for r in runs} - set(models))
                       if any(r["model"] == m for r in runs)]
        self.has_shift = any(r["metrics"] and r["metrics"].get("shift_acc_after") for r in self.done)
        self.has_paper = config is not None and config.paper is not None and bool(config.paper.accuracy)
        self.images: list[Path] = []

    # grouping
    def groups(self, model: str) -> list[tuple[str, str, list[dict[str, Any]]]]:
        """(label, sparsity, runs over seeds) of ``model``, in the config's method order, then by sparsity."""
        buckets: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for row in self.done:
            if row["model"] == model:
                buckets[(row["label"], row["sparsity"])].append(row)
        order = {label: i for i, label in enumerate(self.labels)}
        keys = sorted(buckets, key=lambda k: (order.get(k[0], 99), _sparsity_sort(k[1])))
        return [(label, sparsity, sorted(buckets[(label, sparsity)], key=lambda r: r["seed"]))
                for label, sparsity in keys]

    def dense_rows(self, model: str) -> list[dict[str, Any]]:
        return sorted([d for d in self.dense if d["model"] == model], key=lambda d: d["seed"])

    def figure(self, name: str) -> Path:
        path = self.figures / f"{self.prefix}{name}.png"
        self.images.append(path)
        return path

    def link(self, drawn: Drawn, alt: str) -> str:
        return f"![{alt}]({self.link_dir}/{drawn.path.name})"

    # parts
    def header(self) -> str:
        counts = {s: sum(r["status"] == s for r in self.runs) for s in (DONE, FAILED, RUNNING, PENDING)}
        seeds = sorted({r["seed"] for r in self.runs})
        lines = [f"Config hash `{self.hash}`: {len(self.runs)} runs in the store — {counts[DONE]} done, "
                 f"{counts[FAILED]} failed, {counts[RUNNING]} running, {counts[PENDING]} pending."]
        if self.config is not None:
            c = self.config
            recipe = c.recipe()
            lines.append(f"Data `{c.data}`; dense training: {_epochs(recipe['epochs'])}, {recipe['optimizer']} lr "
                         f"{recipe['lr']}, batch {recipe['batch_size']}, {recipe['schedule']} schedule; fine-tune "
                         f"after pruning a trained model: {_epochs(c.fine_tune.epochs)}; methods that prune at "
                         f"initialisation train {_epochs(recipe['epochs'])}; shift: `{c.shift}`.")
            if c.description:
                lines.append(c.description.strip())
        lines.append(f"Numbers are over {len(seeds)} seed(s) ({', '.join(map(str, seeds))}): the mean, and "
                     "mean ± sample standard deviation where there are several. Accuracies are top-1 fractions; "
                     "'acc pruned' is right after pruning, 'acc after' after fine-tuning (or training, for methods "
                     "that prune at initialisation).")
        return "\n\n".join(lines)

    def dense_table(self) -> str | None:
        rows = []
        for model in self.models:
            dense = self.dense_rows(model)
            if not dense:
                continue
            rows.append([model, len(dense), fmt([d["accuracy"] for d in dense]), fmt([d["params"] for d in dense]),
                         fmt([d["macs"] for d in dense]),
                         fmt([(d["metrics"] or {}).get("epochs") for d in dense]),
                         fmt([d["train_seconds"] for d in dense], 2)])
        if not rows:
            return None
        return markdown_table(["model", "seeds", "accuracy", "params", "MACs", "epochs", "train s"], rows)

    def results_table(self, model: str) -> str:
        columns = ["method", "target sparsity", "achieved sparsity", "params after", "MACs after", "acc pruned",
                   "acc after"]
        if self.has_paper:
            columns.append("paper acc")
        if self.has_shift:
            columns += ["shifted acc (mean)", "relative robustness"]
        columns += ["prune s", "fine-tune s", "seeds"]
        rows = []
        for label, sparsity, runs in self.groups(model):
            row = [label, sparsity, fmt([r["achieved_sparsity"] for r in runs]),
                   fmt([r["params_after"] for r in runs]), fmt([r["macs_after"] for r in runs]),
                   fmt([r["acc_pruned"] for r in runs]), fmt([r["acc_after"] for r in runs])]
            if self.has_paper:
                paper = paper_accuracy(self.config, model, label, _sparsity_value(sparsity))  # type: ignore[arg-type]
                row.append(f"{paper:.4f}" if paper is not None else MISSING)
            if self.has_shift:
                row += [fmt([r["shift_acc_after"] for r in runs]),
                        fmt([r["shift_acc_after"] / r["acc_after"] for r in runs if r["shift_acc_after"] is not None
                             and r["acc_after"]])]
            row += [fmt([r["prune_seconds"] for r in runs], 2), fmt([r["finetune_seconds"] for r in runs], 2),
                    len(runs)]
            rows.append(row)
        return markdown_table(columns, rows)

    def accuracy_plots(self, model: str) -> list[str]:
        from connprune.experiments.plots import errorbar_curves

        curves: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        by_macs: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        paper: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for label, sparsity, runs in self.groups(model):
            acc = mean_std([r["acc_after"] for r in runs])
            curves[label].append((statistics.fmean(r["achieved_sparsity"] for r in runs), *acc))
            by_macs[label].append((statistics.fmean(r["macs_after"] for r in runs), *acc))
            if self.has_paper:
                value = paper_accuracy(self.config, model, label, _sparsity_value(sparsity))  # type: ignore[arg-type]
                if value is not None and sparsity != "auto":
                    paper[label].append((float(sparsity), value))
        dense = self.dense_rows(model)
        dense_acc = statistics.fmean(d["accuracy"] for d in dense) if dense else None
        styles = {label: {"color": self.colors[label]} for label in curves}
        title = f"{model} on {self.config.data if self.config else 'its data'}"
        parts = []
        path = errorbar_curves(curves, self.figure(f"{model}-accuracy-vs-sparsity"), xlabel="achieved sparsity "
                               "(fraction of prunable weights removed)", ylabel="test accuracy after fine-tuning",
                               title=f"{title}: accuracy vs sparsity", reference=dense_acc, markers=paper,
                               styles=styles, xscale="sparsity")
        parts.append(self.link(path, f"{model}: accuracy vs sparsity"))
        dense_point = None
        if dense and all(d["macs"] for d in dense):
            dense_point = {"dense model": (statistics.fmean(d["macs"] for d in dense), dense_acc)}
        path = errorbar_curves(by_macs, self.figure(f"{model}-accuracy-vs-macs"), xlabel="MACs after pruning "
                               "(batch 1, log scale)", ylabel="test accuracy after fine-tuning",
                               title=f"{title}: accuracy vs MACs", reference=dense_acc, styles=styles,
                               xscale="log", singles=dense_point)
        parts.append(self.link(path, f"{model}: accuracy vs MACs"))
        return parts

    def shift_part(self, model: str) -> str | None:
        from connprune.experiments.plots import errorbar_curves, heatmap

        groups = [(label, sparsity, [r for r in runs if r["metrics"] and r["metrics"].get("shift_acc_after")])
                  for label, sparsity, runs in self.groups(model)]
        groups = [g for g in groups if g[2]]
        if not groups:
            return None
        names: list[str] = []
        for _, _, runs in groups:
            for run in runs:
                for name in per_corruption(run["metrics"]["shift_acc_after"]):
                    if name not in names:
                        names.append(name)
        row_labels, values, table = [], [], []
        before = self.dense_under_shift(model)
        if before:
            cells = [[per_corruption(r["metrics"]["shift_acc_before"]).get(n) for r in before] for n in names]
            row_labels.append("dense")
            values.append([mean_std([r["acc_before"] for r in before])[0]]
                          + [mean_std(c)[0] if all(v is not None for v in c) else math.nan for c in cells]
                          + [mean_std([r["shift_acc_before"] for r in before])[0]])
            table.append(["dense", MISSING, fmt([r["acc_before"] for r in before])]
                         + [fmt(c) for c in cells] + [fmt([r["shift_acc_before"] for r in before])])
        for label, sparsity, runs in groups:
            cells = [[per_corruption(r["metrics"]["shift_acc_after"]).get(n) for r in runs] for n in names]
            row_labels.append(f"{label} @ {sparsity}")
            values.append([mean_std([r["acc_after"] for r in runs])[0]]
                          + [mean_std(c)[0] if all(v is not None for v in c) else math.nan for c in cells]
                          + [mean_std([r["shift_acc_after"] for r in runs])[0]])
            table.append([label, sparsity, fmt([r["acc_after"] for r in runs])] + [fmt(c) for c in cells]
                         + [fmt([r["shift_acc_after"] for r in runs])])
        keys = {k for _, _, runs in groups for r in runs for k in r["metrics"]["shift_acc_after"]}
        severities = "averaged over the severities evaluated" if any(":" in k for k in keys) else ""
        heat = heatmap(row_labels, ["clean"] + names + ["mean shifted"], values,
                       self.figure(f"{model}-shift-heatmap"),
                       title=f"{model}: accuracy per corruption ({severities or 'as evaluated'})")
        curves: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
        styles: dict[str, dict[str, Any]] = {}
        for label, _, runs in groups:
            x = statistics.fmean(r["achieved_sparsity"] for r in runs)
            curves[f"{label} clean"].append((x, *mean_std([r["acc_after"] for r in runs])))
            curves[f"{label} shifted"].append((x, *mean_std([r["shift_acc_after"] for r in runs])))
            styles[f"{label} clean"] = {"color": self.colors[label]}
            styles[f"{label} shifted"] = {"color": self.colors[label], "linestyle": "--", "marker": "s"}
        lines = errorbar_curves(curves, self.figure(f"{model}-clean-vs-shifted"),
                                xlabel="achieved sparsity", ylabel="test accuracy",
                                title=f"{model}: clean (solid) vs mean shifted (dashed) accuracy", styles=styles,
                                xscale="sparsity")
        text = [f"Accuracy after fine-tuning, clean and per corruption ({severities or 'as evaluated'}); the last "
                "column is the mean over every shifted set evaluated. The dense row is the model before pruning.",
                markdown_table(["method", "sparsity", "clean"] + names + ["mean shifted"], table),
                self.link(self.shift_vs_dense(model, groups), f"{model}: pruned vs dense under shift"),
                self.link(lines, f"{model}: clean vs shifted accuracy"), self.link(heat, f"{model}: per corruption")]
        return "\n\n".join(text)

    def dense_under_shift(self, model: str) -> list[dict[str, Any]]:
        """One run per seed that pruned the trained dense ``model`` and evaluated it under shift first: its
        ``acc_before`` and ``shift_acc_before`` are the dense model's."""
        found = {r["seed"]: r for label, sparsity, runs in self.groups(model) for r in runs
                 if r["needs_trained"] and r["metrics"] and r["metrics"].get("shift_acc_before")}
        return [found[seed] for seed in sorted(found)]

    def dense_shifted(self, model: str) -> float | None:
        """The dense model's mean shifted accuracy (over seeds); None where no run evaluated it."""
        before = self.dense_under_shift(model)
        return mean_std([r["shift_acc_before"] for r in before])[0] if before else None

    def shift_vs_dense(self, model: str, groups: list[tuple[str, str, list[dict[str, Any]]]]) -> Drawn:
        """The headline figure: each method's mean shifted accuracy after pruning against the dense model's."""
        from connprune.experiments.plots import Pair, pruned_vs_dense

        dense = self.dense_shifted(model)
        pairs = [Pair(f"{label} @ {sparsity}", mean_std([r["shift_acc_after"] for r in runs])[0], dense,
                      f"sparsity {sparsity}") for label, sparsity, runs in groups]
        return pruned_vs_dense(pairs, self.figure(f"{model}-shift-vs-dense"),
                               xlabel="mean accuracy under distribution shift (after fine-tuning)",
                               title=f"{model}: pruned (filled) vs dense (hollow) under shift, per method")

    def takeaway(self) -> str | None:
        """The report's two-sentence takeaway, from the first model with finished runs (see :func:`takeaway`)."""
        model = next((m for m in self.models if self.groups(m)), None)
        if model is None:
            return None
        points = [Point(label, None if sparsity == "auto" else float(sparsity),
                        mean_std([r["acc_after"] for r in runs])[0],
                        mean_std([r["shift_acc_after"] for r in runs])[0]
                        if all(r["shift_acc_after"] is not None for r in runs) else None)
                  for label, sparsity, runs in self.groups(model)]
        dense = self.dense_rows(model)
        return takeaway(model, points, mean_std([d["accuracy"] for d in dense])[0] if dense else None,
                        self.dense_shifted(model))

    def timing_part(self) -> str | None:
        from connprune.experiments.plots import bars_with_errors

        if not self.done:
            return None
        rows, bars = [], {}
        for label in self.labels:
            runs = [r for r in self.done if r["label"] == label]
            if not runs:
                continue
            rows.append([label, len(runs), fmt([r["prune_seconds"] for r in runs], 2),
                         fmt([r["finetune_seconds"] for r in runs], 2), fmt([r["wall_seconds"] for r in runs], 2)])
            bars[label] = mean_std([r["prune_seconds"] for r in runs])
        means = [v[0] for v in bars.values() if v[0] > 0]
        log = bool(means) and max(means) / max(min(means), 1e-9) > 50
        path = bars_with_errors(bars, self.figure("prune-time"), ylabel="prune seconds (mean over runs)"
                                + (", log scale" if log else ""), title="time to prune (excluding fine-tuning)",
                                colors=self.colors, log=log)
        return "\n\n".join([
            "Seconds per run, over every model, sparsity and seed of the method: pruning alone, fine-tuning (or "
            "training, for methods that prune at initialisation), and the whole run (with evaluation; training the "
            "dense model is not counted).",
            markdown_table(["method", "runs", "prune s", "fine-tune s", "run s"], rows),
            self.link(path, "prune time per method")])

    def training_part(self) -> str | None:
        from connprune.experiments.plots import training_curves

        histories = {f"{d['model']} seed {d['seed']}": d["metrics"]["history"] for d in self.dense
                     if d["metrics"] and d["metrics"].get("history")}
        if not histories or max(len(h) for h in histories.values()) < 2:
            return None  # one epoch is one point: no curve to draw
        return self.link(training_curves(histories, self.figure("dense-training")), "dense training curves")

    def failures(self) -> str | None:
        failed = [r for r in self.runs if r["status"] == FAILED]
        if not failed:
            return None
        rows = [[f"`{r['key']}`", _last_line(r["error"]).replace("|", "\\|")] for r in failed]
        return ("Failed runs (`connprune run CONFIG --out DIR --resume` retries them):\n\n"
                + markdown_table(["run", "error"], rows))

    def render(self, level: str) -> str:
        parts = [f"{level} {self.name}", self.header()]
        if self.config and self.config.paper and self.config.paper.source:
            parts.append(f"Paper numbers: {self.config.paper.source}.")
        dense = self.dense_table()
        if dense:
            parts += [f"{level}# Dense models", dense]
        for model in self.models:
            if not self.groups(model):
                parts += [f"{level}# {model}", "No finished runs yet."]
                continue
            parts += [f"{level}# {model}", self.results_table(model), *self.accuracy_plots(model)]
            shift = self.shift_part(model) if self.has_shift else None
            if shift:
                parts += [f"{level}## {model} under distribution shift", shift]
        for title, part in (("Prune time", self.timing_part()), ("Dense training", self.training_part()),
                            ("Failures", self.failures())):
            if part:
                parts += [f"{level}# {title}", part]
        return "\n\n".join(parts)


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _colors(labels: list[str]) -> dict[str, Any]:
    from connprune.experiments.plots import series_colors

    return series_colors(labels)


def _sparsity_sort(text: str) -> float:
    return 2.0 if text == "auto" else float(text)


def _sparsity_value(text: str) -> float | str:
    return "auto" if text == "auto" else float(text)


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no message)"


def build_report(run_dir: str | Path, out: str | Path | None = None, *, store_url: str | None = None) -> Path:
    """Write the report of the experiment in ``run_dir`` (see the module docstring); returns the Markdown path."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory; pass the --out directory of `connprune run`")
    out = Path(out) if out is not None else run_dir / "report.md"
    if out.suffix.lower() != ".md":
        raise UserError(f"--out {out}: the report is Markdown; name a .md file")
    figures = out.parent / f"{out.stem}-figures"
    store, configs = _open(run_dir, store_url)
    try:
        loaded = [(h, e, store.runs([h]), store.dense([h])) for h, e in configs.items()]
        display = store.display_url
    finally:
        store.close()
    loaded = [entry for entry in loaded if entry[2]]
    if not loaded:
        raise UserError(f"the store {display} has no runs for the configs of {run_dir}; run `connprune run` first")
    # the figures are drawn into a fresh folder that replaces the old one whole (no stale or half-written PNGs)
    with atomic_dir(figures) as tmp_figures:
        sections = [_Section(h, e["name"], _config(e["config"]), runs, dense, tmp_figures, figures.name,
                             f"{e['name']}-{h[:6]}-" if len(loaded) > 1 else "") for h, e, runs, dense in loaded]
        title = sections[0].name if len(sections) == 1 else f"Experiments in {run_dir}"
        summary = next((text for text in (section.takeaway() for section in sections) if text), None)
        body = [f"# {title}"] + ([f"**Takeaway.** {summary}"] if summary else []) + \
            [f"Results store: `{display}` (every number below is computed from its rows)."]
        if len(sections) == 1:
            body.append(sections[0].render("#").split("\n\n", 1)[1])
        else:
            body += [section.render("##") for section in sections]
    with atomic_path(out) as tmp:
        tmp.write_text("\n\n".join(body) + "\n")
    return out


def figures_of(report: str | Path) -> list[Path]:
    """The PNG files a report links to."""
    report = Path(report)
    import re

    return [report.parent / m for m in re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report.read_text())]
