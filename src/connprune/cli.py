"""The ``connprune`` command line (typer). User errors exit with status 2 and one line on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from connprune import __version__
from connprune import data as data_mod
from connprune import models as models_mod
from connprune.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Connectivity-aware pruning for PyTorch.")
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

DataDirOpt = typer.Option(None, "--data-dir", help="Where data sets live (default: $CONNPRUNE_DATA or ./data).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else.")
ModelParamOpt = typer.Option([], "--model-param", help="Model constructor option key=value, repeatable (e.g. "
                             "small_input=true, widths=[512,512,512]; see `connprune models`).")


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    _state["debug"] = debug
    if version:
        print(__version__)
        raise typer.Exit()


def emit(payload: Any, as_json: bool, table: Table | None = None) -> None:
    """Print ``payload`` as JSON (``--json``) or ``table`` for people (under torchrun: rank 0 only)."""
    from connprune.train.distributed import is_main

    if not is_main():
        return
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2) + "\n")
    elif table is not None:
        out.print(table)


def make_table(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(value: Any) -> str:
    """Floats to 4 decimals, or 4 significant digits where 4 decimals would hide them (heat distances ~1e-6)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.3e}" if 0.0 < abs(value) < 1e-3 else f"{value:.4f}"


@app.command()
def models(as_json: bool = JsonOpt) -> None:
    """The model zoo: name, input shape, classes, params and MACs at the default input."""
    from connprune.measure import cost

    rows = []
    for name in models_mod.names():
        spec = models_mod.spec(name)
        model = models_mod.create(name)
        measured = cost(model, spec.default_input_shape)
        rows.append({"name": name, "family": spec.family, "input_shape": list(spec.default_input_shape),
                     "classes": spec.default_num_classes, "params": measured.params, "macs": measured.macs,
                     "description": spec.description})
    table = make_table("connprune model zoo", ["name", "input", "classes", "params", "MACs", "description"],
                       [[r["name"], "×".join(map(str, r["input_shape"])), r["classes"], f"{r['params']:,}",
                         f"{r['macs']:,}", r["description"]] for r in rows])
    emit(rows, as_json, table)


