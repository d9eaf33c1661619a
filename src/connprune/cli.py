"""The ``connprune`` command line (typer).

Every user mistake (a bad flag or value, an unknown name, a missing file, an existing ``--out``) exits with status 2
and one line on stderr that names the problem and the fix; ``--debug`` shows the traceback instead. Ctrl-C exits
with status 130 and says how to continue. ``--json`` keeps stdout to one JSON document; progress and warnings always
go to stderr.
"""

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
from connprune.train.recipes import default_recipe

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Connectivity-aware pruning for PyTorch.")
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

INTERRUPTED = "interrupted: rerun the same command (or add --resume) to continue"
"""What Ctrl-C prints (exit status 130): train keeps its per-epoch state for --resume, a grid's claimed run goes back
to the store, and nothing half-written is left in --out."""


def _recipe_defaults(key: str) -> str:
    """The default recipe's ``key`` per trainable data set, for help texts: ``"digits 30, mnist 10, ..."``."""
    return ", ".join(f"{name} {getattr(default_recipe(name), key)}" for name in data_mod.names()
                     if not data_mod.info(name).shift_only)


DataDirOpt = typer.Option(None, "--data-dir", help="Where data sets live (default: $CONNPRUNE_DATA or ./data).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON document on stdout and nothing else there (progress "
                       "and warnings still go to stderr).")
ModelParamOpt = typer.Option([], "--model-param", help="Model constructor option key=value, repeatable (e.g. "
                             "small_input=true, widths=[512,512,512]; each model's keys: `connprune models`).")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace the checkpoint already in --out (without it an "
                            "existing, non-empty --out is refused).")
RECIPE_HELP = {
    "epochs": f"Training epochs (default: the data set's recipe: {_recipe_defaults('epochs')}).",
    "batch_size": f"Training batch size (default: the data set's recipe: {_recipe_defaults('batch_size')}).",
    "lr": f"Peak learning rate (default: the data set's recipe: {_recipe_defaults('lr')}).",
    "optimizer": f"sgd or adam (default: the data set's recipe: {_recipe_defaults('optimizer')}).",
}


