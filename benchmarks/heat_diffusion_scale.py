"""Time and memory of N2NSkip's heat-diffusion distance F (Subramaniam & Sharma, BMVC 2020, Sec. 3.2, Eq. 3–7) on the
unit graphs of the MLP 3072-512-256-128-64-10, VGG-19 and ResNet-50 (CIFAR input, 3×32×32), sparse vs dense.

For each network: the dense reference's unit graph and a pruned one (random, element-wise per layer, at
``--sparsity``); then the steps of ``connprune eval --connectivity``:

- ``spectrum``: all Laplacian eigenvalues of the reference (for the scree α(K, t), Eq. 7, the scree time t* and
  the settling time t_sat = ln(10⁶)/λ₂) — exactly, through the twin-class quotient (``heat.laplacian_spectrum``),
  vs a dense ``eigh`` of the n×n Laplacian where n ≤ ``--dense-max-n``;
- ``S(t_sat)`` of both graphs (t_sat is where ``eval --connectivity`` reports F): Lanczos and
  ``scipy.sparse.linalg.expm_multiply`` (expm_multiply's cost grows with t·‖L‖₁: skipped above ``--expm-max-tl``),
  vs the dense ``U exp(−Λt) Uᵀ A`` where n is small;
- ``F`` = ‖S_ref − S_prune‖₂ and the total wall time of the sparse path (goal: VGG-19 under a minute on 2 cores).

Peak memory per step is Python's ``tracemalloc`` peak (numpy/scipy allocations). Run:
``python benchmarks/heat_diffusion_scale.py [--models mlp vgg19 resnet50] [--threads 1]``.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any, Callable

import numpy as np
import scipy.linalg
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, markdown_table, print_table, save_results, save_text  # noqa: E402

from connprune import models  # noqa: E402
from connprune.measure import heat, importance  # noqa: E402
from connprune.measure.sparsity import prunable_weights  # noqa: E402

NETWORKS: dict[str, tuple[str, dict[str, Any]]] = {
    "mlp": ("mlp", {"widths": [512, 256, 128, 64]}),
    "vgg19": ("vgg19", {}),
    "resnet50": ("resnet50", {"small_input": True}),
}


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``'s result, wall seconds and tracemalloc peak in MiB."""
    tracemalloc.start()
    started = time.perf_counter()
    try:
        value = fn()
    finally:
        seconds = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()
    return value, seconds, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["mlp", "vgg19", "resnet50"], choices=sorted(NETWORKS))
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--dense-max-n", type=int, default=4100, help="largest n for the dense eigh comparison")
    parser.add_argument("--expm-max-tl", type=float, default=5e3,
                        help="largest t_sat * ||L||_1 for the expm_multiply timing (its cost grows linearly with it)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for key in args.models:
        arch, config = NETWORKS[key]
        torch.manual_seed(0)
        model = models.create(arch, num_classes=10, in_channels=3, input_size=32, **config)
        masks = importance.keep_top(importance.random_scores(prunable_weights(model), 0), args.sparsity, "layer")
        shape = (3, 32, 32)
        total_started = time.perf_counter()
        (reference, pruned), build_s, build_mb = measured(
            lambda: (heat.unit_graph(model, shape), heat.unit_graph(model, shape, masks=masks)))
        classes = int(heat.twin_classes(reference.adjacency).max()) + 1
        spectrum, spectrum_s, spectrum_mb = measured(reference.eigenvalues)
        (t_star, t), saturation_s, _ = measured(lambda: (heat.saturation_time(reference),
                                                         heat.settling_time(reference)))
        (s_ref, s_pruned), lanczos_s, lanczos_mb = measured(
            lambda: (heat.heat_signature(reference, t, "lanczos"), heat.heat_signature(pruned, t, "lanczos")))
        norm = max(float(abs(g.laplacian()).sum(axis=0).max()) for g in (reference, pruned))
        f_value = float(np.linalg.norm(s_ref - s_pruned))
        total_s = time.perf_counter() - total_started
        row: dict[str, Any] = {
            "network": key, "n": reference.n, "nnz_ref": reference.adjacency.nnz, "nnz_pruned": pruned.adjacency.nnz,
            "twin_classes": classes, "t_star": t_star, "t_sat": t, "t_norm_L": round(t * norm),
            "F": f_value, "build_s": round(build_s, 2),
            "spectrum_twin_s": round(spectrum_s, 2), "spectrum_twin_mb": round(spectrum_mb, 1),
            "saturation_s": round(saturation_s, 2), "lanczos_s": round(lanczos_s, 2),
            "lanczos_mb": round(lanczos_mb, 1), "sparse_total_s": round(total_s, 2), "build_mb": round(build_mb, 1),
        }
        if t * norm <= args.expm_max_tl:
            (e_ref, e_pruned), expm_s, expm_mb = measured(
                lambda: (heat.heat_signature(reference, t, "expm_multiply"),
                         heat.heat_signature(pruned, t, "expm_multiply")))
            row.update(expm_s=round(expm_s, 2), expm_mb=round(expm_mb, 1),
                       expm_vs_lanczos=float(max(np.abs(e_ref - s_ref).max(), np.abs(e_pruned - s_pruned).max())))
        else:
            row.update(expm_s=None, expm_mb=None, expm_vs_lanczos=None)
        if reference.n <= args.dense_max_n:
            def dense() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                values = scipy.linalg.eigh(reference.laplacian().toarray(), eigvals_only=True)
                p_values, p_vectors = scipy.linalg.eigh(pruned.laplacian().toarray())
                p_sig = p_vectors @ (np.exp(-t * np.clip(p_values, 0, None)) * (p_vectors.T @ pruned.sources))
                return values, p_values, p_sig
            (d_values, _, d_sig), dense_s, dense_mb = measured(dense)
            row.update(dense_eigh_s=round(dense_s, 2), dense_eigh_mb=round(dense_mb, 1),
                       spectrum_twin_vs_dense=float(np.abs(np.clip(d_values, 0, None) - spectrum).max()),
                       lanczos_vs_dense=float(np.abs(d_sig - s_pruned).max()))
        else:
            row.update(dense_eigh_s=None, dense_eigh_mb=None, spectrum_twin_vs_dense=None, lanczos_vs_dense=None)
        rows.append(row)
        print(row, flush=True)
    columns = ["network", "n", "nnz_ref", "nnz_pruned", "twin_classes", "t_star", "t_sat", "t_norm_L", "F",
               "spectrum_twin_s",
               "lanczos_s", "expm_s", "dense_eigh_s", "sparse_total_s", "lanczos_mb", "dense_eigh_mb",
               "spectrum_twin_vs_dense", "lanczos_vs_dense", "expm_vs_lanczos"]
    print_table(f"Heat-diffusion F at t_sat (random {args.sparsity:.0%} sparse vs dense reference)", rows, columns)
    settings = {"threads": args.threads, "sparsity": args.sparsity, "input": "3x32x32 (CIFAR)",
                "pruning": "random, element-wise, per layer", "adjacency": "binary",
                "resnet50": "small_input stem (3x3, no max-pool), as used on CIFAR",
                "dense_max_n": args.dense_max_n, "expm_max_tl": args.expm_max_tl,
                "note": "sparse_total_s = both unit graphs + exact reference spectrum + t* and t_sat + both signatures "
                        "(Lanczos); memory = tracemalloc peak of numpy/scipy allocations per step"}
    args.out.mkdir(parents=True, exist_ok=True)
    save_results(args.out / "heat_diffusion_scale.json", {"benchmark": "heat_diffusion_scale", "machine": machine(),
                                                            "settings": settings, "rows": rows})
    save_text(args.out / "heat_diffusion_scale.md",
              "# Heat-diffusion distance F: time and memory (N2NSkip Sec. 3.2)\n\n"
              f"Settings: {settings}\n\n" + markdown_table(rows, columns) + "\n")


if __name__ == "__main__":
    main()
