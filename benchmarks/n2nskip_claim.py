"""N2NSkip's claims tested where they can run here: N2NSkip vs the plain pruned network at equal non-zeros and 1–5 %
density (Subramaniam & Sharma, BMVC 2020, arXiv 2208.03662, §4 Table 1 and Fig. 5; docs/methods/n2nskip.md).

Both networks are pruned at initialisation by SNIP (the paper's CSP): ``csp`` is the plain network at the density,
``n2nskip-csp`` the same budget split half sequential, half sparse neuron-to-neuron skips (one per block, fan-in
masks; :mod:`connprune.methods.n2nskip`). The script checks the non-zero counts (sequential + skip weights) are equal
in every pair and reports each network's MACs (skip branches counted compactly: non-zeros × positions) and the
connectivity distance F to the dense network at initialisation (Eq. 6; weighted adjacency at the dense reference's
scree time t*, the docs' Table 3 setting). Then both train from scratch with masks enforced, with the paper's
optimiser (SGD 0.05, momentum 0.9, weight decay 5e-4, batch 128) and its schedule compressed to the run (lr × 0.5 at
every tenth of the run, as the paper's 300 epochs halve every 30), test accuracy recorded after every epoch.

Claims and verdicts (paired over seeds: same seed = same initialisation and data order; a *win* / *loss* when the
mean paired difference exceeds its standard deviation over seeds, else a *tie within the seed spread*):

- "higher accuracy at high sparsity": final test accuracy, n2nskip-csp − csp, per (data, model, density);
- "faster convergence": test accuracy after the first epoch, and the mean test accuracy over all epochs (the area
  under the convergence curve).

CPU setting (:data:`CPU`, about 90 minutes on 2 shared cores as two processes, one per model), 3 seeds: LeNet-5 on
full MNIST and Fashion-MNIST, 6 epochs, densities 5 / 2 / 1 %; a VGG-style CNN (``vgg-s``: 16-M-32-M-64-64-M with
BatchNorm, global average pooling, one linear layer; sized for 28×28 / 32×32) at 5 / 1 % on the PARTIAL CIFAR-10
here (5,085 train / 1,017 test images, 12 epochs) and on 20,000 images of MNIST and Fashion-MNIST (3 epochs). The
paper trains VGG-19 and ResNet-50 300 epochs on the full CIFAR-10, which is not here. ``--full`` (GPU): every image,
60 epochs on MNIST / Fashion-MNIST and 300 on CIFAR-10, 5 seeds, densities 10 / 5 / 2 / 1 %. The JSON is written
after every run and a rerun of the same command skips what is done; ``--merge A.json B.json`` joins per-process
runs.

Run: two processes side by side, ``python benchmarks/n2nskip_claim.py --models lenet5 --tag=-lenet5 --out DIR``
and ``python benchmarks/n2nskip_claim.py --models vgg-s --densities 0.05 0.01 --tag=-vggs --out DIR``, then
``python benchmarks/n2nskip_claim.py --merge DIR/n2nskip_claim-lenet5.json DIR/n2nskip_claim-vggs.json`` writes
``benchmarks/results/n2nskip_claim.{json,md,png}`` (the committed results ran vgg-s's MNIST part in a third process
once LeNet-5's was done; the JSON lists the three commands).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, mean_std, outcome, print_table, save_results, save_text  # noqa: E402
from reproduce_n2nskip import PAPER_TABLE1, prune_at_init  # noqa: E402

from connprune import data, models  # noqa: E402
from connprune.data import ImageData  # noqa: E402
from connprune.measure import heat  # noqa: E402
from connprune.measure.cost import count_macs  # noqa: E402
from connprune.methods.n2nskip import paper_recipe  # noqa: E402
from connprune.models.vgg import VGG  # noqa: E402
from connprune.surgery import MaskEnforcer  # noqa: E402
from connprune.train import Trainer, evaluate  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
VGG_S = [16, "M", 32, "M", 64, 64, "M"]
"""The VGG-style CNN: VGG's 3×3 conv + BN + ReLU stages and max pooling (:class:`connprune.models.vgg.VGG`), sized
for 28×28 inputs on 2 CPU cores."""
PLAIN, SKIP, POOL_FIRST = "csp", "n2nskip-csp", "n2nskip-csp-pool-conv"
"""The plain SNIP network, N2NSkip on it (the paper's), and N2NSkip with ``bridge=pool-conv`` (ours: skips crossing
pools run at the target's resolution)."""
COMPRESSED_SCHEDULE = [k / 10 for k in range(1, 10)]
"""The paper's ×0.5 every 30 of 300 epochs, as fractions of any run's length."""
Setting = dict[tuple[str, str], tuple[int, int | None]]
CPU: Setting = {("fashion-mnist", "lenet5"): (6, None), ("mnist", "lenet5"): (6, None),
                ("cifar10", "vgg-s"): (12, None), ("fashion-mnist", "vgg-s"): (3, 20_000),
                ("mnist", "vgg-s"): (3, 20_000)}
"""(data, model) → (epochs, training images; None: all) for the CPU run, in the order they run."""
FULL: Setting = {("fashion-mnist", "lenet5"): (60, None), ("mnist", "lenet5"): (60, None),
                 ("cifar10", "vgg-s"): (300, None), ("fashion-mnist", "vgg-s"): (60, None),
                 ("mnist", "vgg-s"): (60, None)}


def network(name: str, info: data.DatasetInfo, seed: int) -> torch.nn.Module:
    """A fresh ``lenet5`` (the zoo's) or ``vgg-s`` (:data:`VGG_S`) for ``info``'s inputs, seeded."""
    torch.manual_seed(seed)
    channels, size = info.input_shape[0], info.input_shape[-1]
    if name == "vgg-s":
        return VGG(VGG_S, num_classes=info.num_classes, in_channels=channels)
    return models.create(name, num_classes=info.num_classes, in_channels=channels, input_size=size)


def training_images(train: ImageData, count: int | None) -> ImageData:
    """``count`` training images drawn once (the same for every run and seed), or all."""
    if count is None or count >= len(train):
        return train
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
    return train.subset(order[:count])


def sparse_macs(model: torch.nn.Module, shape: tuple[int, ...]) -> int:
    """MACs of one sample if every conv / linear layer ran only its non-zero weights: Σ non-zeros × output positions
    (sequential and skip layers alike; the masks are applied to the weights)."""
    total = 0

    def count(module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        nonlocal total
        total += int(torch.count_nonzero(module.weight)) * (output[0].numel() // output.shape[1])

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(count) for m in layers]
    try:
        training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *shape))
        model.train(training)
    finally:
        for handle in handles:
            handle.remove()
    return total