@app.command()
def datasets(data_dir: Optional[Path] = DataDirOpt, as_json: bool = JsonOpt) -> None:
    """The data sets, whether their files are found under the data dir, and where to get them."""
    rows = []
    for name in data_mod.names():
        found = data_mod.find(name, data_dir)
        info = data_mod.info(name)
        rows.append({"name": name, "available": found.available, "location": found.location,
                     "input_shape": list(info.input_shape), "classes": info.num_classes, "source": found.source})
    table = make_table(f"data sets under {data_mod.resolve_data_dir(data_dir)}",
                       ["name", "found", "input", "classes", "location / where to get it"],
                       [[r["name"], "yes" if r["available"] else "no", "×".join(map(str, r["input_shape"])),
                         r["classes"], r["location"] or r["source"]] for r in rows])
    emit(rows, as_json, table)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="A zoo model name (see `connprune models`)."),
    data: str = typer.Option("digits", "--data", help="Data set name (see `connprune datasets`)."),
    data_dir: Optional[Path] = DataDirOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Epochs (default: the data set's recipe)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="sgd or adam."),
    seed: int = typer.Option(0, "--seed"),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint directory to write."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last finished epoch."),
    model_param: list[str] = ModelParamOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a dense model and write a checkpoint directory."""
    from connprune.experiments.jobs import TrainJob, parse_param_values, train_dense

    recipe = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer).items()
              if v is not None}
    job = TrainJob.build(model=model, data=data, out=out_dir, data_dir=data_dir, seed=seed, resume=resume,
                         progress=not as_json, model_options=parse_param_values(model_param, "--model-param"),
                         recipe=recipe)
    result = train_dense(job)
    table = make_table(f"trained {model} on {data} → {out_dir}", ["metric", "value"],
                       [[k, v] for k, v in result.items() if not isinstance(v, (dict, list))])
    emit(result, as_json, table)


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint directory."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the one it was trained on)."),
    data_dir: Optional[Path] = DataDirOpt,
    shift: str = typer.Option("none", "--shift", help="none, NAME:SEVERITY, all, a list, or a shift data set."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions."),
    with_cost: bool = typer.Option(False, "--cost", help="Also params, MACs and latency at batch 1 and 64."),
    connectivity: Optional[Path] = typer.Option(
        None, "--connectivity", help="Reference checkpoint: also N2NSkip's heat-diffusion distance F to it."),
    heat_taps: str = typer.Option("all", "--heat-taps", help="With --connectivity: conv edges from any kernel tap "
                                  "(all) or the [0, 0] tap only (first: the N2NSkip code release)."),
    scree: Optional[Path] = typer.Option(None, "--scree", help="With --connectivity: save the scree diagram "
                                         "alpha(K, t) of both networks as this PNG."),
    as_json: bool = JsonOpt,
) -> None:
    """Accuracy of a checkpoint, clean and under distribution shift (and its cost with --cost)."""
    from connprune.experiments.jobs import EvalJob, evaluate_job

    job = EvalJob.build(checkpoint=checkpoint, data=data, data_dir=data_dir, shift=shift, seed=seed, cost=with_cost,
                        connectivity=connectivity, heat_taps=heat_taps, scree=scree)
    result, rows, name = evaluate_job(job)
    emit(result, as_json, make_table(f"{checkpoint} on {name} ({result['samples']} test images)",
                                     ["evaluation", "value"], rows))


@app.command("methods")
def methods_cmd(as_json: bool = JsonOpt) -> None:
    """Every pruning method: name, kind, paper, parameters with defaults."""
    from connprune import methods as methods_mod

    rows = [methods_mod.get(name).describe() for name in methods_mod.names()]
    table = make_table("connprune pruning methods", ["name", "kind", "parameters (defaults)", "paper"],
                       [[r["name"], r["kind"], ", ".join(f"{k}={v}" for k, v in r["parameters"].items()),
                         r["paper"]] for r in rows])
    emit(rows, as_json, table)


@app.command()
def prune(
    method: str = typer.Option(..., "--method", help="A method name (see `connprune methods`)."),
    sparsity: str = typer.Option("0.5", "--sparsity", help="Fraction of prunable weights to remove, or auto."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Trained checkpoint to prune."),
    model: Optional[str] = typer.Option(None, "--model", help="For at-initialisation methods: model name."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the checkpoint's)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="For at-initialisation methods: epochs to train."),
    param: list[str] = typer.Option([], "--param", help="Method parameter key=value (repeatable)."),
    model_param: list[str] = ModelParamOpt,
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", help="Fine-tune with masks enforced."),
    data_dir: Optional[Path] = DataDirOpt,
    shift: str = typer.Option("none", "--shift", help="Evaluate under shift before and after (see eval)."),
    seed: int = typer.Option(0, "--seed"),
    no_shrink: bool = typer.Option(False, "--no-shrink", help="Keep removed units as masked zeros."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint directory for the pruned model."),
    as_json: bool = JsonOpt,
) -> None:
    """Prune a model and write the (physically smaller) checkpoint with metrics.json."""
    from connprune.experiments.jobs import PruneJob, parse_param_values, parse_sparsity, prune_job

    job = PruneJob.build(method=method, sparsity=parse_sparsity(sparsity), out=out_dir, checkpoint=checkpoint,
                         model=model, data=data, epochs=epochs, params=parse_param_values(param),
                         finetune_epochs=finetune_epochs, data_dir=data_dir, shift=shift, seed=seed,
                         shrink=not no_shrink, progress=not as_json,
                         model_options=parse_param_values(model_param, "--model-param"))
    metrics = prune_job(job)
    if metrics.get("budget_note"):
        err.print(f"[yellow]note:[/] {metrics['budget_note']}", highlight=False, soft_wrap=True)
    shown = ["target_sparsity", "masked_sparsity", "achieved_sparsity", "nonzero_weights", "params_before",
             "params_after", "macs_before", "macs_after", "acc_before", "acc_pruned", "acc_after", "prune_seconds",
             "finetune_seconds"]
    emit(metrics, as_json, make_table(f"{method} → {out_dir}", ["metric", "value"],
                                      [[k, metrics[k]] for k in shown if k in metrics]))


@app.command()
def run(
    config: Path = typer.Argument(..., help="The experiment config (YAML; see configs/)."),
    out_dir: Path = typer.Option(..., "--out", help="Directory for checkpoints, experiment.json and runs.db."),
    store: Optional[str] = typer.Option(None, "--store", help="Results store URL: sqlite:///path.db or "
                                        "postgresql://user@host:port/db (default: sqlite in --out)."),
    resume: bool = typer.Option(False, "--resume", help="Reclaim runs of killed workers and retry failed ones."),
    jobs: int = typer.Option(1, "--jobs", help="Worker processes (each claims runs from the store)."),
    data_dir: Optional[Path] = DataDirOpt,
) -> None:
    """Run an experiment grid (models × methods × sparsities × seeds), resumably, into a results store."""
    from connprune.experiments.runner import run_experiment

    summary = run_experiment(config, out_dir, store_url=store, resume=resume, jobs=jobs, data_dir=data_dir,
                             console=err)
    counts = summary.counts
    err.print(f"{summary.total} runs: {counts['done']} done, {counts['failed']} failed, {counts['running']} running "
              f"elsewhere, {counts['pending']} pending ({summary.seconds:.1f} s); store {summary.store_url}; "
              f"next: connprune report {out_dir}", highlight=False, soft_wrap=True)
    if counts["running"]:
        err.print(f"{counts['running']} runs are claimed by other workers; if those died, rerun with --resume",
                  highlight=False)
    if summary.failed:
        for row in summary.failed[:10]:
            last = ((row["error"] or "").strip().splitlines() or ["(no message)"])[-1]
            err.print(f"[red]failed[/] {row['key']}: {last}", highlight=False)
        raise typer.Exit(1)


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="The --out directory of `connprune run`."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Markdown file to write (default: DIR/report.md)."),
    store: Optional[str] = typer.Option(None, "--store", help="Results store URL (default: the one DIR used)."),
) -> None:
    """Tables (mean ± std over seeds) and PNG plots from an experiment's results store."""
    from connprune.experiments.report import build_report, figures_of

    path = build_report(run_dir, out_file, store_url=store)
    out.print(f"wrote {path} and {len(figures_of(path))} figures", highlight=False, soft_wrap=True)