def _show_version(value: bool) -> None:
    if value:
        print(f"connprune {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
    version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    _state["debug"] = debug


def check_out_dir(out_dir: Path, *, overwrite: bool, resume: bool | None = None) -> None:
    """Refuse to replace an existing ``--out`` silently (UserError): a non-empty directory is written only when it
    holds a checkpoint (``model.json``) and ``--overwrite`` (or ``--resume``, for commands that have it: ``resume``
    is None for those that do not) says so."""
    if not out_dir.exists() or (out_dir.is_dir() and not any(out_dir.iterdir())):
        return
    if not out_dir.is_dir():
        raise UserError(f"--out {out_dir} is a file; choose a directory that does not exist yet")
    if not (out_dir / "model.json").is_file():
        raise UserError(f"--out {out_dir} exists and is not a connprune checkpoint (no model.json); it is never "
                        "replaced, even with --overwrite: choose a new --out directory")
    if overwrite or resume:
        return
    also = ", or --resume to continue its training" if resume is not None else ""
    raise UserError(f"--out {out_dir} already holds a checkpoint; pass --overwrite to replace it{also}, or choose a "
                    "new --out directory")


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
    """A rich table of ``rows`` under ``columns``; cells formatted by :func:`_cell`."""
    table = Table(title=title)
    for column in columns:
        table.add_column(column, overflow="fold")  # long paths fold onto the next line instead of being cut
    for row in rows:
        table.add_row(*[_cell(v) for v in row])
    return table


def _cell(value: Any) -> str:
    """Floats to 4 decimals, or 4 significant digits where 4 decimals would hide them (heat distances ~1e-6)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.3e}" if 0.0 < abs(value) < 1e-3 else f"{value:.4f}"


@app.command()
def models(
    with_cost: bool = typer.Option(False, "--cost", help="Also build every model and count its parameters and MACs "
                                   "at the default input (takes seconds; without it nothing is built)."),
    as_json: bool = JsonOpt,
) -> None:
    """The model zoo: name, input shape, classes, the --model-param keys with their defaults (and cost with --cost)."""
    from connprune.models.registry import options

    rows = []
    for name in models_mod.names():
        spec = models_mod.spec(name)
        rows.append({"name": name, "family": spec.family, "input_shape": list(spec.default_input_shape),
                     "classes": spec.default_num_classes, "options": options(name),
                     "description": spec.description})
    if with_cost:
        from connprune.measure import cost

        for row in rows:
            measured = cost(models_mod.create(row["name"]), tuple(row["input_shape"]))
            row.update(params=measured.params, macs=measured.macs)
    columns = ["name", "input", "classes", "--model-param (default)"] + (["params", "MACs"] if with_cost else [])
    table = make_table("connprune model zoo (input and classes follow --data when trained)",
                       [*columns, "description"],
                       [[r["name"], "×".join(map(str, r["input_shape"])), r["classes"],
                         ", ".join(f"{k}={json.dumps(v)}" for k, v in r["options"].items()) or "-",
                         *([f"{r['params']:,}", f"{r['macs']:,}"] if with_cost else []), r["description"]]
                        for r in rows])
    emit(rows, as_json, table)


@app.command()
def datasets(data_dir: Optional[Path] = DataDirOpt, as_json: bool = JsonOpt) -> None:
    """The data sets: found under the data dir or not (and whether the copy is partial), and where to get them."""
    rows = []
    for name in data_mod.names():
        found = data_mod.find(name, data_dir)
        info = data_mod.info(name)
        rows.append({"name": name, "available": found.available, "partial": found.partial, "samples": found.samples,
                     "note": found.note, "location": found.location, "input_shape": list(info.input_shape),
                     "classes": info.num_classes, "source": found.source})
    table = make_table(f"data sets under {data_mod.resolve_data_dir(data_dir)}",
                       ["name", "found", "input", "classes", "location / where to get it"],
                       [[r["name"], ("yes" + (f", {r['note']}" if r["note"] else "")) if r["available"] else "no",
                         "×".join(map(str, r["input_shape"])), r["classes"], r["location"] or r["source"]]
                        for r in rows])
    emit(rows, as_json, table)


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="A zoo model name (see `connprune models`), or "
                              "package.module:factory: your own model (imports that code)."),
    data: str = typer.Option("digits", "--data", help="Data set name (see `connprune datasets`)."),
    data_dir: Optional[Path] = DataDirOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs", min=0, help=RECIPE_HELP["epochs"]),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help=RECIPE_HELP["batch_size"]),
    lr: Optional[float] = typer.Option(None, "--lr", help=RECIPE_HELP["lr"]),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help=RECIPE_HELP["optimizer"]),
    seed: int = typer.Option(0, "--seed", help="Seed of the model's initialisation, the data order and "
                             "augmentation, and the digits train/test split."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint directory to write (an existing one is refused "
                                 "unless --overwrite or --resume)."),
    resume: bool = typer.Option(False, "--resume", help="Continue a killed or interrupted run from its last finished "
                                "epoch (a finished checkpoint in --out is kept as it is)."),
    overwrite: bool = OverwriteOpt,
    model_param: list[str] = ModelParamOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Train a dense model and write a checkpoint directory."""
    from connprune.experiments.jobs import TrainJob, parse_param_values, train_dense

    check_out_dir(out_dir, overwrite=overwrite, resume=resume)
    recipe = {k: v for k, v in dict(epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer).items()
              if v is not None}
    job = TrainJob.build(model=model, data=data, out=out_dir, data_dir=data_dir, seed=seed, resume=resume,
                         progress=True, model_options=parse_param_values(model_param, "--model-param"),
                         recipe=recipe)
    result = train_dense(job)
    table = make_table(f"trained {model} on {data} → {out_dir}", ["metric", "value"],
                       [[k, v] for k, v in result.items() if not isinstance(v, (dict, list))])
    emit(result, as_json, table)


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint directory."),
    model: Optional[str] = typer.Option(None, "--model", help="package.module:factory that builds the checkpoint's "
                                        "model, for a model from outside the zoo (imports that code)."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the one it was trained on)."),
    data_dir: Optional[Path] = DataDirOpt,
    shift: str = typer.Option("none", "--shift", help="none, NAME:SEVERITY, all, a list, or a shift data set."),
    seed: int = typer.Option(0, "--seed", help="Seed of the corruptions."),
    with_cost: bool = typer.Option(False, "--cost", help="Also params, MACs and latency at batch 1 and 64."),
    runtime: str = typer.Option("torch", "--runtime", help="With --cost: where latency is measured: torch (eager) or "
                                "onnxruntime (needs the connprune[export] extra)."),
    fold_bn: bool = typer.Option(False, "--fold-bn", help="With --cost: fold BatchNorm into the layers before timing, "
                                 "as deployed."),
    channels_last: bool = typer.Option(False, "--channels-last", help="With --cost and --runtime torch: time a "
                                       "channels-last copy on channels-last inputs."),
    inference_mode: bool = typer.Option(False, "--inference-mode", help="With --cost and --runtime torch: time under "
                                        "torch.inference_mode instead of no_grad."),
    connectivity: Optional[Path] = typer.Option(
        None, "--connectivity", help="Reference checkpoint: also N2NSkip's heat-diffusion distance F to it."),
    heat_taps: str = typer.Option("all", "--heat-taps", help="With --connectivity: conv edges from any kernel tap "
                                  "(all) or the [0, 0] tap only (first: the N2NSkip code release)."),
    heat_adjacency: str = typer.Option("weighted", "--heat-adjacency", help="With --connectivity: edge weights of "
                                       "the unit graphs, weighted (|w| per kernel slice, the N2NSkip paper's Table "
                                       "3) or binary (its Fig. 3)."),
    heat_t: str = typer.Option("t_star", "--heat-t", help="With --connectivity: where F is read: t_star (the "
                               "reference's scree saturation time), t_sat (its settling time) or a number t > 0."),
    scree: Optional[Path] = typer.Option(None, "--scree", help="With --connectivity: save the scree diagram "
                                         "alpha(K, t) of both networks as this PNG."),
    as_json: bool = JsonOpt,
) -> None:
    """Accuracy of a checkpoint, clean and under distribution shift (and its cost with --cost)."""
    from connprune.experiments.jobs import EvalJob, evaluate_job

    if connectivity is None and (scree is not None or heat_taps != "all" or heat_adjacency != "weighted"
                                 or heat_t != "t_star"):
        raise UserError("--scree and --heat-* only apply with --connectivity REFERENCE_CHECKPOINT; add it or drop "
                        "them")
    if not with_cost and (runtime != "torch" or fold_bn or channels_last or inference_mode):
        raise UserError("--runtime, --fold-bn, --channels-last and --inference-mode only apply with --cost; add it or "
                        "drop them")
    job = EvalJob.build(checkpoint=checkpoint, model=model, data=data, data_dir=data_dir, shift=shift, seed=seed,
                        cost=with_cost, runtime=runtime, fold_bn=fold_bn, channels_last=channels_last,
                        inference_mode=inference_mode, connectivity=connectivity, heat_taps=heat_taps,
                        heat_adjacency=heat_adjacency, heat_t=heat_t, scree=scree)
    result, rows, name = evaluate_job(job)
    emit(result, as_json, make_table(f"{checkpoint} on {name} ({result['samples']} test images)",
                                     ["evaluation", "value"], rows))