def one_run(model_name: str, label: str, density: float, seed: int, train: ImageData, test: ImageData,
            epochs: int) -> dict[str, Any]:
    """Prune a fresh network at initialisation, measure it (non-zeros, MACs, F), train it with masks enforced."""
    started = time.perf_counter()
    shape = tuple(train.info.input_shape)
    reference = network(model_name, train.info, seed)
    model, masks, nonzero = prune_at_init(network(model_name, train.info, seed), label, density, train, seed, shape)
    f_weighted = heat.compare(reference, model, shape, masks=masks, weighted=True).distance("t_star")
    macs, nonzero_macs = count_macs(model, shape), sparse_macs(model, shape)
    initial = evaluate(model, test)["accuracy"]
    recipe = paper_recipe(epochs, seed=seed, milestones=COMPRESSED_SCHEDULE)
    trainer = Trainer(model, train, test, recipe, progress=False)
    MaskEnforcer(model, masks, trainer.optimizer)
    curve = [initial] + [h["test_accuracy"] for h in trainer.fit().history]
    return {"method": label, "nonzero_weights": nonzero, "macs": macs, "sparse_macs": nonzero_macs,
            "dense_macs": count_macs(reference, shape),
            "F_weighted_t*": f_weighted, "accuracy": curve[-1], "accuracy_epoch1": curve[1],
            "mean_accuracy": sum(curve[1:]) / epochs, "accuracy_per_epoch": [round(a, 4) for a in curve],
            "seconds": round(time.perf_counter() - started, 1)}


