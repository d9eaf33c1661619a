"""Kronecker-factored curvature (K-FAC) of Linear and Conv2d layers, its spectral radius, and exact oracles.

K-FAC (Martens & Grosse, "Optimizing Neural Networks with Kronecker-factored Approximate Curvature", ICML 2015,
§3, Eq. 1-3) approximates the Fisher / Gauss-Newton block of layer l by a Kronecker product

    F_l ≈ A_{l-1} ⊗ G_l,   A_{l-1} = E[ã ãᵀ],   G_l = E[g gᵀ],

where ã is the layer's input with a trailing 1 for the bias and g = ∂ℓ(ŷ)/∂s the gradient of the per-sample loss at
a target ŷ with respect to the layer's pre-activation s. Convolutions follow Grosse & Martens ("A Kronecker-factored
approximate Fisher matrix for convolution layers", ICML 2016, KFC, Eq. 16-17 under the "spatially uncorrelated
derivatives" approximation): ã ranges over the unfolded input patches of every output position t,

    A = 1/(N·T) Σ_n Σ_t ã_{n,t} ã_{n,t}ᵀ,   G = 1/N Σ_n Σ_t g_{n,t} g_{n,t}ᵀ.

Three choices of the backpropagated vector (``fisher``), all expressed as a vector ``v_n`` at the network output z
that is backpropagated to every layer's pre-activation (so g_n = B_nᵀ v_n with B_n = ∂z/∂s):

- ``mc`` (Martens & Grosse §5): one target ŷ ~ p(y|x) per sample, v = ∇_z ℓ(ŷ) (CE: p − e_ŷ; MSE: ε ~ N(0, I));
  unbiased for the Fisher: E[v vᵀ] = Λ = ∂²ℓ/∂z².
- ``empirical``: the true targets (CE: p − e_y; MSE: z − t).
- ``exact``: the expectation itself, one backward per class with v_c = √p_c (p − e_c) (CE) or e_c (MSE), so that
  Σ_c v_c v_cᵀ = Λ exactly.

Spectral radius (docs/methods/kfac.md §2, [math]): for PSD A and G the eigenvalues of A ⊗ G are the products
λ_i(A)λ_j(G), so ρ(A ⊗ G) = λmax(A)·λmax(G). The network estimate ``max_l`` (a lower bound of the block-diagonal
matrix's radius, up to the K-FAC factorisation error) or ``sum_l`` (an upper bound) is *reconstructed* (not confirmed
from Ebrahimi & Klabjan, arXiv 2111.08577), as is its differentiable surrogate: with the top eigenvectors u (of A)
and w (of G) held fixed, first-order eigenvalue perturbation gives dλmax(A) = uᵀ dA u, so

    λmax(A) ≈ mean_{n,t} (uᵀ ã_{n,t})²   and   λmax(G) ≈ 1/B Σ_{n,t} (wᵀ g_{n,t})²

are batch estimates whose gradients are those of the eigenvalues (the second needs double backprop).

Oracles for tests and diagnostics: :func:`top_hessian_eigenvalue` runs Lanczos on exact Hessian- or
Gauss-Newton-vector products computed with ``torch.func`` (no matrix is formed); :func:`dense_ggn` builds the GGN
matrix of a small model explicitly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, jacrev, jvp, vjp

from connprune.errors import UserError

FisherType = Literal["mc", "empirical", "exact"]
LossType = Literal["ce", "mse"]
Reduce = Literal["max", "sum"]
GMode = Literal["A_only", "full"]
_LAYERS = (nn.Linear, nn.Conv2d)


# ---------------------------------------------------------------------------------------------- per-layer expansion


def expand_inputs(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """Rows ã (one per sample, or per sample and output position for convs), with a trailing 1 if the layer has a
    bias: shape (N·T, d_in [+1]). Convs use the KFC patch expansion (Grosse & Martens 2016, Eq. 16)."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1:
            raise UserError(f"K-FAC factors are implemented for groups=1 convolutions; {module} has groups="
                            f"{module.groups} (exclude it from the collected layers)")
        if module.padding_mode != "zeros":
            inputs = F.pad(inputs, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            padding = 0
        else:
            padding = module.padding
        patches = F.unfold(inputs, module.kernel_size, dilation=module.dilation, padding=padding,
                           stride=module.stride)  # (N, C·kh·kw, T)
        rows = patches.transpose(1, 2).reshape(-1, patches.shape[1])
    else:
        rows = inputs.reshape(-1, inputs.shape[-1])
    if module.bias is not None:
        rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
    return rows


def expand_output_grads(module: nn.Module, grads: torch.Tensor) -> torch.Tensor:
    """Rows g (per sample, and per output position for convs): shape (N·T, d_out)."""
    if isinstance(module, nn.Conv2d):
        return grads.transpose(1, -1).reshape(-1, grads.shape[1])
    return grads.reshape(-1, grads.shape[-1])


def is_grouped_conv(module: nn.Module) -> bool:
    """A conv with groups > 1 (depthwise, grouped): its factors are not the Kronecker form implemented here."""
    return isinstance(module, nn.Conv2d) and module.groups != 1


def positions(module: nn.Module, output: torch.Tensor) -> int:
    """T: output positions per sample (H·W for a conv; the product of middle dims for a Linear, usually 1)."""
    if isinstance(module, nn.Conv2d):
        return output.shape[2] * output.shape[3]
    return math.prod(output.shape[1:-1])


# ------------------------------------------------------------------------------------------- backpropagated vectors


def output_vectors(logits: torch.Tensor, targets: torch.Tensor | None, fisher: FisherType, loss: LossType = "ce",
                   generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """The vectors v_n at the network output to backpropagate (see the module docstring); each (N, C).

    ``mc`` and ``empirical`` give one vector per sample, ``exact`` one per class (Σ_c v_c v_cᵀ = Λ_n exactly).
    """
    z = logits.detach()
    if loss == "ce":
        probs = torch.softmax(z.float(), dim=1).to(z.dtype)
        if fisher == "exact":
            eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
            return [probs[:, c:c + 1].sqrt() * (probs - eye[c]) for c in range(z.shape[1])]
        if fisher == "mc":
            sampled = torch.multinomial(probs.float().cpu(), 1, generator=generator).view(-1).to(z.device)
        else:
            if targets is None:
                raise UserError("the empirical Fisher needs the true labels; pass targets")
            sampled = targets
        return [probs - F.one_hot(sampled, z.shape[1]).to(z.dtype)]
    if loss == "mse":
        if fisher == "exact":
            eye = torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
            return [eye[c].expand_as(z) for c in range(z.shape[1])]
        if fisher == "mc":
            noise = torch.randn(z.shape, generator=generator, dtype=z.dtype).to(z.device)
            return [noise]
        if targets is None:
            raise UserError("the empirical Fisher needs the targets; pass targets")
        return [z - targets]
    raise UserError(f"loss {loss!r} is not supported by K-FAC here; use 'ce' or 'mse'")


# ------------------------------------------------------------------------------------------------------ eigenpairs


def top_eigenpair(matrix: torch.Tensor, previous: torch.Tensor | None = None, eigh_max_dim: int = 2048,
                  power_iterations: int = 20) -> tuple[float, torch.Tensor]:
    """Largest eigenvalue and unit eigenvector of a symmetric PSD ``matrix``.

    ``torch.linalg.eigh`` up to ``eigh_max_dim``; above it, ``power_iterations`` steps of power iteration started
    from ``previous`` (warm start: the factors change slowly between refreshes, docs/methods/kfac.md §3 step 3.3;
    without one, 5 × ``power_iterations`` from the all-ones vector).
    """
    dim = matrix.shape[0]
    if not torch.isfinite(matrix).all():
        raise UserError("a K-FAC factor has non-finite entries: training diverged (lower the learning rate or β)")
    if dim <= eigh_max_dim:
        try:
            values, vectors = torch.linalg.eigh(matrix)
        except torch.linalg.LinAlgError:  # float32 eigh can fail on rank-deficient factors: retry in float64
            values, vectors = torch.linalg.eigh(matrix.double())
            values, vectors = values.to(matrix.dtype), vectors.to(matrix.dtype)
        return float(values[-1].clamp_min(0.0)), vectors[:, -1].contiguous()
    iterations = power_iterations
    if previous is None or previous.shape[0] != dim or not torch.isfinite(previous).all() or previous.norm() == 0:
        previous = torch.ones(dim, dtype=matrix.dtype, device=matrix.device) / math.sqrt(dim)
        iterations = 5 * power_iterations  # a cold start needs more steps than a warm one
    vector = previous / previous.norm()
    for _ in range(iterations):
        product = matrix @ vector
        norm = product.norm()
        if norm == 0:
            return 0.0, vector
        vector = product / norm
    return float((vector @ matrix @ vector).clamp_min(0.0)), vector


def kronecker_top_eigenvalue(a: torch.Tensor, g: torch.Tensor) -> float:
    """ρ(A ⊗ G) = λmax(A)·λmax(G) for symmetric PSD A, G (docs/methods/kfac.md §2, [math])."""
    return top_eigenpair(a)[0] * top_eigenpair(g)[0]


# ------------------------------------------------------------------------------------------------------- collector


@dataclass
class LayerFactors:
    """The K-FAC state of one layer: factors, how much data they average, and the cached top eigenpairs."""

    module: nn.Module
    a: torch.Tensor | None = None
    g: torch.Tensor | None = None
    samples: int = 0
    """Samples averaged so far (running-mean mode) or updates made (EMA mode)."""
    eig_a: float = 0.0
    eig_g: float = 0.0
    vec_a: torch.Tensor | None = None
    vec_g: torch.Tensor | None = None
    keep_in: torch.Tensor | None = None
    """Rows/columns of A to keep (False: inputs read from pruned neurons), or None for all."""
    keep_out: torch.Tensor | None = None
    """Rows/columns of G to keep (False: pruned outputs), or None for all."""
    inputs: torch.Tensor | None = field(default=None, repr=False)
    output: torch.Tensor | None = field(default=None, repr=False)

    @property
    def rho(self) -> float:
        """λmax(A)·λmax(G) from the last :meth:`KFAC.refresh_eigen`."""
        return self.eig_a * self.eig_g


class KFAC:
    """Collect K-FAC factors of every Linear/Conv2d (or of ``layers``) of ``model`` through forward hooks.

    Usage inside a training step::

        kfac = KFAC(model, ema=0.95, fisher="mc")
        logits = model(x)                              # hooks cache each layer's input and output
        kfac.update(logits, y)                         # one extra backward (C for 'exact'), graph kept
        kfac.refresh_eigen()                           # every T_eig steps
        loss = F.cross_entropy(logits, y) + beta * kfac.penalty()

    ``ema=None`` averages every sample seen with equal weight (then the factors do not depend on the batch size);
    otherwise each update is ``F ← ema·F + (1 − ema)·F̂`` with F̂ the batch estimate (the first update sets F = F̂).
    The hooks only cache while :attr:`recording` is True; call :meth:`close` to remove them.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None, *, ema: float | None = 0.95,
                 fisher: FisherType = "mc", loss: LossType = "ce", eigh_max_dim: int = 2048,
                 power_iterations: int = 20, seed: int = 0) -> None:
        if ema is not None and not 0.0 <= ema < 1.0:
            raise UserError(f"K-FAC ema must be in [0, 1) (or None for a running mean), got {ema}")
        if fisher not in ("mc", "empirical", "exact"):
            raise UserError(f"fisher must be 'mc', 'empirical' or 'exact', got {fisher!r}")
        modules = dict(model.named_modules())
        names = list(layers) if layers is not None else [n for n, m in modules.items() if isinstance(m, _LAYERS)]
        for name in names:
            if name not in modules or not isinstance(modules[name], _LAYERS):
                raise UserError(f"K-FAC layer {name!r} is not a Linear or Conv2d of the model; layers: "
                                f"{[n for n, m in modules.items() if isinstance(m, _LAYERS)]}")
        self.model = model
        self.ema, self.fisher, self.loss = ema, fisher, loss
        self.eigh_max_dim, self.power_iterations = eigh_max_dim, power_iterations
        self.generator = torch.Generator().manual_seed(seed)
        self.layers: dict[str, LayerFactors] = {n: LayerFactors(modules[n]) for n in names}
        self.recording = True
        self._handles = [self.layers[n].module.register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            if self.recording:
                self.layers[name].inputs = inputs[0]
                self.layers[name].output = output
        return hook

    def close(self) -> None:
        """Remove the hooks and drop the cached tensors."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.clear_cache()

    def clear_cache(self) -> None:
        for state in self.layers.values():
            state.inputs = state.output = None

    # -- statistics ------------------------------------------------------------------------------------------
    def batch_factors(self, logits: torch.Tensor, targets: torch.Tensor | None = None, *,
                      create_graph: bool = False) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """(Â, Ĝ) of the last forward for every layer (Martens & Grosse 2015 Eq. 3; KFC Eq. 16-17 for convs).

        Keeps the autograd graph (``retain_graph``) so the training loss can still be backpropagated."""
        states = [s for s in self.layers.values() if s.output is not None]
        if len(states) != len(self.layers):
            missing = [n for n, s in self.layers.items() if s.output is None]
            raise UserError(f"K-FAC has no cached forward for layers {missing}: run the model forward first "
                            "(with kfac.recording = True)")
        n = logits.shape[0]
        g_sums: list[torch.Tensor | None] = [None] * len(states)
        for vector in output_vectors(logits, targets, self.fisher, self.loss, self.generator):
            # Σ_n v_nᵀ z_n backpropagates each sample's own vector: per-sample gradients, no batch-size rescaling.
            grads = list(torch.autograd.grad(logits, [s.output for s in states], grad_outputs=vector,
                                             retain_graph=True, create_graph=create_graph, allow_unused=True))
            for index, (state, grad) in enumerate(zip(states, grads)):
                if grad is None:
                    grad = torch.zeros_like(state.output)
                rows = expand_output_grads(state.module, grad)
                term = rows.T @ rows
                g_sums[index] = term if g_sums[index] is None else g_sums[index] + term
        result = {}
        for name, state, g_sum in zip(self.layers, states, g_sums):
            rows = expand_inputs(state.module, state.inputs.detach())
            result[name] = (rows.T @ rows / rows.shape[0], g_sum.detach() / n)
        return result

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor | None = None) -> None:
        """Fold the last forward's batch factors into the running factors (EMA or running mean)."""
        with torch.enable_grad():
            factors = self.batch_factors(logits, targets)
        n = logits.shape[0]
        for name, (a_hat, g_hat) in factors.items():
            state = self.layers[name]
            if state.a is None or state.a.shape != a_hat.shape or state.g.shape != g_hat.shape:
                state.a, state.g, state.samples = a_hat.clone(), g_hat.clone(), 0
            elif self.ema is None:
                weight = n / (state.samples + n)
                state.a.lerp_(a_hat, weight)
                state.g.lerp_(g_hat, weight)
            else:
                state.a.mul_(self.ema).add_(a_hat, alpha=1.0 - self.ema)
                state.g.mul_(self.ema).add_(g_hat, alpha=1.0 - self.ema)
            state.samples += n if self.ema is None else 1
            _zero_pruned(state)

    def set_keep(self, name: str, keep_in: torch.Tensor | None = None, keep_out: torch.Tensor | None = None) -> None:
        """Mark pruned inputs/outputs of layer ``name``: their rows and columns of A / G are zeroed now and after
        every update (docs/methods/kfac.md §3 step 3.2). ``keep_in`` includes the bias entry when the layer has one."""
        state = self.layers[name]
        state.keep_in, state.keep_out = keep_in, keep_out
        _zero_pruned(state)

    def refresh_eigen(self) -> None:
        """Top eigenpairs of every A and G (eigh for small factors, warm-started power iteration for large)."""
        for state in self.layers.values():
            if state.a is None:
                continue
            state.eig_a, state.vec_a = top_eigenpair(state.a, state.vec_a, self.eigh_max_dim, self.power_iterations)
            state.eig_g, state.vec_g = top_eigenpair(state.g, state.vec_g, self.eigh_max_dim, self.power_iterations)

    # -- spectral radius -------------------------------------------------------------------------------------
    def layer_radii(self) -> dict[str, float]:
        """λmax(A_{l-1})·λmax(G_l) per layer from the last :meth:`refresh_eigen`."""
        return {name: state.rho for name, state in self.layers.items()}

    def spectral_radius(self, reduce: Reduce = "max") -> float:
        """ρ̂ = max_l (or Σ_l) λmax(A_{l-1})·λmax(G_l) (reconstructed network estimate, docs/methods/kfac.md §2)."""
        radii = list(self.layer_radii().values())
        if not radii:
            return 0.0
        return max(radii) if reduce == "max" else sum(radii)

    def penalty_layers(self, reduce: Reduce = "max") -> list[str]:
        """The layers the penalty acts on: the arg-max layer (``max``) or all with statistics (``sum``)."""
        radii = {n: r for n, r in self.layer_radii().items() if self.layers[n].vec_a is not None}
        if not radii:
            return []
        if reduce == "max":
            return [max(radii, key=radii.__getitem__)]
        return list(radii)

    def penalty(self, reduce: Reduce = "max", g_mode: GMode = "A_only", logits: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> torch.Tensor:
        """Differentiable surrogate of ρ̂ on the last forward (module docstring; docs/methods/kfac.md §2):
        ``λG·mean((uᵀã)²)`` per layer, plus ``λA·(1/B)Σ(wᵀg)²`` with ``g_mode='full'`` (double backprop; needs
        ``logits``). Zero until :meth:`refresh_eigen` has run."""
        names = self.penalty_layers(reduce)
        energies: dict[str, torch.Tensor] = {}
        if g_mode == "full" and names:
            if logits is None:
                raise UserError("g_mode='full' needs the logits of the forward pass to backpropagate through")
            states = [self.layers[n] for n in names]
            for vector in output_vectors(logits, targets, self.fisher, self.loss, self.generator):
                outs = torch.autograd.grad(logits, [s.output for s in states], grad_outputs=vector,
                                           retain_graph=True, create_graph=True, allow_unused=True)
                for name, state, out in zip(names, states, outs):
                    if out is None:
                        continue
                    rows = expand_output_grads(state.module, out)
                    energy = (rows @ state.vec_g.to(rows.dtype)).pow(2).sum() / logits.shape[0]
                    energies[name] = energies[name] + energy if name in energies else energy
        elif g_mode != "A_only":
            raise UserError(f"g_mode must be 'A_only' or 'full', got {g_mode!r}")
        total: torch.Tensor | None = None
        for name in names:
            state = self.layers[name]
            term = state.eig_g * input_projection_energy(state.module, state.inputs, state.vec_a)
            if name in energies:
                term = term + state.eig_a * energies[name]
            total = term if total is None else total + term
        if total is None:
            parameter = next(self.model.parameters())
            return parameter.new_zeros(())
        return total


def input_projection_energy(module: nn.Module, inputs: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """mean_{n,t} (uᵀ ã_{n,t})²: the batch estimate of uᵀAu, differentiable through ``inputs``.

    For a conv, uᵀã over all patches is itself a one-filter convolution (no unfolding needed)."""
    vector = vector.to(inputs.dtype)
    has_bias = module.bias is not None
    weight, bias = (vector[:-1], vector[-1:]) if has_bias else (vector, None)
    if isinstance(module, nn.Conv2d):
        kernel = weight.view(1, module.in_channels, *module.kernel_size)
        if module.padding_mode != "zeros":
            padded = F.pad(inputs, module._reversed_padding_repeated_twice, mode=module.padding_mode)
            projected = F.conv2d(padded, kernel, bias, module.stride, 0, module.dilation)
        else:
            projected = F.conv2d(inputs, kernel, bias, module.stride, module.padding, module.dilation)
    else:
        projected = inputs @ weight + (bias if bias is not None else 0.0)
    return projected.pow(2).mean()


def _zero_pruned(state: LayerFactors) -> None:
    for factor, keep in ((state.a, state.keep_in), (state.g, state.keep_out)):
        if factor is not None and keep is not None:
            drop = ~keep.to(factor.device)
            factor[drop, :] = 0.0
            factor[:, drop] = 0.0


def collect_factors(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], *,
                    layers: Iterable[str] | None = None, fisher: FisherType = "exact", loss: LossType = "ce",
                    seed: int = 0) -> KFAC:
    """K-FAC factors averaged over all of ``batches`` (running mean, no EMA), eigenpairs refreshed; hooks removed.

    The model's mode (train/eval) is left as it is."""
    kfac = KFAC(model, layers, ema=None, fisher=fisher, loss=loss, seed=seed)
    try:
        for x, y in batches:
            logits = model(x)
            kfac.update(logits, y)
        kfac.refresh_eigen()
    finally:
        kfac.close()
    return kfac


# ------------------------------------------------------------------------------------------------ exact oracles


def _loss_value(logits: torch.Tensor, targets: torch.Tensor, loss: LossType) -> torch.Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, targets)
    return 0.5 * (logits - targets).pow(2).sum(1).mean()


def _loss_hessian_product(logits: torch.Tensor, vector: torch.Tensor, loss: LossType) -> torch.Tensor:
    """Λ v for the batch-mean loss (Λ = (diag(p) − ppᵀ)/N for CE, I/N for ½‖z − t‖²)."""
    n = logits.shape[0]
    if loss == "mse":
        return vector / n
    probs = torch.softmax(logits, dim=1)
    return (probs * vector - probs * (probs * vector).sum(1, keepdim=True)) / n


def curvature_product(model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: Literal["hessian", "ggn"] = "ggn",
                      loss: LossType = "ce", parameters: Iterable[str] | None = None
                      ) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """A function v ↦ M v for the exact Hessian or Gauss-Newton matrix M of the batch-mean loss over
    ``parameters`` (default: all), flattened in ``named_parameters`` order; and the dimension of M.

    Hessian: forward-over-reverse ``jvp(grad)``; GGN: ``Jᵀ Λ J v`` (Schraudolph 2002) with ``jvp`` and ``vjp``.
    Buffers (BN statistics) are read as they are; call on a model in eval mode for a deterministic operator."""
    named = dict(model.named_parameters())
    names = list(parameters) if parameters is not None else list(named)
    fixed = {k: v.detach() for k, v in named.items() if k not in names}
    buffers = dict(model.named_buffers())
    shapes = [named[k].shape for k in names]
    sizes = [named[k].numel() for k in names]
    dimension = sum(sizes)

    def unflatten(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: t.view(s) for k, t, s in zip(names, flat.split(sizes), shapes)}

    point = torch.cat([named[k].detach().reshape(-1) for k in names])

    def outputs(flat: torch.Tensor) -> torch.Tensor:
        return functional_call(model, {**fixed, **unflatten(flat), **buffers}, (x,))

    if kind == "hessian":
        def gradient(flat: torch.Tensor) -> torch.Tensor:
            return torch.func.grad(lambda p: _loss_value(outputs(p), y, loss))(flat)

        def product(vector: torch.Tensor) -> torch.Tensor:
            return jvp(gradient, (point,), (vector,))[1]
    elif kind == "ggn":
        def product(vector: torch.Tensor) -> torch.Tensor:
            logits, jv = jvp(outputs, (point,), (vector,))
            _, pullback = vjp(outputs, point)
            return pullback(_loss_hessian_product(logits.detach(), jv, loss))[0]
    else:
        raise UserError(f"kind must be 'hessian' or 'ggn', got {kind!r}")
    return product, dimension


def lanczos_top_eigenvalue(product: Callable[[torch.Tensor], torch.Tensor], dimension: int, *, steps: int = 60,
                           dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu",
                           seed: int = 0) -> float:
    """Largest (algebraic) eigenvalue of a symmetric operator by Lanczos with full re-orthogonalisation
    (Golub & Van Loan, Matrix Computations, Alg. 10.1.1); exact once ``steps`` ≥ ``dimension``."""
    steps = min(steps, dimension)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randn(dimension, generator=generator, dtype=dtype).to(device)
    basis = [start / start.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    for index in range(steps):
        w = product(basis[index]).to(dtype)
        alpha = float(w @ basis[index])
        alphas.append(alpha)
        stacked = torch.stack(basis)
        w = w - stacked.T @ (stacked @ w)
        w = w - stacked.T @ (stacked @ w)  # twice is enough (Giraud et al. 2005)
        beta = float(w.norm())
        if index == steps - 1 or beta < 1e-10 * max(1.0, abs(alpha)):
            break
        betas.append(beta)
        basis.append(w / beta)
    tridiagonal = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas[: len(alphas) - 1], dtype=torch.float64)
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    return float(torch.linalg.eigvalsh(tridiagonal)[-1])


def top_hessian_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                           kind: Literal["hessian", "ggn"] = "ggn", loss: LossType = "ce", steps: int = 60,
                           parameters: Iterable[str] | None = None, seed: int = 0) -> float:
    """Top eigenvalue of the exact Hessian or GGN of the mean loss on (x, y), by Lanczos on matrix-free products.

    The diagnostic of docs/methods/kfac.md §3 step 7 for small models (each step costs about two backward passes)."""
    product, dimension = curvature_product(model, x, y, kind, loss, parameters)
    dtype = next(model.parameters()).dtype
    return lanczos_top_eigenvalue(lambda v: product(v.to(dtype)), dimension, steps=steps, device=x.device,
                                  seed=seed)


def dense_ggn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: LossType = "ce",
              parameters: Iterable[str] | None = None) -> torch.Tensor:
    """The GGN matrix (1/N) Σ_n J_nᵀ Λ_n J_n of a small model, formed explicitly (test oracle)."""
    named = dict(model.named_parameters())
    names = list(parameters) if parameters is not None else list(named)
    fixed = {k: v.detach() for k, v in named.items() if k not in names}
    buffers = dict(model.named_buffers())
    point = {k: named[k].detach() for k in names}
    jacobians = jacrev(lambda p: functional_call(model, {**fixed, **p, **buffers}, (x,)))(point)
    n, classes = x.shape[0], None
    flat = torch.cat([jacobians[k].reshape(n, -1, named[k].numel()) for k in names], dim=2)  # (N, C, P)
    classes = flat.shape[1]
    logits = functional_call(model, {**fixed, **point, **buffers}, (x,)).detach()
    if loss == "ce":
        probs = torch.softmax(logits, 1)
        lam = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
    else:
        lam = torch.eye(classes, dtype=logits.dtype).expand(n, classes, classes)
    return torch.einsum("ncp,ncd,ndq->pq", flat, lam, flat) / n
