"""Layer sparsity (Hebiri & Lederer, arXiv 2006.15604, 2020; regulariser, merge and refit RECONSTRUCTED, see
shared/specs/layer_sparsity.md): the spec's §5 protocol at CPU size.

1. **Simulation** (spec §5): inputs ``x ~ U[0, 1]^d``, a ReLU teacher MLP whose hidden layers are all non-negative
   except ``--teacher-active`` of them (so the true function has that many active hidden layers), ``y = teacher(x) +
   noise``; a deeper student (``--student-layers`` hidden layers) is trained over the λ grid with the proximal
   penalty (all hidden layers penalised: the inputs are ≥ 0), merged and refitted. Does it recover the depth?
2. **Classification**: deep MLPs on scikit-learn digits and Fashion-MNIST over the λ grid — depth, parameters, CPU
   latency and accuracy after the penalised training (= after the exact merge) and after the refit — beside an
   unregularised MLP (λ = 0) and the connection (``l1-reg``) and node (``group-l1``) sparsity baselines. Plots:
   accuracy vs depth, and the λ path.
3. **Latency**: a 10-hidden-layer MLP whose hidden layers are made inactive from the back, merged to active depths
   10 … 0, timed side by side (interleaved rounds) against the ideal "latency ∝ remaining layers".

The paper's result tables could not be retrieved (spec §6), so no paper numbers are shown; the JSON says so.

Run: ``python benchmarks/reproduce_layer_sparsity.py [--data-dir ../shared/data] [--fmnist-train 10000]
[--epochs 6] [--digits-epochs 30] [--lambdas 0 0.1 0.3 1 3] [--skip-fmnist]``
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QuietGate, machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, methods, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.experiments.jobs import prune_model  # noqa: E402
from connprune.measure.latency import compare_latency  # noqa: E402
from connprune.methods.layer_sparsity import layer_folds, layer_groups, merge_runs, penalisable_links  # noqa: E402
from connprune.methods.regularisers import negative_part_norm, prox_negative_part  # noqa: E402
from connprune.surgery import merge  # noqa: E402
from connprune.utils.io import read_json  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PAPER_NOTE = ("Hebiri & Lederer's result tables were not retrievable (spec layer_sparsity.md §6): no paper numbers "
              "are quoted; everything here is our reconstruction.")
CLASSES = 10  # digits and Fashion-MNIST
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
    """Adam on the mean squared error, with the proximal layer penalty (step ``lr·λ``) after every step (spec §3)."""
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
    scaling = {"input_scaling": args.input_scaling}
    runs = [("unregularised", "layer-sparsity", {"lambda": 0.0, **scaling})]
    runs += [(f"layer-sparsity λ={lam:g}", "layer-sparsity", {"lambda": lam, **scaling})
             for lam in args.lambdas if lam > 0]
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
                            refit_epochs=args.digits_refit_epochs, input_scaling=args.input_scaling)
    epochs = args.path_epochs * len(grid) + args.digits_refit_epochs
    pruned, _, metrics = prune_model(model, method, "auto", train, test, train_epochs=epochs, progress=False)
    return {"grid": grid, "epochs_per_lambda": args.path_epochs, "path": metrics["lambda_path"],
            "chosen_lambda": metrics["lambda"], "depth_after": merge.depth(pruned),
            "acc_merged": metrics["acc_pruned"], "acc_refit": metrics["acc_after"]}


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


def plot(rows: list[dict[str, Any]], sim_rows: list[dict[str, Any]], path: Path) -> None:
    """Accuracy vs depth (top), the λ path (middle) per data set, and the simulation's recovered depth (bottom)."""
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
        gone = ", ".join(f"λ={r['lambda']:g}" for r in mine if collapsed(r))
        ax = axes[0][column]
        ax.scatter([r["depth"] for r in ls], [r["acc_refit"] for r in ls], marker="o", label="layer sparsity + refit")
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
        positive = [r for r in ls if r["lambda"] > 0]
        path_ax.semilogx([r["lambda"] for r in positive], [r["acc_refit"] for r in positive], "o-",
                         label="accuracy after refit")
        path_ax.set_xlabel("λ")
        path_ax.set_ylabel("test accuracy")
        twin = path_ax.twinx()
        twin.semilogx([r["lambda"] for r in positive], [r["depth"] for r in positive], "s--", color="C3")
        twin.set_ylabel("depth after merge", color="C3")
        path_ax.set_title(f"{name}: λ path (one run per λ)" + (f"; collapsed, not shown: {gone}" if gone else ""),
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
    for column in range(1 if sim_rows else 0, columns):
        axes[2][column].axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ report


def shrunk_note(saved: dict[str, Any]) -> str:
    """How the run was shrunk from the design's protocol, from the saved settings."""
    st = saved["settings"]
    fmnist = saved.get("fmnist_note") or saved.get("shrunk", "").partition("Fashion-MNIST: ")[2].partition(";")[0]
    return (f"CPU-sized: classification MLPs {st['depth']}x{st['width']}, the data sets' default SGD recipes "
            f"(lr 0.05 cosine, momentum 0.9; proximal step lr·λ), trained {st['epochs']} epochs in all on "
            f"Fashion-MNIST ({st['epochs'] - st['refit_epochs']} penalised + {st['refit_epochs']} refit) and "
            f"{st['digits_epochs']} on digits ({st['digits_epochs'] - st['digits_refit_epochs']} + "
            f"{st['digits_refit_epochs']}); the spec says 100 + 50, one seed (spec: 5); Fashion-MNIST: {fmnist}; "
            f"simulation {st['sim_epochs']}+{st['sim_refit_epochs']} epochs on {st['sim_n']} samples; latency batch "
            f"{st['latency_batch']}, 1 thread.")


def render(saved: dict[str, Any], out: Path) -> None:
    """The Markdown report and the PNG from the saved JSON; collapsed runs (:data:`COLLAPSED`) are labelled, not
    reported as depths."""
    st = saved["settings"]
    class_rows, path = saved["classification"], saved.get("warm_lambda_path_digits") or {}
    if class_rows:
        plot(class_rows, saved["simulation"], out / "layer_sparsity.png")
    scaling = st.get("input_scaling", "none")
    first = (f"penalised too (`input_scaling={scaling}`)" if scaling != "none" else
             "not penalised: its inputs are mean-normalised (`input_scaling=none`"
             + ("" if "input_scaling" in st else "; this run predates the option") + ")")
    columns = ["data", "method", "lambda", "depth", "active_hidden", "params", "nonzero_params", "acc_regularised",
               "acc_refit", "latency_ms", "merge_rel_error", "seconds"]
    shown = labelled(class_rows, ("depth", "active_hidden", "params", "nonzero_params", "latency_ms"))
    refitted_pick = bool(path) and "penalised_accuracy" in path["path"][0]
    pick = ("on the merged and refitted network's held-out accuracy" if refitted_pick else
            "on the penalised network's held-out accuracy (this run predates the refitted pick)")
    path_text = "not run"
    if path:
        path_text = (f"Kept λ = {path['chosen_lambda']:g} (fewest active layers within 1% of the best held-out "
                     f"accuracy, {pick}): depth {path['depth_after']}, accuracy {path['acc_merged']:.4f} merged, "
                     f"{path['acc_refit']:.4f} refitted.\n\n" + markdown_table(labelled(path["path"], ("depth",))))
    latency = saved.get("parts", {}).get("latency", {})
    save_text(out / "layer_sparsity.md", "\n".join([
        "# Layer sparsity (reconstructed) — CPU-sized reproduction", "", saved["paper"], "", shrunk_note(saved), "",
        "## Simulation: does the method recover the teacher's active layers?", "", markdown_table(saved["simulation"]),
        f"## Classification (MLP {st['depth']} hidden x {st['width']})", "",
        f"The first layer is {first}. `acc_regularised` is after the penalised training, which the exact merge does "
        "not change; `acc_refit` after the refit. `params` counts the stored parameters (l1-reg keeps its zeros "
        f"stored; `nonzero_params` counts the rest). Latency: batch {st['latency_batch']}, 1 thread, interleaved "
        f"rounds, median. **collapsed**: the penalised network's accuracy is at most {COLLAPSED:.2f} (1.5 × chance): "
        "the penalty destroyed it, so its depth is not a result.", "",
        markdown_table(shown, columns), "![accuracy vs depth and the λ path](layer_sparsity.png)", "",
        "## The method's warm-started λ path on digits (option `lambda_path`)", "", path_text, "",
        "## Latency of a 10-hidden-layer MLP merged to its active depth", "",
        f"Measured {latency.get('finished', '?')}, load average "
        f"{latency.get('machine', {}).get('load_average')} (shared 2-core machine).", "",
        markdown_table(saved["latency"]), ""]))


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
    parser.add_argument("--parts", nargs="+", choices=["simulation", "classification", "latency"],
                        default=["simulation", "classification", "latency"])
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
    parser.add_argument("--sim-lambdas", type=float, nargs="+", default=[0.0, 2.0, 4.0, 6.0, 8.0, 12.0])
    parser.add_argument("--latency-width", type=int, default=512)
    parser.add_argument("--latency-batch", type=int, default=64)
    parser.add_argument("--latency-rounds", type=int, default=7)
    parser.add_argument("--input-scaling", choices=["none", "nonneg"], default="none",
                        help="layer-sparsity's input_scaling (nonneg: the first layer is penalised too)")
    parser.add_argument("--render-only", action="store_true",
                        help="rewrite the Markdown and the PNG from the saved JSON (nothing is run)")
    args = parser.parse_args()
    if args.render_only:
        render(read_json(args.out / "layer_sparsity.json"), args.out)
        return
    torch.set_num_threads(args.threads)
    gate = QuietGate(threshold=0.5, budget=90.0)
    started = time.perf_counter()

    sim_rows = simulation(args) if "simulation" in args.parts else []
    if sim_rows:
        print_table("Simulation: teacher with known active layers", sim_rows)

    class_rows: list[dict[str, Any]] = []
    widths = [args.width] * args.depth
    if "classification" not in args.parts:
        args.skip_fmnist = True
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
    if not args.skip_fmnist:
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
    for part in ("simulation", "classification", "latency"):
        if part in args.parts:
            parts_info[part] = run_info
        elif part in previous:
            reused.append(part)
    if "simulation" not in args.parts:
        sim_rows = previous.get("simulation", [])
    if "classification" not in args.parts:
        class_rows = previous.get("classification", [])
        path = previous.get("warm_lambda_path_digits", {})
    if "latency" not in args.parts:
        latency_rows = previous.get("latency", [])
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    saved = {
        "benchmark": "reproduce_layer_sparsity", "machine": machine(), "settings": settings,
        "fmnist_note": fmnist_note, "paper": PAPER_NOTE, "simulation": sim_rows, "classification": class_rows,
        "warm_lambda_path_digits": path, "latency": latency_rows, "quiet_gate": gate.summary(), "parts": parts_info,
        "reused_from_previous_run": reused, "seconds": round(time.perf_counter() - started, 1)}
    saved["shrunk"] = shrunk_note(saved)
    save_results(args.out / "layer_sparsity.json", saved)
    render(saved, args.out)
    print(f"done in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
