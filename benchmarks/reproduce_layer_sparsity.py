"""Layer sparsity (Hebiri & Lederer, "Layer Sparsity in Neural Networks", arXiv 2006.15604, 2020; regulariser,
merge, refit and λ path RECONSTRUCTED — the paper's text past its introduction (§1) was not available; see
docs/methods/layer-sparsity.md §2–§5): the design's protocol (docs/methods/layer-sparsity.md §5) at CPU size.

0. **Defaults** — what ``connprune prune --method layer-sparsity --sparsity auto`` gives: the zoo's default MLP
   (widths 256-128) on scikit-learn digits (``--epochs 30``) and on the full Fashion-MNIST (``--epochs 3``) at the
   method's defaults (λ = 1, ``input_scaling=none``), and with its λ path (``--param lambda_path=[...]``, picked on the
   refitted held-out accuracy), beside the unregularised model (λ = 0, same epochs and split), over several seeds.
1. **Simulation**: inputs ``x ~ U[0, 1]^d``, a ReLU teacher MLP whose hidden layers are all non-negative
   except ``--teacher-active`` of them (so the true function has that many active hidden layers), ``y = teacher(x) +
   noise``; a deeper student (``--student-layers`` hidden layers) is trained over the λ grid with the proximal
   penalty (all hidden layers penalised: the inputs are ≥ 0), merged and refitted. Does it recover the depth?
2. **Classification**: deep MLPs on digits and Fashion-MNIST over the λ grid, with ``input_scaling`` none and
   nonneg side by side — depth, parameters, CPU latency and accuracy after the penalised training (= after the exact
   merge) and after the refit — beside an unregularised MLP (λ = 0) and the connection (``l1-reg``) and node
   (``group-l1``) sparsity baselines the paper contrasts (arXiv 2006.15604 §1). Plots: accuracy vs depth, the λ path.
3. **Latency**: a 10-hidden-layer MLP whose hidden layers are made inactive from the back, merged to active depths
   10 … 0, timed side by side (interleaved rounds) against the ideal "latency ∝ remaining layers".

The paper's result tables could not be retrieved (docs/methods/layer-sparsity.md §6), so no paper numbers are shown;
the JSON says so. The Markdown ends with verdicts computed from the saved rows.

Run: ``OMP_NUM_THREADS=1 python benchmarks/reproduce_layer_sparsity.py [--data-dir DIR] [--fmnist-train 10000]
[--epochs 6] [--digits-epochs 30] [--lambdas 0 0.3 1 3 10] [--default-seeds 0 1 2] [--skip-fmnist]``
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QuietGate, machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, methods, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.experiments.jobs import build_model, prune_model  # noqa: E402
from connprune.measure.latency import compare_latency  # noqa: E402
from connprune.methods.layer_sparsity import layer_folds, layer_groups, merge_runs, penalisable_links  # noqa: E402
from connprune.methods.regularisers import negative_part_norm, prox_negative_part  # noqa: E402
from connprune.surgery import merge  # noqa: E402
from connprune.utils.io import read_json  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER_NOTE = ("Hebiri & Lederer's result tables (arXiv 2006.15604) were not retrievable "
              "(docs/methods/layer-sparsity.md §6): no paper numbers are quoted; the regulariser, merge, refit and "
              "λ path are our reconstruction.")
CLASSES = 10  # digits and Fashion-MNIST
COMMAND = "?"
PARTS = ("defaults", "simulation", "classification", "latency")
COLLAPSED = 1.5 / CLASSES
"""A layer-sparsity run whose penalised (= merged) test accuracy is at most 1.5 × chance has collapsed: its depth
says how far the penalty destroyed the network, not what it removes at a usable accuracy, so it is labelled
"collapsed" instead of being reported as a depth result."""


def collapsed(row: dict[str, Any]) -> bool:
    """Whether a classification row (or a λ-path point) is a collapsed run (see :data:`COLLAPSED`)."""
    if "method" in row:
        return row["method"].startswith("layer-sparsity") and row["acc_regularised"] <= COLLAPSED
    return row.get("penalised_accuracy", row["validation_accuracy"]) <= COLLAPSED  # older runs: penalised only


def labelled(rows: list[dict[str, Any]], hidden: tuple[str, ...]) -> list[dict[str, Any]]:
    """``rows`` with each collapsed one's ``hidden`` columns replaced by "collapsed"."""
    return [{**row, **{key: "collapsed" for key in hidden if key in row}} if collapsed(row) else row for row in rows]


# ------------------------------------------------------------------------------------------------ 1. simulation


def _teacher(d: int, width: int, layers: int, active: int, generator: torch.Generator) -> nn.Sequential:
    """A ReLU MLP whose hidden layers ``1..active`` have signed weights and the rest are non-negative (inactive)."""
    modules: list[nn.Module] = []
    previous = d
    for index in range(layers):
        linear = nn.Linear(previous, width)
        with torch.no_grad():
            linear.weight.copy_(torch.randn(width, previous, generator=generator) / previous ** 0.5)
            linear.bias.copy_(0.1 * torch.randn(width, generator=generator))
            if index >= active:
                linear.weight.abs_()
                linear.bias.abs_()
                linear.weight.div_(2.0)  # keep the scale bounded through the non-negative stack
        modules += [linear, nn.ReLU()]
        previous = width
    modules.append(nn.Linear(previous, 1))
    with torch.no_grad():
        modules[-1].weight.copy_(torch.randn(1, previous, generator=generator) / previous ** 0.5)
        modules[-1].bias.zero_()
    return nn.Sequential(*modules)


