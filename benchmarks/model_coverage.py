"""Which models can connprune prune, beside Torch-Pruning? Every method at sparsity 0.5 on classifiers written
outside the zoo (benchmarks/architectures.py: DenseNet, Inception, SqueezeNet, ResNeXt, RegNet, ShuffleNetV2,
MobileNetV3, EfficientNet, ConvNeXt, GroupNorm-ResNet, ViT, MLP-Mixer) and on the zoo's own families.

For each (model, pruner): pruned or not (and why not: refused, not applicable, error), parameters and MACs before
and after, the shrunk-vs-masked relative error where the removal has a masked equivalent (≤ 1e-5 required), the
achieved sparsity, and the time. Torch-Pruning's ``MetaPruner`` (L1 magnitude, channel ratio 0.5, the classifier
ignored, attention heads given) is the reference row of each model. Data-driven methods use 512 images of the
partial CIFAR-10 (or random images when it is missing) and the methods that train do one epoch: this is a coverage
check, not an accuracy study.

    python benchmarks/model_coverage.py                  # every model and method (~20 min on 2 CPU cores)
    python benchmarks/model_coverage.py --models vit convnext --methods l1-filter snacs

Writes ``benchmarks/results/model_coverage.{json,md}``; runs already in the JSON are kept (``--fresh`` redoes the
selected ones).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import torch
import torch_pruning as tp
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from architectures import ARCHITECTURES  # noqa: E402
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import data, methods, models, surgery  # noqa: E402
from connprune.errors import UserError  # noqa: E402
from connprune.measure import cost  # noqa: E402
from connprune.measure.sparsity import count_nonzero, count_prunable  # noqa: E402
from connprune.methods import PruneData  # noqa: E402
from connprune.train import default_recipe  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SHAPE = (3, 32, 32)
ZOO = {"resnet20": {}, "vgg11": {}, "mobilenetv2": {}, "resnet18": {"small_input": True}}
PARAMS: dict[str, dict[str, Any]] = {
    "random": {"structured": True}, "gcnet": {"probe_per_class": 10}, "mint": {"samples_per_class": 20},
    "snacs": {"samples_per_class": 20, "constraint_samples": 200}, "kfac": {"stat_every": 5, "eig_every": 10},
    "n2nskip": {"base": "random"}, "resskip": {"base": "random"},
}
STRUCTURED = {"l1-filter", "random", "group-l1", "network-slimming", "kfac"}


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name in ARCHITECTURES:
        return ARCHITECTURES[name]().eval()
    return models.create(name, num_classes=10, in_channels=3, input_size=32, **ZOO[name]).eval()


def images(data_dir: Path) -> data.ImageData:
    """512 training images of the partial CIFAR-10 (class-ordered draw), or random images if it is absent."""
    try:
        train = data.load("cifar10", "train", data_dir)
        return train.subset(torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:512])
    except UserError:
        generator = torch.Generator().manual_seed(0)
        info = data.info("cifar10")
        return data.ImageData(torch.randint(0, 256, (512, *SHAPE), generator=generator, dtype=torch.uint8),
                              torch.arange(512) % 10, info, "train")


def _row(model_name: str, pruner: str, dense: nn.Module, pruned: nn.Module | None, started: float,
         **extra: Any) -> dict[str, Any]:
    before = cost(dense, SHAPE)
    after = cost(pruned, SHAPE) if pruned is not None else before
    return {"model": model_name, "pruner": pruner, "params_before": before.params, "params_after": after.params,
            "macs_before": before.macs, "macs_after": after.macs, "seconds": round(time.perf_counter() - started, 2),
            **extra}


def torch_pruning_row(model_name: str) -> dict[str, Any]:
    """Torch-Pruning's MetaPruner, L1, channel ratio 0.5, classifier ignored, attention heads declared."""
    dense = build(model_name)
    model = copy.deepcopy(dense)
    x = torch.randn(1, *SHAPE)
    started = time.perf_counter()
    try:
        heads = {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
        outputs = [m for m in model.modules()  # the classifier: its 10 outputs are the classes
                   if isinstance(m, (nn.Linear, nn.Conv2d)) and getattr(m, "out_features", m.weight.shape[0]) == 10]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.MagnitudeImportance(p=1),
                                          pruning_ratio=0.5, ignored_layers=outputs, num_heads=heads)
            pruner.step()
        with torch.no_grad():
            model(x)
        return _row(model_name, "torch-pruning", dense, model, started, status="pruned")
    except Exception as exc:  # noqa: BLE001 - the table records why Torch-Pruning failed
        return _row(model_name, "torch-pruning", dense, None, started, status="error",
                    why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}")