def key(run: dict[str, Any]) -> tuple:
    return run["data"], run["model"], run["density"], run["seed"], run["method"]


def cell(run: dict[str, Any]) -> tuple:
    return run["data"], run["model"], run["density"]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=SHARED)
    parser.add_argument("--data", nargs="+", default=None, help="data sets (default: those of the setting)")
    parser.add_argument("--models", nargs="+", default=None, choices=["lenet5", "vgg-s"])
    parser.add_argument("--densities", type=float, nargs="+", default=None, help="default 0.05 0.02 0.01")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default 0 1 2 (--full: 0-4)")
    parser.add_argument("--variants", nargs="+", default=[SKIP], choices=[SKIP, POOL_FIRST],
                        help="N2NSkip variants trained beside the plain network")
    parser.add_argument("--full", action="store_true", help="the paper-sized setting (GPU)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tag", default="", help="suffix of the output name (one per process)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="join the runs of these JSONs into n2nskip_claim.json and render it")
    args = parser.parse_args()
    args.densities = args.densities or ([0.1, 0.05, 0.02, 0.01] if args.full else [0.05, 0.02, 0.01])
    args.seeds = args.seeds if args.seeds is not None else list(range(5 if args.full else 3))
    return args


def main() -> None:
    args = parse()
    if args.merge:
        loaded = [json.loads(path.read_text()) for path in args.merge]
        runs = list({key(r): r for result in loaded for r in result["runs"]}.values())
        ran = {(r["data"], r["model"]) for r in runs}
        plan = list({(entry["data"], entry["model"]): {**entry, "densities": result["settings"]["densities"]}
                     for result in loaded for entry in result["settings"]["plan"]
                     if (entry["data"], entry["model"]) in ran}.values())
        settings = {**loaded[0]["settings"], "plan": plan, "merged_from": [str(p) for p in args.merge],
                    "commands": [result["settings"]["command"] for result in loaded],
                    "densities": sorted({d for entry in plan for d in entry["densities"]}, reverse=True)}
        write(args.out / "n2nskip_claim.json", {**loaded[0], "settings": settings, "runs": runs,
                                                "machines": [result["machine"] for result in loaded]})
        return
    torch.set_num_threads(args.threads)
    setting = FULL if args.full else CPU
    plan = [(d, m) for (d, m) in setting if (args.data is None or d in args.data)
            and (args.models is None or m in args.models)]
    path = args.out / f"n2nskip_claim{args.tag}.json"
    results = json.loads(path.read_text()) if path.exists() else {"runs": []}
    done = {key(r) for r in results["runs"]}
    command = " ".join(sys.argv)
    if results.get("settings", {}).get("command"):  # resumed or extended: keep what produced the earlier runs
        command = f"{results['settings']['command']}; then {command}"
    settings = {"command": command, "full": args.full, "densities": args.densities, "seeds": args.seeds,
                "plan": [{"data": d, "model": m, "epochs": setting[d, m][0], "densities": args.densities,
                          "train_images": setting[d, m][1] or "all"} for d, m in plan],
                "threads": args.threads, "vgg_s": VGG_S, "schedule": "paper's optimiser, lr x0.5 at every tenth"}
    started = time.perf_counter()
    for data_name, model_name in plan:
        epochs, count = setting[data_name, model_name]
        train = training_images(data.load(data_name, "train", args.data_dir), count)
        test = data.load(data_name, "test", args.data_dir)
        for density in args.densities:
            for seed in args.seeds:
                for label in (PLAIN, *args.variants):
                    where = {"data": data_name, "model": model_name, "density": density, "seed": seed}
                    if key({**where, "method": label}) in done:
                        continue
                    run = {**where, **one_run(model_name, label, density, seed, train, test, epochs),
                           "epochs": epochs, "train_images": len(train), "test_images": len(test)}
                    results["runs"].append(run)
                    print(f"[{time.perf_counter() - started:6.0f} s] {data_name}/{model_name} d={density:g} "
                          f"seed {seed} {label}: acc {run['accuracy']:.4f} (epoch 1 {run['accuracy_epoch1']:.4f}) "
                          f"nnz {run['nonzero_weights']} MACs {run['macs']:,} F {run['F_weighted_t*']:.4g} "
                          f"({run['seconds']} s)", flush=True)
                    write(path, {**results, "benchmark": "n2nskip_claim", "machine": machine(),
                                 "settings": settings}, render_outputs=False)
    write(path, {**results, "benchmark": "n2nskip_claim", "machine": machine(), "settings": settings})


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per cell and N2NSkip variant: means ± std over seeds of it and of the plain network, the paired differences
    (variant − plain) and the budget check."""
    rows = []
    for c in sorted({cell(r) for r in runs}, key=lambda c: (c[0], c[1], -c[2])):
        by = {(r["method"], r["seed"]): r for r in runs if cell(r) == c}
        for variant in (SKIP, POOL_FIRST):
            seeds = sorted(s for (m, s) in by if m == PLAIN and (variant, s) in by)
            if seeds:
                rows.append(_paired_row(c, variant, [(by[PLAIN, s], by[variant, s]) for s in seeds]))
    return rows


def _paired_row(c: tuple, variant: str, pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    plain, skip = pairs[0]
    row: dict[str, Any] = {"data": c[0], "model": c[1], "density": c[2], "variant": variant, "seeds": len(pairs),
                           "nonzero": plain["nonzero_weights"],
                           "equal_nonzero": all(a["nonzero_weights"] == b["nonzero_weights"] for a, b in pairs),
                           **{f"{m}_ratio": skip[m] / plain[m] for m in ("macs", "sparse_macs")}}
    for metric in ("accuracy", "accuracy_epoch1", "mean_accuracy", "F_weighted_t*"):
        for side, index in (("csp", 0), ("skip", 1)):
            row[f"{metric}_{side}"], row[f"{metric}_{side}_std"] = mean_std([pair[index][metric] for pair in pairs])
        if metric != "F_weighted_t*":
            diffs = [b[metric] - a[metric] for a, b in pairs]
            row[f"delta_{metric}"], row[f"delta_{metric}_std"] = mean_std(diffs)
            row[f"verdict_{metric}"] = outcome(diffs) if len(diffs) > 1 else "undecided (one seed)"
    curves = [run["accuracy_per_epoch"] for pair in pairs for run in pair]
    row["last_epoch_gain"] = max(abs(curve[-1] - curve[-2]) for curve in curves)
    return row


def weak(rows: list[dict[str, Any]], plan: list[dict[str, Any]]) -> str:
    """What limits these results, with the training lengths and compute ratios of this run."""
    training = "; ".join(f"{p['data']}/{p['model']} {p['epochs']} epochs on {p['train_images']} training images"
                         for p in plan)
    sparse = {}
    for model in sorted({r["model"] for r in rows}):
        ratios = [r["sparse_macs_ratio"] for r in rows if r["model"] == model and r["variant"] == SKIP]
        if ratios:
            sparse[model] = f"{model} {min(ratios):.2f}–{max(ratios):.2f}×"
    return (f"Short training ({training}; the paper: 300 epochs on the full CIFAR-10); the compressed schedule ends at "
            "a tiny learning rate, so a small last-epoch change shows the schedule ended, not that longer training "
            "would not reorder the methods. One base (SNIP, the paper's CSP): the paper's channel-level RP keeps the "
            "first conv and the classifier dense, which alone exceeds a 1–2 % budget on these small networks. Small "
            "networks (LeNet-5, a 16-32-64-64 VGG), not the paper's VGG-19 / ResNet-50. Equal non-zeros is not equal "
            "compute: N2NSkip's skip convolutions run at their source's resolution, so if every layer ran only its "
            f"non-zeros N2NSkip would do {', '.join(sparse.values())} the plain network's multiply-adds "
            "(`sparse_macs_ratio`); the pool-conv variant (ours, not the paper's) is the equal-compute control. "
            "3 seeds: a tie is within one std of the paired differences, not a significance test. 2 shared CPU cores "
            "(the machine and its load are in the JSON).")


PAPER_NOTE = ("The paper's Table 1 (CIFAR-10, 300 epochs, mean of 5 runs; not measured here): VGG-19 CSP / "
              "N2NSkip-CSP {vgg}; ResNet-50 {resnet}.")


def paper_note() -> str:
    """The paper's CSP vs N2NSkip-CSP accuracies per density (its Table 1), labelled as the paper's."""
    def pairs(network: str) -> str:
        table = PAPER_TABLE1[network]
        return ", ".join(f"{d:g}: {table[PLAIN][d]} / {table[SKIP][d]} %" for d in sorted(table[PLAIN], reverse=True))
    return PAPER_NOTE.format(vgg=pairs("vgg19"), resnet=pairs("resnet50"))


CLAIMS = {"higher accuracy at high sparsity": [("accuracy", "final test accuracy")],
          "faster convergence": [("accuracy_epoch1", "accuracy after epoch 1"),
                                 ("mean_accuracy", "mean accuracy over the epochs")]}


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """One line per N2NSkip variant, claim and metric: the tally over the cells at equal non-zeros with two or more
    seeds and the overall outcome: ``reproduced`` when the variant wins more cells than it ties and loses together,
    ``partly`` when it wins some and loses none."""
    lines = []
    for variant, name in ((SKIP, "N2NSkip-CSP"), (POOL_FIRST, "N2NSkip-CSP with bridge=pool-conv (ours)")):
        fair = [r for r in rows if r["variant"] == variant and r["equal_nonzero"] and r["seeds"] > 1]
        if variant == POOL_FIRST and not fair:
            continue
        for claim, metrics in CLAIMS.items():
            for metric, what in metrics:
                tally = {word: sum(r[f"verdict_{metric}"] == word for r in fair) for word in ("wins", "ties", "loses")}
                overall = ("undecided (no cell at equal non-zeros with 2+ seeds)" if not fair else
                           "reproduced" if tally["wins"] > tally["ties"] + tally["loses"] else
                           "not reproduced (N2NSkip loses)" if tally["loses"] > tally["wins"] + tally["ties"] else
                           "partly reproduced (wins in some cells, ties in the rest, never loses)"
                           if tally["wins"] and not tally["loses"] else
                           "not reproduced (ties within the seed spread or mixed)")
                cells = "; ".join(f"{r['data']}/{r['model']}@{r['density']:g} {r[f'verdict_{metric}']} "
                                  f"({r[f'delta_{metric}']:+.4f} ± {r[f'delta_{metric}_std']:.4f})" for r in fair)
                lines.append(f"Claim '{claim}' on {what}: **{overall}** — {name} vs CSP wins {tally['wins']}, "
                             f"ties {tally['ties']}, loses {tally['loses']} of {len(fair)} cells: {cells}")
    return lines


COLUMNS = ["data", "model", "density", "variant", "seeds", "nonzero", "equal_nonzero", "macs_ratio",
           "sparse_macs_ratio", "accuracy_csp", "accuracy_csp_std", "accuracy_skip", "accuracy_skip_std",
           "delta_accuracy", "delta_accuracy_std", "delta_accuracy_epoch1", "delta_mean_accuracy", "F_weighted_t*_csp",
           "F_weighted_t*_skip", "last_epoch_gain"]


def write(path: Path, results: dict[str, Any], render_outputs: bool = True) -> None:
    """Save the JSON (with the summary and verdicts); with ``render_outputs`` also the table, Markdown and plot."""
    rows = summary(results["runs"])
    lines = verdicts(rows)
    save_results(path, {**results, "summary": rows, "verdicts": lines})
    if not render_outputs:
        return
    print_table("N2NSkip-CSP vs CSP at equal non-zeros (mean over seeds)", rows, COLUMNS)
    print("\n".join(lines))
    plan = results["settings"]["plan"]
    text = ["# N2NSkip vs the plain pruned network at 1–5 % density\n",
            "`variant`: `n2nskip-csp` (the paper's N2NSkip, skips bridged as in the code release) or "
            "`n2nskip-csp-pool-conv` (ours: skips crossing pools run at the target's resolution); `_skip` columns "
            "are the variant's, `_csp` the plain network's, `delta_` the paired differences variant − plain. "
            "Both pruned at initialisation by SNIP (CSP) at the same non-zero count (sequential + skip weights, "
            "checked per pair: `equal_nonzero`), trained from scratch with the paper's optimiser and its lr schedule "
            "compressed to the run. Paired over seeds; a win or loss needs the mean paired difference to exceed "
            "its seed spread. `macs_ratio`: N2NSkip's reported MACs / the plain network's (skips counted as "
            "non-zeros × positions; the sequential layers dense, as they run), `sparse_macs_ratio` the same if "
            "every layer ran only its non-zeros (non-zeros × output positions). F: weighted heat-diffusion distance "
            "to the dense network at t* (lower = closer), at initialisation. `last_epoch_gain`: the largest "
            "accuracy change over the last epoch of any run in the cell (small = near a plateau).\n",
            "Runs: " + "; ".join(f"{p['data']}/{p['model']} at densities {p['densities']}, {p['epochs']} epochs on "
                                 f"{p['train_images']} training images" for p in plan)
            + f"; seeds {results['settings']['seeds']}.\n",
            markdown_table(rows, COLUMNS), "\n## Verdicts\n", "\n".join(f"- {line}" for line in lines),
            "\n" + paper_note() + "\n", "## Weak\n", weak(rows, plan) + "\n", f"![convergence]({path.stem}.png)\n"]
    save_text(path.with_suffix(".md"), "\n".join(text))
    plot(results["runs"], rows, path.with_suffix(".png"))


def plot(runs: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path) -> None:
    """Mean test accuracy per epoch (± std band over seeds), one panel per (data, model, density)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    pairs = sorted({(r["data"], r["model"]) for r in rows})
    densities = sorted({r["density"] for r in rows}, reverse=True)
    fig, axes = plt.subplots(len(pairs), len(densities), figsize=(3.6 * len(densities), 2.8 * len(pairs)),
                             squeeze=False)
    for i, (data_name, model_name) in enumerate(pairs):
        for j, density in enumerate(densities):
            ax = axes[i][j]
            if not any(r["density"] == density and (r["data"], r["model"]) == (data_name, model_name) for r in rows):
                ax.set_axis_off()
                continue
            for k, label in enumerate((PLAIN, SKIP, POOL_FIRST)):
                curves = np.array([r["accuracy_per_epoch"] for r in runs if (r["data"], r["model"], r["density"],
                                   r["method"]) == (data_name, model_name, density, label)])
                if curves.size:
                    mean, std = curves.mean(axis=0), curves.std(axis=0)
                    ax.plot(range(len(mean)), mean, marker=".", color=f"C{k}", label=label)
                    ax.fill_between(range(len(mean)), mean - std, mean + std, color=f"C{k}", alpha=0.2)
            ax.set_title(f"{data_name} / {model_name} @ {density:g}", fontsize=9)
            ax.set(xlabel="epoch", ylabel="test accuracy")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