def _fit_regression(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, lr: float, lam: float,
                    generator: torch.Generator, nonnegative_input: bool) -> None:
    """Adam on the mean squared error, with the proximal layer penalty (step ``lr·λ``) after every step
    (docs/methods/layer-sparsity.md §3 step 2)."""
    links, _ = penalisable_links(model, first_layer=nonnegative_input) if lam > 0 else ([], {})
    groups = layer_groups(layer_folds(model, links), lam, "none", True)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=generator).split(128):
            optimizer.zero_grad(set_to_none=True)
            F.mse_loss(model(x[batch]), y[batch]).backward()
            optimizer.step()
            for group in groups:
                prox_negative_part(group.params, lr * group.weight)
    model.eval()


@torch.no_grad()
def _mse(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(F.mse_loss(model(x), y))


def simulation(args: argparse.Namespace) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(0)
    teacher = _teacher(args.sim_dim, args.sim_width, args.teacher_layers, args.teacher_active, generator)
    x = torch.rand(args.sim_n + 2000, args.sim_dim, generator=generator)
    with torch.no_grad():
        clean = teacher(x)
    y = clean + args.sim_noise * clean.std() * torch.randn(clean.shape, generator=generator)
    x_train, y_train, x_test, y_test = x[:args.sim_n], y[:args.sim_n], x[args.sim_n:], clean[args.sim_n:]
    rows = []
    for lam in args.sim_lambdas:
        torch.manual_seed(1)
        student = models.create("mlp", widths=[args.sim_student_width] * args.student_layers, num_classes=1,
                                in_channels=args.sim_dim, input_size=1)  # in_features = d; flatten keeps (N, d)
        started = time.perf_counter()
        _fit_regression(student, x_train, y_train, args.sim_epochs, args.sim_lr, lam, generator, True)
        links, _ = penalisable_links(student, True)
        inactive = {link.layer for link in links
                    if float(negative_part_norm([student.get_submodule(link.layer).weight,
                                                 student.get_submodule(link.layer).bias]).detach()) == 0.0}
        regularised = _mse(student, x_test, y_test)
        merged = copy.deepcopy(student)
        for run in merge_runs(links, inactive):
            merge.merge_layers(merged, run, nonnegative_input=True)
        merged_mse = _mse(merged, x_test, y_test)
        params_merged = sum(p.numel() for p in merged.parameters())
        _fit_regression(merged, x_train, y_train, args.sim_refit_epochs, args.sim_lr, 0.0, generator, True)
        rows.append({"lambda": lam, "teacher_active_hidden": args.teacher_active,
                     "student_hidden": args.student_layers,
                     "recovered_active_hidden": len(links) - len(inactive),
                     "depth_after": merge.depth(merged), "params_before": sum(p.numel() for p in student.parameters()),
                     "params_after": params_merged, "test_mse_regularised": regularised,
                     "test_mse_merged": merged_mse, "test_mse_refit": _mse(merged, x_test, y_test),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1])
    return rows


# -------------------------------------------------------------------------------------------- 2. classification


def _nonzero_params(model: nn.Module, masks: dict[str, torch.Tensor]) -> int:
    total = 0
    for name, p in model.named_parameters():
        kept = p.detach() != 0
        if name in masks:
            kept &= masks[name].to(torch.bool)
        total += int(kept.sum())
    return total


def he_initialise(model: nn.Module) -> nn.Module:
    """Kaiming-normal (fan-in, ReLU gain) weights and zero biases for every Linear layer: the zoo's MLP keeps
    PyTorch's default init (variance 1/(3·fan_in)), under which a 6-hidden-layer MLP barely trains in a few epochs."""
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model


def classification(name: str, train: ImageData, test: ImageData, widths: list[int], epochs: int,
                   refit_epochs: int, args: argparse.Namespace,
                   gate: QuietGate) -> tuple[list[dict[str, Any]], dict[str, float]]:
    runs = [("unregularised", "layer-sparsity", {"lambda": 0.0, "input_scaling": "none"})]
    runs += [(f"layer-sparsity λ={lam:g}" + (f" {scaling}" if scaling != "none" else ""), "layer-sparsity",
              {"lambda": lam, "input_scaling": scaling}) for lam in args.lambdas if lam > 0
             for scaling in args.input_scaling]
    runs += [(f"l1-reg λ={lam:g}", "l1-reg", {"lambda": lam}) for lam in args.l1_lambdas]
    runs += [(f"group-l1 λ={lam:g}", "group-l1", {"lambda": lam}) for lam in args.group_lambdas]
    channels, size, _ = train.info.input_shape
    rows, pruned_models = [], {}
    for label, method_name, params in runs:
        torch.manual_seed(0)
        model = models.create("mlp", widths=widths, num_classes=train.info.num_classes, in_channels=channels,
                              input_size=size)
        he_initialise(model)
        method = methods.create(method_name, **params, refit_epochs=refit_epochs)
        started = time.perf_counter()
        pruned, masks, metrics = prune_model(model, method, "auto", train, test, train_epochs=epochs,
                                             progress=False)
        pruned_models[label] = pruned
        rows.append({"data": name, "method": label, "lambda": params["lambda"],
                     "input_scaling": params.get("input_scaling", "–"),
                     "depth": merge.depth(pruned), "active_hidden": metrics.get("active_layers"),
                     "params": metrics["params_after"], "nonzero_params": _nonzero_params(pruned, masks),
                     "acc_regularised": metrics["acc_pruned"], "acc_refit": metrics["acc_after"],
                     "merge_rel_error": metrics.get("merge_relative_error"),
                     "seconds": round(time.perf_counter() - started, 1)})
        print(rows[-1])
    latencies = compare_latency(pruned_models, train.info.input_shape, batch_size=args.latency_batch,
                                rounds=args.latency_rounds, threads=1, min_run_time=0.05, before_round=gate,
                                min_cpu_share=0.8)
    for row in rows:
        row["latency_ms"] = round(latencies[row["method"]].median_ms, 4)
    return rows, {k: v.median_ms for k, v in latencies.items()}


def warm_path(train: ImageData, test: ImageData, widths: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """The method's own warm-started λ path (``lambda_path``): one model trained through the positive λ grid in
    increasing order, the kept λ chosen on 10% held-out training data, then merged and refitted."""
    channels, size, _ = train.info.input_shape
    torch.manual_seed(0)
    model = he_initialise(models.create("mlp", widths=widths, num_classes=train.info.num_classes,
                                        in_channels=channels, input_size=size))
    grid = [lam for lam in args.lambdas if lam > 0]
    method = methods.create("layer-sparsity", lambda_path=grid, epochs_per_lambda=args.path_epochs,
                            refit_epochs=args.digits_refit_epochs)
    epochs = args.path_epochs * len(grid) + args.digits_refit_epochs
    pruned, _, metrics = prune_model(model, method, "auto", train, test, train_epochs=epochs, progress=False)
    return {"grid": grid, "epochs_per_lambda": args.path_epochs, "path": metrics["lambda_path"],
            "chosen_lambda": metrics["lambda"], "depth_after": merge.depth(pruned),
            "acc_merged": metrics["acc_pruned"], "acc_refit": metrics["acc_after"]}


# ------------------------------------------------------------------------------------------------- 0. defaults


def default_runs(name: str, epochs: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """What ``connprune prune --method layer-sparsity --model mlp --data NAME --epochs N --sparsity auto --seed S``
    does (:func:`connprune.experiments.jobs.prune_job` without the checkpoint): per seed, the unregularised model
    (λ = 0, same epochs and split), the method's defaults (λ = 1) and its λ path (``lambda_path``)."""
    variants = [("unregularised (λ=0)", {"lambda": 0.0}), ("default (λ=1)", {}),
                (f"λ path {args.path_grid}", {"lambda_path": args.path_grid})]
    data_dir = None if name == "digits" else args.data_dir
    rows = []
    for seed in args.default_seeds:
        train = data.load(name, "train", data_dir, seed=seed)
        test = data.load(name, "test", data_dir, seed=seed)
        for label, params in variants:
            model = build_model("mlp", train.info, seed)
            method = methods.create("layer-sparsity", seed=seed, **params)
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pruned, _, metrics = prune_model(model, method, "auto", train, test, train_epochs=epochs, seed=seed,
                                                 progress=False)
            rows.append({"data": name, "run": label, "seed": seed, "epochs": epochs, "lambda": metrics["lambda"],
                         "depth_before": metrics["depth_before"], "depth_after": metrics["depth_after"],
                         "inactive_layers": ", ".join(metrics["inactive_layers"]) or "–",
                         "params_before": metrics["params_before"], "params_after": metrics["params_after"],
                         "acc_merged": metrics["acc_pruned"], "acc_refit": metrics["acc_after"],
                         "no_layer_removed": metrics.get("no_layer_removed"),
                         "seconds": round(time.perf_counter() - started, 1)})
            print(rows[-1])
    return rows


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    return mean, (sum((v - mean) ** 2 for v in values) / max(1, len(values) - 1)) ** 0.5


def default_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per data set and run: depths over the seeds, refitted accuracy mean ± sd, and the accuracy cost against the
    same seed's unregularised model (mean ± sd of the per-seed differences)."""
    out = []
    for name in dict.fromkeys(r["data"] for r in rows):
        mine = [r for r in rows if r["data"] == name]
        base = {r["seed"]: r["acc_refit"] for r in mine if r["lambda"] == 0 and r["run"].startswith("unreg")}
        for run in dict.fromkeys(r["run"] for r in mine):
            these = [r for r in mine if r["run"] == run]
            acc, acc_sd = _mean_sd([r["acc_refit"] for r in these])
            cost, cost_sd = _mean_sd([base[r["seed"]] - r["acc_refit"] for r in these])
            out.append({"data": name, "run": run, "epochs": these[0]["epochs"], "seeds": len(these),
                        "lambda": ", ".join(f"{r['lambda']:g}" for r in these),
                        "depth": ", ".join(f"{r['depth_before']}→{r['depth_after']}" for r in these),
                        "params_after": ", ".join(f"{r['params_after']:,}" for r in these),
                        "acc_refit": f"{acc:.4f} ± {acc_sd:.4f}", "accuracy_cost": f"{cost:+.4f} ± {cost_sd:.4f}",
                        "removed_layers": all(r["depth_after"] < r["depth_before"] for r in these),
                        "removed_any": sum(r["depth_after"] < r["depth_before"] for r in these),
                        "cost_mean": cost, "cost_sd": cost_sd})
    return out


# ---------------------------------------------------------------------------------------------------- 3. latency


def latency_by_depth(args: argparse.Namespace, gate: QuietGate) -> list[dict[str, Any]]:
    """A 10-hidden-layer MLP with its last k hidden layers (2..) made inactive and merged: active depth 10 - k."""
    torch.manual_seed(0)
    hidden = 10
    base = models.create("mlp", widths=[args.latency_width] * hidden, num_classes=10, in_channels=1, input_size=28)
    variants, depths = {}, {}
    for inactive_count in range(0, hidden):  # layer 1 stays active (its input may be negative)
        model = copy.deepcopy(base).eval()
        names = [f"features.{2 * i}" for i in range(hidden - inactive_count, hidden)]
        with torch.no_grad():
            for layer_name in names:
                model.get_submodule(layer_name).weight.abs_()
                model.get_submodule(layer_name).bias.abs_()
        reference = copy.deepcopy(model)
        if names:
            merge.merge_layers(model, names + ["classifier"])
        x = torch.randn(8, 1, 28, 28)
        with torch.no_grad():
            error = float((model(x) - reference(x)).abs().max() / reference(x).abs().max())
        label = f"{hidden - inactive_count} active hidden"
        variants[label], depths[label] = model, (merge.depth(model), error)
    timings = compare_latency(variants, (1, 28, 28), batch_size=args.latency_batch, rounds=args.latency_rounds,
                              threads=1, min_run_time=0.1, before_round=gate, min_cpu_share=0.8)
    full = timings[f"{hidden} active hidden"].median_ms
    full_depth = depths[f"{hidden} active hidden"][0]
    rows = []
    for label, result in timings.items():
        depth, error = depths[label]
        rows.append({"model": label, "depth": depth, "params": sum(p.numel() for p in variants[label].parameters()),
                     "latency_ms": round(result.median_ms, 4), "iqr_ms": round(result.iqr_ms, 4),
                     "speedup": round(full / result.median_ms, 2), "ideal_speedup": round(full_depth / depth, 2),
                     "merge_rel_error": error})
    return rows


# ------------------------------------------------------------------------------------------------------- plots


def _plot_defaults(ax: Any, defaults: list[dict[str, Any]]) -> None:
    """Per seed: the accuracy cost (unregularised − run) of the default λ and of the λ path, labelled with the
    depth after the merge."""
    base = {(r["data"], r["seed"]): r["acc_refit"] for r in defaults if r["run"].startswith("unreg")}
    runs = [(name, run) for name in dict.fromkeys(r["data"] for r in defaults)
            for run in dict.fromkeys(r["run"] for r in defaults) if not run.startswith("unreg")]
    for x, (name, run) in enumerate(runs):
        these = [r for r in defaults if r["data"] == name and r["run"] == run]
        ax.scatter([x] * len(these), [base[(name, r["seed"])] - r["acc_refit"] for r in these], color=f"C{x}")
        depths = ", ".join(sorted({f"{r['depth_before']}→{r['depth_after']}" for r in these}))
        ax.annotate(f"depth {depths}", (x, max(base[(name, r["seed"])] - r["acc_refit"] for r in these)),
                    fontsize=7, xytext=(4, 4), textcoords="offset points")
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(range(len(runs)), [f"{name}\n{run.split(' [')[0]}" for name, run in runs], fontsize=7)
    ax.set_ylabel("accuracy cost vs unregularised (per seed)")
    ax.set_title("defaults (--sparsity auto), default MLP", fontsize=9)


def plot(rows: list[dict[str, Any]], sim_rows: list[dict[str, Any]], path: Path,
         defaults: list[dict[str, Any]] | None = None) -> None:
    """Accuracy vs depth (top), the λ path (middle) per data set, the simulation's recovered depth and the default
    runs' accuracy cost (bottom)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = sorted({r["data"] for r in rows})
    columns = max(1, len(datasets))
    fig, axes = plt.subplots(3, columns, figsize=(5.5 * columns, 11), squeeze=False)
    for column, name in enumerate(datasets):
        mine = [r for r in rows if r["data"] == name]
        ls = sorted((r for r in mine if r["method"].startswith("layer-sparsity") and not collapsed(r)),
                    key=lambda r: r["lambda"])
        gone = ", ".join(f"λ={r['lambda']:g}" + (" nonneg" if r.get("input_scaling") == "nonneg" else "")
                         for r in mine if collapsed(r))
        ax = axes[0][column]
        for scaling, marker in (("none", "o"), ("nonneg", "^")):
            these = [r for r in ls if r.get("input_scaling", "none") in (scaling, "–")
                     and (scaling == "none" or r["lambda"] > 0)]
            if these:
                ax.scatter([r["depth"] for r in these], [r["acc_refit"] for r in these], marker=marker,
                           label=f"layer sparsity + refit (input_scaling={scaling})")
        ax.scatter([r["depth"] for r in ls], [r["acc_regularised"] for r in ls], marker="x",
                   label="layer sparsity, merged (= penalised)")
        for r in ls:
            ax.annotate(f"λ={r['lambda']:g}", (r["depth"], r["acc_refit"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        for r in mine:
            if not r["method"].startswith("layer-sparsity"):
                ax.scatter([r["depth"]], [r["acc_refit"]], marker="s", label=f"{r['method']} ({r['nonzero_params']:,} "
                           "nonzero params)")
        ax.set_xlabel("depth (weight layers)")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{name}: accuracy vs depth")
        ax.legend(fontsize=6)
        path_ax = axes[1][column]
        twin = path_ax.twinx()
        for index, scaling in enumerate(("none", "nonneg")):
            positive = [r for r in ls if r["lambda"] > 0 and r.get("input_scaling", "none") == scaling]
            if positive:
                path_ax.semilogx([r["lambda"] for r in positive], [r["acc_refit"] for r in positive], "o-",
                                 color=f"C{index}", label=f"accuracy after refit ({scaling})")
                twin.semilogx([r["lambda"] for r in positive], [r["depth"] for r in positive], "s--",
                              color=f"C{index + 2}", label=f"depth after merge ({scaling})")
        path_ax.set_xlabel("λ")
        path_ax.set_ylabel("test accuracy")
        twin.set_ylabel("depth after merge (dashed)")
        path_ax.legend(fontsize=6, loc="lower left")
        twin.legend(fontsize=6, loc="upper right")
        path_ax.set_title(f"{name}: λ path (one run per λ)" + (f"\ncollapsed, not shown: {gone}" if gone else ""),
                          fontsize=9)
    sim_ax = axes[2][0]
    if sim_rows:
        sim_ax.plot([r["lambda"] for r in sim_rows], [r["recovered_active_hidden"] for r in sim_rows], "o-",
                    label="student: active hidden layers")
        sim_ax.axhline(sim_rows[0]["teacher_active_hidden"], color="C2", linestyle=":", label="teacher")
        sim_ax.set_xlabel("λ")
        sim_ax.set_ylabel("active hidden layers")
        twin = sim_ax.twinx()
        twin.semilogy([r["lambda"] for r in sim_rows], [r["test_mse_refit"] for r in sim_rows], "s--", color="C3")
        twin.set_ylabel("test MSE after refit", color="C3")
        sim_ax.set_title("simulation: recovered depth")
        sim_ax.legend(fontsize=7)
    used = 1 if sim_rows else 0
    if defaults and used < columns:
        _plot_defaults(axes[2][used], defaults)
        used += 1
    for column in range(used, columns):
        axes[2][column].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ report


def shrunk_note(saved: dict[str, Any]) -> str:
    """How the run was shrunk from the design's protocol, from the saved settings."""
    st = saved["settings"]
    fmnist = saved.get("fmnist_note") or saved.get("shrunk", "").partition("Fashion-MNIST: ")[2].partition(";")[0]
    seeds = ", ".join(str(seed) for seed in st.get("default_seeds", [0]))
    return (f"CPU-sized: classification MLPs {st['depth']}x{st['width']}, the data sets' default SGD recipes "
            f"(lr 0.05 cosine, momentum 0.9; proximal step lr·λ), trained {st['epochs']} epochs in all on "
            f"Fashion-MNIST ({st['epochs'] - st['refit_epochs']} penalised + {st['refit_epochs']} refit) and "
            f"{st['digits_epochs']} on digits ({st['digits_epochs'] - st['digits_refit_epochs']} + "
            f"{st['digits_refit_epochs']}); the design (docs/methods/layer-sparsity.md §4) says 100 + 50 and 5 seeds: "
            f"the λ grid uses one seed, the default runs seeds {seeds}; Fashion-MNIST grid: {fmnist}; "
            f"simulation {st['sim_epochs']}+{st['sim_refit_epochs']} epochs on {st['sim_n']} samples; latency batch "
            f"{st['latency_batch']}, 1 thread.")


def _default_section(saved: dict[str, Any]) -> list[str]:
    rows = saved.get("defaults", [])
    if not rows:
        return ["## The defaults (`--sparsity auto`)", "", "Not run.", ""]
    st = saved["settings"]
    summary = default_summary(rows)
    columns = ["data", "run", "epochs", "seeds", "lambda", "depth", "params_after", "acc_refit", "accuracy_cost"]
    return [
        "## The defaults: what `connprune prune --method layer-sparsity --sparsity auto` gives", "",
        f"The zoo's default `mlp` (widths 256-128; depth 3 weight layers), the data set's default recipe, "
        f"`--epochs {st['default_digits_epochs']}` on digits (450 test images: one image = 0.0022) and "
        f"`--epochs {st['default_fmnist_epochs']}` on the full Fashion-MNIST (10,000 test images), seeds "
        f"{', '.join(map(str, st['default_seeds']))} (model, data order, digits split). `default (λ=1)`: the method's "
        "defaults (λ = 1, `input_scaling=none`, two thirds of the epochs penalised, a third refit). `λ path`: "
        f"`--param lambda_path={st['path_grid']}`, picked on the refitted held-out accuracy (10% of the training "
        "data; it trains `epochs_per_lambda` epochs per λ plus a refit per λ, so it gets more training than the other "
        "two — about 70 epochs in all on digits and 9 on Fashion-MNIST at these settings). `unregularised (λ=0)`: the "
        "same split of epochs without the penalty. `lambda`: the kept λ per seed; "
        "`depth`: weight layers before → after the merge, per seed; `acc_refit`: test accuracy after the refit, mean "
        "± sd over seeds; `accuracy_cost`: the same seed's unregularised accuracy minus this one, mean ± sd.", "",
        markdown_table(summary, columns), "Per seed:", "",
        markdown_table(rows, ["data", "run", "seed", "lambda", "depth_before", "depth_after", "inactive_layers",
                              "params_before", "params_after", "acc_merged", "acc_refit", "seconds"]), ""]


def _yes_no(flag: bool) -> str:
    return "**yes**" if flag else "**no**"


def _busy_note(saved: dict[str, Any]) -> str:
    """Whether the latency part ran on a busy machine (its quiet gate spent its whole budget)."""
    part = saved.get("parts", {}).get("latency", {})
    gate, load = part.get("quiet_gate", {}), part.get("machine", {}).get("load_average")
    if not gate or gate.get("waited_s", 0) < gate.get("budget_s", 1):
        return ""
    return (f"; measured on a busy machine — the quiet gate gave up after {gate['waited_s']:.0f} s, load average "
            f"{load} on 2 cores — so absolute times are inflated and the speed-ups above the ideal are probably "
            "cache contention hurting the larger models more")


def verdicts(saved: dict[str, Any]) -> list[str]:
    """One line per question, computed from the saved rows."""
    lines = []
    for item in default_summary(saved.get("defaults", [])):
        if item["run"].startswith("unreg"):
            continue
        name = {"digits": "digits", "fashion-mnist": "Fashion-MNIST"}.get(item["data"], item["data"])
        what = "default λ = 1" if item["run"].startswith("default") else f"the {item['run']}"
        lines.append(f"- {what} removes layers on {name} (`--epochs {item['epochs']}`): "
                     f"{_yes_no(item['removed_layers'])} ({item['removed_any']} of {item['seeds']} seeds; depth "
                     f"{item['depth']}; kept λ {item['lambda']}; accuracy cost {item['cost_mean']:+.4f} ± "
                     f"{item['cost_sd']:.4f} against the unregularised model, refitted {item['acc_refit']}).")
    for name in dict.fromkeys(r["data"] for r in saved.get("classification", [])):
        grid = [r for r in saved["classification"] if r["data"] == name and r["method"].startswith("layer-sparsity")]
        usable = [r for r in grid if not collapsed(r)]
        by_scaling = {scaling: [f"λ={r['lambda']:g}: {r['depth']}" for r in sorted(usable, key=lambda r: r["lambda"])
                                if r.get("input_scaling") == scaling] for scaling in ("none", "nonneg")}
        deepest = min(usable, key=lambda r: (r["depth"], -r["acc_refit"]))
        gone = [f"λ={r['lambda']:g}" + (" nonneg" if r.get("input_scaling") == "nonneg" else "")
                for r in sorted(grid, key=lambda r: (r["lambda"], r.get("input_scaling", ""))) if collapsed(r)]
        lines.append(f"- λ grid on {name} (MLP {saved['settings']['depth']}x{saved['settings']['width']}): depth per λ "
                     f"with `input_scaling=none` {'; '.join(by_scaling['none']) or '–'}, with `nonneg` "
                     f"{'; '.join(by_scaling['nonneg']) or '–'}; shallowest usable net depth {deepest['depth']} "
                     f"({deepest['method']}, refitted {deepest['acc_refit']:.4f}); collapsed: "
                     f"{', '.join(gone) or 'none'}.")
    sim = saved.get("simulation", [])
    if sim:
        teacher = sim[0]["teacher_active_hidden"]
        hits = [r for r in sim if r["recovered_active_hidden"] == teacher]
        path = ", ".join(f"λ={r['lambda']:g}: {r['recovered_active_hidden']}" for r in sim)
        where = ", ".join(f"{r['lambda']:g}" for r in hits)
        lines.append(f"- simulation recovers the teacher's active depth ({teacher} active hidden layers of "
                     f"{sim[0]['student_hidden']}): {_yes_no(bool(hits))}" + (f" at λ = {where} only" if hits else "")
                     + f" (active hidden layers per λ: {path}) — it depends sharply on λ.")
    latency = saved.get("latency", [])
    if latency:
        ordered = sorted(latency, key=lambda r: -r["depth"])
        falls = sum(b["latency_ms"] < a["latency_ms"] for a, b in zip(ordered, ordered[1:]))
        last = ordered[-1]
        lines.append(f"- latency falls with merged depth: {_yes_no(last['latency_ms'] < ordered[0]['latency_ms'])} "
                     f"(it falls at {falls} of {len(ordered) - 1} one-layer steps; depth {ordered[0]['depth']} → "
                     f"{last['depth']}: "
                     f"{ordered[0]['latency_ms']:.3f} → {last['latency_ms']:.3f} ms, {last['speedup']}× against "
                     f"the ideal {last['ideal_speedup']}× of 'latency ∝ weight layers'; merge errors ≤ "
                     f"{max(r['merge_rel_error'] for r in latency):.1e})" + _busy_note(saved) + ".")
    return lines


WEAK = ("**Weak.** The method is *reconstructed*: the paper's text past its introduction, and its result tables, were "
        "not retrievable, so the regulariser (a Frobenius penalty on each layer's negative part), the merge, the "
        "refit, the λ path's pick and `input_scaling` are ours, and nothing here is compared with the paper's "
        "numbers. Training is short (3–30 epochs against the design's 100 + 50), so the useful λ are tied to these "
        "recipes (the proximal step is lr·λ) and would move with longer training; the λ grid is one seed and the "
        "defaults three (the design asks for 5); Fashion-MNIST's grid uses 10,000 training images. The "
        "default MLP has only two hidden layers, so \"removes layers\" means at most the middle one at λ = 1 (the "
        "first layer only goes with `input_scaling=nonneg` and a larger λ); differences of one or two digits test "
        "images (0.0022 each) are noise. The simulation is one data draw, and its λ runs share one data-order "
        "generator, so adding a λ to the grid changes the later runs: which λ recovers the teacher's depth moves "
        "(λ = 6 in the previous study, whose grid had no λ = 5). On the 6 × 128 grid the useful λ window is "
        "narrow and the refit can hurt (digits λ = 3). Latency is CPU, batch 64, 1 thread on a shared 2-core machine "
        "(measured behind a quiet gate; see its summary in the JSON).")


def render(saved: dict[str, Any], out: Path) -> None:
    """The Markdown report and the PNG from the saved JSON; collapsed runs (:data:`COLLAPSED`) are labelled, not
    reported as depths."""
    st = saved["settings"]
    class_rows, path = saved["classification"], saved.get("warm_lambda_path_digits") or {}
    if class_rows:
        plot(class_rows, saved["simulation"], out / "layer_sparsity.png", saved.get("defaults"))
    columns = ["data", "method", "lambda", "input_scaling", "depth", "active_hidden", "params", "nonzero_params",
               "acc_regularised", "acc_refit", "latency_ms", "merge_rel_error", "seconds"]
    shown = labelled(class_rows, ("depth", "active_hidden", "params", "nonzero_params", "latency_ms"))
    path_text = "not run"
    if path:
        path_text = (f"Kept λ = {path['chosen_lambda']:g} (fewest active layers within 1% of the best held-out "
                     "accuracy of the merged and refitted network): depth "
                     f"{path['depth_after']}, accuracy {path['acc_merged']:.4f} merged, {path['acc_refit']:.4f} "
                     "refitted. `penalised_accuracy`: held-out accuracy before the per-λ refit; "
                     "`validation_accuracy`: after it (what the pick uses).\n\n"
                     + markdown_table(labelled(path["path"], ("depth",))))
    latency = saved.get("parts", {}).get("latency", {})
    save_text(out / "layer_sparsity.md", "\n".join([
        "# Layer sparsity (reconstructed) — CPU-sized reproduction", "", saved["paper"], "",
        f"Command: `{saved.get('command', '?')}`", "", shrunk_note(saved), "", *_default_section(saved),
        "## Simulation: does the method recover the teacher's active layers?", "", markdown_table(saved["simulation"]),
        f"## Classification over the λ grid (MLP {st['depth']} hidden x {st['width']}, He initialisation)", "",
        "`input_scaling=none` (default): the first layer is not penalised, its inputs being mean-normalised; "
        "`nonneg`: it is penalised as a map of the shifted input x − lo ≥ 0 and can merge too. "
        "`acc_regularised` is after the penalised training, which the exact merge does "
        "not change; `acc_refit` after the refit. `params` counts the stored parameters (l1-reg keeps its zeros "
        f"stored; `nonzero_params` counts the rest). Latency: batch {st['latency_batch']}, 1 thread, interleaved "
        f"rounds, median. **collapsed**: the penalised network's accuracy is at most {COLLAPSED:.2f} (1.5 × chance): "
        "the penalty destroyed it, so its depth is not a result.", "",
        markdown_table(shown, columns), "![accuracy vs depth and the λ path](layer_sparsity.png)", "",
        "## The method's warm-started λ path on digits (option `lambda_path`, MLP of the grid)", "", path_text, "",
        "## Latency of a 10-hidden-layer MLP merged to its active depth", "",
        f"Measured {latency.get('finished', '?')}, load average "
        f"{latency.get('machine', {}).get('load_average')} (shared 2-core machine).", "",
        markdown_table(saved["latency"]), "", "## Verdicts", "", *verdicts(saved), "", WEAK, ""]))


# -------------------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=6,
                        help="Fashion-MNIST: total epochs per run (penalised + refit)")
    parser.add_argument("--refit-epochs", type=int, default=2, help="Fashion-MNIST: refit epochs")
    parser.add_argument("--digits-epochs", type=int, default=30, help="digits: total epochs per run")
    parser.add_argument("--digits-refit-epochs", type=int, default=10)
    parser.add_argument("--lambdas", type=float, nargs="+", default=[0.0, 0.3, 1.0, 3.0, 10.0])
    parser.add_argument("--l1-lambdas", type=float, nargs="+", default=[0.003, 0.01])
    parser.add_argument("--group-lambdas", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--path-epochs", type=int, default=5,
                        help="digits: epochs per λ of the warm-started λ path (option lambda_path)")
    parser.add_argument("--depth", type=int, default=6, help="hidden layers of the classification MLPs")
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--fmnist-train", type=int, default=10000, help="Fashion-MNIST training subset (0: all)")
    parser.add_argument("--skip-fmnist", action="store_true")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--sim-dim", type=int, default=10)
    parser.add_argument("--sim-n", type=int, default=4000)
    parser.add_argument("--sim-width", type=int, default=20)
    parser.add_argument("--teacher-layers", type=int, default=5)
    parser.add_argument("--teacher-active", type=int, default=2)
    parser.add_argument("--student-layers", type=int, default=10)
    parser.add_argument("--sim-student-width", type=int, default=50)
    parser.add_argument("--sim-noise", type=float, default=0.1, help="noise std as a fraction of std(teacher)")
    parser.add_argument("--sim-epochs", type=int, default=40)
    parser.add_argument("--sim-refit-epochs", type=int, default=20)
    parser.add_argument("--sim-lr", type=float, default=1e-3)
    parser.add_argument("--sim-lambdas", type=float, nargs="+", default=[0.0, 2.0, 4.0, 5.0, 6.0, 8.0, 12.0])
    parser.add_argument("--latency-width", type=int, default=512)
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument("--latency-rounds", type=int, default=7)
    parser.add_argument("--input-scaling", choices=["none", "nonneg"], nargs="+", default=["none", "nonneg"],
                        help="layer-sparsity's input_scaling values of the λ grid (nonneg: the first layer too)")
    parser.add_argument("--default-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the default runs")
    parser.add_argument("--default-digits-epochs", type=int, default=30)
    parser.add_argument("--default-fmnist-epochs", type=int, default=3)
    parser.add_argument("--path-grid", type=float, nargs="+", default=[0.5, 1.0, 2.0, 4.0],
                        help="lambda_path of the default runs")
    parser.add_argument("--quiet-budget", type=float, default=90.0,
                        help="seconds the latency measurements may wait in all for a quiet machine")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the Markdown and the PNG from the saved JSON (nothing is run)")
    args = parser.parse_args()
    global COMMAND
    COMMAND = "OMP_NUM_THREADS=1 python benchmarks/reproduce_layer_sparsity.py " + " ".join(sys.argv[1:])
    if args.render_only:
        render(read_json(args.out / "layer_sparsity.json"), args.out)
        return
    torch.set_num_threads(args.threads)
    gate = QuietGate(threshold=0.5, budget=args.quiet_budget)
    started = time.perf_counter()

    default_rows: list[dict[str, Any]] = []
    if "defaults" in args.parts:
        default_rows = default_runs("digits", args.default_digits_epochs, args)
        if not args.skip_fmnist:
            default_rows += default_runs("fashion-mnist", args.default_fmnist_epochs, args)
        print_table("Defaults (--sparsity auto)", default_summary(default_rows),
                    ["data", "run", "seeds", "lambda", "depth", "acc_refit", "accuracy_cost"])
    sim_rows = simulation(args) if "simulation" in args.parts else []
    if sim_rows:
        print_table("Simulation: teacher with known active layers", sim_rows)

    class_rows: list[dict[str, Any]] = []
    widths = [args.width] * args.depth
    run_fmnist = "classification" in args.parts and not args.skip_fmnist
    digits_rows, _ = [], None
    if "classification" in args.parts:
        digits_rows, _ = classification("digits", data.load("digits", "train"), data.load("digits", "test"), widths,
                                        args.digits_epochs, args.digits_refit_epochs, args, gate)
    class_rows += digits_rows
    path = warm_path(data.load("digits", "train"), data.load("digits", "test"), widths, args) \
        if "classification" in args.parts else {}
    if path:
        print_table(f"Warm-started λ path on digits (kept λ={path['chosen_lambda']:g}, depth {path['depth_after']}, "
                    f"refit accuracy {path['acc_refit']:.4f})", path["path"])
    fmnist_note = "skipped"
    if run_fmnist:
        train = data.load("fashion-mnist", "train", args.data_dir)
        if args.fmnist_train:
            train = train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
                                 [:args.fmnist_train])
        fmnist_rows, _ = classification("fashion-mnist", train, data.load("fashion-mnist", "test", args.data_dir),
                                        widths, args.epochs, args.refit_epochs, args, gate)
        class_rows += fmnist_rows
        fmnist_note = f"{len(train)} training images (of 60,000), the full 10,000 test images"
    columns = ["data", "method", "lambda", "depth", "active_hidden", "params", "nonzero_params", "acc_regularised",
               "acc_refit", "latency_ms", "merge_rel_error", "seconds"]
    if class_rows:
        print_table(f"Classification: MLP {args.depth}x{args.width}", class_rows, columns)

    latency_rows = latency_by_depth(args, gate) if "latency" in args.parts else []
    if latency_rows:
        print_table(f"Latency: 10-hidden-layer MLP (width {args.latency_width}) merged to its active depth",
                    latency_rows)

    args.out.mkdir(parents=True, exist_ok=True)
    # Parts not run this time keep their previous results (say so in the JSON), so e.g. the latency table can be
    # re-measured alone on a quieter machine.
    previous_file = args.out / "layer_sparsity.json"
    previous = read_json(previous_file) if previous_file.is_file() else {}
    run_info = {"machine": machine(), "quiet_gate": gate.summary(), "finished": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                              time.gmtime())}
    parts_info = dict(previous.get("parts", {}))
    reused = []
    for part in PARTS:
        if part in args.parts:
            parts_info[part] = run_info
        elif part in previous:
            reused.append(part)
    if "simulation" not in args.parts:
        sim_rows = previous.get("simulation", [])
    if "classification" not in args.parts:
        class_rows = previous.get("classification", [])
        path = previous.get("warm_lambda_path_digits", {})
        fmnist_note = previous.get("fmnist_note", fmnist_note)
    if "latency" not in args.parts:
        latency_rows = previous.get("latency", [])
    if "defaults" not in args.parts:
        default_rows = previous.get("defaults", [])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    command = COMMAND.strip() if not reused else f"{previous.get('command', '?')}; then {COMMAND.strip()}"
    saved = {
        "benchmark": "reproduce_layer_sparsity", "command": command, "machine": machine(), "settings": settings,
        "defaults": default_rows, "defaults_summary": default_summary(default_rows),
        "fmnist_note": fmnist_note, "paper": PAPER_NOTE, "simulation": sim_rows, "classification": class_rows,
        "warm_lambda_path_digits": path, "latency": latency_rows, "quiet_gate": gate.summary(), "parts": parts_info,
        "reused_from_previous_run": reused, "seconds": round(time.perf_counter() - started, 1)}
    saved["shrunk"] = shrunk_note(saved)
    save_results(args.out / "layer_sparsity.json", saved)
    render(saved, args.out)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