@app.command()
def demo(
    out_dir: Path = typer.Option(Path("demo-out"), "--out", help="Where results.json, report.md and plots go."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """Zero-download showcase on scikit-learn's digits: train, evaluate clean and shifted, report."""
    from connprune.experiments.demo import run_demo

    report = run_demo(out_dir, seed=seed)
    out.print(f"wrote {report}")


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint directory."),
    fmt: str = typer.Option(..., "--format", help="onnx (needs pip install 'connprune[export]') or pt2."),
    out_file: Path = typer.Option(..., "--out", help="The file to write (refused if it exists, unless --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    as_json: bool = JsonOpt,
) -> None:
    """Export a checkpoint for deployment (masks applied, BatchNorm folded, shrunk widths), checked against it."""
    from connprune.experiments.export import export_checkpoint

    report = export_checkpoint(checkpoint, fmt, out_file, overwrite=overwrite)  # type: ignore[arg-type]
    rows = [["file", report.path], ["bytes", f"{report.bytes:,}"],
            ["input shape", "×".join(map(str, report.input_shape))], ["params", f"{report.params:,}"],
            ["MACs", f"{report.macs:,}"],
            ["BatchNorms folded", report.batchnorms_folded], ["BatchNorms kept", len(report.batchnorms_kept)]]
    rows += [[f"relative error: {check}", error] for check, error in report.errors.items()]
    emit(report.to_json(), as_json, make_table(f"{checkpoint} exported as {report.format}", ["export", "value"],
                                               rows))
    if not as_json:
        out.print(f"wrote {report.path}: max relative error vs the checkpoint {report.max_relative_error:.3g} "
                  f"(bound {report.tolerance:g})", highlight=False, soft_wrap=True)


def main() -> None:
    """Entry point: run the app, turning user errors into one line on stderr and exit status 2."""
    try:
        app()
    except UserError as exc:
        if _state["debug"]:
            raise
        err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(2)