@app.command("methods")
def methods_cmd(
    name: Optional[str] = typer.Argument(None, help="A method to show in full: kind, paper, what it needs, and every "
                                         "parameter with its default and description."),
    as_json: bool = JsonOpt,
) -> None:
    """The pruning methods (name, kind, summary, parameter names), or one method in full with NAME."""
    from connprune import methods as methods_mod

    if name is not None:
        described = methods_mod.get(name).describe()
        if as_json:
            emit(described, True)
        else:
            _print_method(described)
        return
    rows = [methods_mod.get(n).describe() for n in methods_mod.names()]
    table = make_table("connprune pruning methods", ["name", "kind", "summary", "parameters"],
                       [[r["name"], r["kind"], r["summary"], ", ".join(r["parameters"])] for r in rows])
    emit(rows, as_json, table)
    if not as_json:
        out.print("defaults and descriptions of the parameters: connprune methods NAME; set them with "
                  "connprune prune --method NAME --param KEY=VALUE", highlight=False, soft_wrap=True)


def _print_method(described: dict[str, Any]) -> None:
    """One method for people: what it is and needs, then its parameters (default and description)."""
    needs = ["a trained model (--checkpoint)" if described["needs_trained"] else
             "a fresh model (--model, --data, --epochs: it prunes at initialisation or while training)"]
    needs += ["training data"] if described["needs_data"] else []
    needs += ["trains while it prunes"] if described["needs_training"] else []
    needs += ["accepts --sparsity auto"] if described["supports_auto"] else []
    about = make_table(f"method {described['name']}", ["", ""],
                       [["kind", described["kind"]], ["paper", described["paper"]],
                        ["summary", described["summary"]], ["needs", "; ".join(needs)]])
    about.show_header = False
    params = make_table(f"{described['name']} parameters (--param KEY=VALUE)", ["parameter", "default", "description"],
                        [[k, json.dumps(v), described["descriptions"].get(k) or "-"]
                         for k, v in described["parameters"].items()])
    emit(described, False, about)
    emit(described, False, params)