def connprune_row(model_name: str, method: str, train: data.ImageData) -> dict[str, Any]:
    """One connprune method at 0.5 (``auto`` for layer sparsity) through the Python API with example inputs."""
    dense = build(model_name)
    x = torch.randn(1, *SHAPE, generator=torch.Generator().manual_seed(1))
    sparsity = "auto" if method == "layer-sparsity" else 0.5
    started = time.perf_counter()
    try:
        pruner = methods.create(method, **PARAMS.get(method, {}))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = pruner.prune(copy.deepcopy(dense), sparsity, PruneData(
                train=train, recipe=default_recipe("cifar10", epochs=1, batch_size=64), example_inputs=x))
        base = result.model if result.model is not None else dense
        pruned, masks = surgery.apply(copy.deepcopy(base), result, example_inputs=x)
        error = _masked_error(base, result, pruned, x)
        achieved = 1.0 - count_nonzero(pruned, masks, include_skips=True) / count_prunable(dense)
        changed = cost(pruned, SHAPE).params < cost(dense, SHAPE).params or achieved > 0.01
        return _row(model_name, method, dense, pruned, started, status="pruned" if changed else "unchanged",
                    achieved_sparsity=round(achieved, 4), masked_error=error,
                    why="; ".join(f"{k}: {v}" for k, v in result.info.get("layers_left_unpruned", {}).items())[:160]
                    or result.info.get("budget_note", "")[:160] or None)
    except UserError as exc:
        return _row(model_name, method, dense, None, started, status="refused", why=str(exc)[:200])
    except Exception as exc:  # noqa: BLE001 - the table records unexpected failures (they are bugs)
        return _row(model_name, method, dense, None, started, status="error",
                    why=f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]} @ "
                        f"{traceback.extract_tb(exc.__traceback__)[-1].name}")


def _masked_error(base: nn.Module, result: methods.PruningResult, pruned: nn.Module, x: torch.Tensor) -> float | None:
    """Relative error between the shrunk and the masked model, or None where the removal has no masked form or
    nothing is shrunk (a result that adds skips is applied as masks, its branches freshly initialised each time)."""
    if result.skips:
        return None
    plain = copy.copy(result)
    plain.model = None
    try:
        masked, _ = surgery.apply(copy.deepcopy(base), plain, shrink=False, example_inputs=x)
    except UserError:
        return None
    probe = torch.randn(4, *SHAPE, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        expected, got = masked.eval()(probe), pruned.eval()(probe)
    return float((got - expected).abs().max() / expected.abs().max().clamp(min=1e-12))


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The goal: every model Torch-Pruning prunes, every connprune structured method prunes too."""
    lines = []
    by_model: dict[str, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_model.setdefault(row["model"], {})[row["pruner"]] = row
    misses = []
    for model_name, found in by_model.items():
        reference = found.get("torch-pruning", {}).get("status") == "pruned"
        failed = [m for m in STRUCTURED if m in found and found[m]["status"] != "pruned"]
        if reference and failed:
            misses.append(f"{model_name} ({', '.join(sorted(failed))})")
        bad = [m for m, r in found.items() if r.get("masked_error") is not None and r["masked_error"] > 1e-5]
        if bad:
            lines.append(f"- NOT MET on {model_name}: shrunk differs from masked for {', '.join(bad)}")
    lines.insert(0, "- Goal met: every model Torch-Pruning prunes, every connprune structured method prunes too."
                 if not misses else f"- Goal not met on: {'; '.join(misses)}")
    tp_fails = [m for m, found in by_model.items() if found.get("torch-pruning", {}).get("status") != "pruned"]
    ours_more = [m for m in tp_fails if any(r["status"] == "pruned" for p, r in by_model[m].items()
                                             if p in STRUCTURED)]
    if tp_fails:
        lines.append(f"- Torch-Pruning fails on {', '.join(tp_fails)}; connprune's structured methods prune "
                     f"{', '.join(ours_more) or 'none of them'}.")
    errors = {m: sorted(p for p, r in found.items() if p != "torch-pruning" and r["status"] == "error")
              for m, found in by_model.items()}
    if any(errors.values()):  # failures that are not refusals with a reason: the work left
        lines.append("- connprune methods that fail with an error (not a refusal naming the cause): "
                     + "; ".join(f"{m} ({', '.join(p)})" for m, p in errors.items() if p)
                     + " — see the why column (token and channels-last layouts, Torch-Pruning's own reshape "
                     "mapping on ShuffleNetV2).")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(ARCHITECTURES) + list(ZOO))
    parser.add_argument("--methods", nargs="*", default=None,
                        help="default: torch-pruning and every registered method")
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--fresh", action="store_true", help="redo the selected runs already in the results JSON")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    path = args.out / "model_coverage.json"
    pruners = args.methods or ["torch-pruning", *methods.names()]
    done = {} if not path.exists() else {(r["model"], r["pruner"]): r for r in json.loads(path.read_text())["rows"]}
    if args.fresh:  # redo the selected runs, keep the others
        done = {key: row for key, row in done.items() if not (key[0] in args.models and key[1] in pruners)}
    train = images(args.data_dir)
    for model_name in args.models:
        for pruner in pruners:
            if (model_name, pruner) in done:
                continue
            row = torch_pruning_row(model_name) if pruner == "torch-pruning" else \
                connprune_row(model_name, pruner, train)
            done[(model_name, pruner)] = row
            print({k: row[k] for k in ("model", "pruner", "status", "seconds")}, row.get("why") or "", flush=True)
            save_results(path, {"benchmark": "model_coverage", "machine": machine(), "rows": list(done.values())})
    rows = list(done.values())
    columns = ["model", "pruner", "status", "params_before", "params_after", "macs_before", "macs_after",
               "achieved_sparsity", "masked_error", "seconds", "why"]
    print_table("model coverage at sparsity 0.5", rows, columns)
    lines = verdicts(rows)
    print("\n".join(lines))
    save_text(args.out / "model_coverage.md", "\n\n".join([
        "# Model coverage: connprune's methods and Torch-Pruning on models written outside the zoo",
        __doc__.split("\n\n")[1], "## Verdict", "\n".join(lines), "## Every run",
        markdown_table(rows, columns)]) + "\n")


if __name__ == "__main__":
    main()