@app.command()
def prune(
    method: str = typer.Option(..., "--method", help="A method name (see `connprune methods`)."),
    sparsity: str = typer.Option("0.5", "--sparsity", help="Fraction of prunable weights to remove, in [0, 1), or "
                                 "auto for methods that choose their own (see `connprune methods NAME`)."),
    checkpoint: Optional[Path] = typer.Option(None, "--checkpoint", help="Trained checkpoint to prune (methods that "
                                              "prune a trained model)."),
    model: Optional[str] = typer.Option(None, "--model", help="Zoo model to build fresh (methods that prune at "
                                        "initialisation or while training); package.module:factory builds your "
                                        "own (imports that code), also to rebuild a --checkpoint of it."),
    data: Optional[str] = typer.Option(None, "--data", help="Data set (default: the checkpoint's; required with "
                                       "--model)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=0, help="With --model: epochs to train the pruned "
                                         "model (default: the data set's recipe: "
                                         f"{_recipe_defaults('epochs')})."),
    param: list[str] = typer.Option([], "--param", help="Method parameter key=value, repeatable (each method's "
                                    "parameters and defaults: `connprune methods NAME`)."),
    model_param: list[str] = ModelParamOpt,
    finetune_epochs: int = typer.Option(0, "--finetune-epochs", min=0, help="With --checkpoint: epochs of "
                                        "fine-tuning after pruning, masks enforced, at a tenth of the recipe's "
                                        "learning rate."),
    steps: int = typer.Option(1, "--steps", min=1, help="Prune to --sparsity in this many steps (a one-shot "
                              "method), training --step-epochs between them."),
    step_spacing: str = typer.Option("cubic", "--step-spacing", help="With --steps: cubic (big steps first; Zhu & "
                                     "Gupta 2018) or linear."),
    step_epochs: int = typer.Option(1, "--step-epochs", min=0, help="With --steps: epochs of training between "
                                    "two steps, masks enforced."),
    data_dir: Optional[Path] = DataDirOpt,
    shift: str = typer.Option("none", "--shift", help="Evaluate under shift before and after (see eval)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the method's random choices, the fresh model's "
                             "initialisation, the data order and the digits train/test split."),
    no_shrink: bool = typer.Option(False, "--no-shrink", help="Keep removed units as masked zeros."),
    out_dir: Path = typer.Option(..., "--out", help="Checkpoint directory for the pruned model (an existing one is "
                                 "refused unless --overwrite)."),
    overwrite: bool = OverwriteOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Prune a model and write the (physically smaller) checkpoint with metrics.json."""
    from connprune.experiments.jobs import PruneJob, parse_param_values, parse_sparsity, prune_job

    check_out_dir(out_dir, overwrite=overwrite)
    job = PruneJob.build(method=method, sparsity=parse_sparsity(sparsity), out=out_dir, checkpoint=checkpoint,
                         model=model, data=data, epochs=epochs, params=parse_param_values(param),
                         finetune_epochs=finetune_epochs, steps=steps, step_spacing=step_spacing,
                         step_epochs=step_epochs, data_dir=data_dir, shift=shift, seed=seed,
                         shrink=not no_shrink, progress=True,
                         model_options=parse_param_values(model_param, "--model-param"))
    metrics = prune_job(job)
    for key, label in (("budget_note", "[yellow]note:[/]"), ("warning", "[bold yellow]warning:[/]")):
        if metrics.get(key):
            err.print(f"{label} {metrics[key]}", highlight=False, soft_wrap=True)
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
    jobs: int = typer.Option(1, "--jobs", min=1, help="Worker processes (each claims runs from the store)."),
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
                  highlight=False, soft_wrap=True)
    if summary.failed:
        for row in summary.failed[:10]:
            last = ((row["error"] or "").strip().splitlines() or ["(no message)"])[-1]
            err.print(f"[red]failed[/] {row['key']}: {last}", highlight=False, soft_wrap=True)
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
    seed: int = typer.Option(0, "--seed", help="Seed of the digits split, the models and the corruptions."),
) -> None:
    """Zero-download showcase on scikit-learn's digits: train, evaluate clean and shifted, report."""
    from connprune.experiments.demo import run_demo

    report = run_demo(out_dir, seed=seed)
    out.print(f"wrote {report}", highlight=False, soft_wrap=True)


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
    """Entry point: run the app; a user mistake is one line on stderr and exit status 2, Ctrl-C exit status 130."""
    try:
        code = app(standalone_mode=False, prog_name="connprune")
    except UserError as exc:
        if _state["debug"]:
            raise
        _fail(str(exc))
    except KeyboardInterrupt:
        code = 130
    except Exception as exc:
        if not _is_click_error(exc):
            raise
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `connprune`: typer's rich help has been printed
            print(exc.format_message(), end="")  # type: ignore[attr-defined]  # (plain click: the help text)
            sys.exit(0)
        _fail(f"{exc.format_message()} (see {_command_path(exc)} --help)")  # type: ignore[attr-defined]
    if code == 130:  # typer turns KeyboardInterrupt into exit code 130
        err.print(INTERRUPTED, highlight=False, soft_wrap=True)
    sys.exit(code if isinstance(code, int) else 0)


def _fail(message: str) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(2)


def _is_click_error(exc: BaseException) -> bool:
    """A usage error of click's (typer bundles its own copy of click, so the class is matched by name)."""
    return any(cls.__name__ == "ClickException" for cls in type(exc).__mro__)


def _command_path(exc: BaseException) -> str:
    context = getattr(exc, "ctx", None)
    return getattr(context, "command_path", None) or "connprune"
