"""K-FAC factors and spectral radius against exact curvature (kfac_pruning.md §7, properties 1-9)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from connprune.measure import curvature
from connprune.measure.curvature import KFAC, collect_factors, kronecker_top_eigenvalue, top_eigenpair


def _psd(n: int, generator: torch.Generator) -> torch.Tensor:
    m = torch.randn(n, n, generator=generator, dtype=torch.float64)
    return m @ m.T + 0.1 * torch.eye(n, dtype=torch.float64)


def _mlp(sizes: list[int], scale: float = 1.0, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        layers.append(nn.Linear(fan_in, fan_out))
        if index < len(sizes) - 2:
            layers.append(nn.ReLU())
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    return model


def test_kronecker_identity() -> None:
    """§7.1: λmax(A)·λmax(G) = λmax(A ⊗ G) for PSD A, G."""
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):
        a, g = _psd(5, generator), _psd(4, generator)
        exact = torch.linalg.eigvalsh(torch.kron(a, g))[-1].item()
        assert abs(kronecker_top_eigenvalue(a, g) - exact) <= 1e-10 * exact


def test_power_iteration_matches_eigh() -> None:
    """Large factors use warm-started power iteration: it converges to eigh's top eigenvalue."""
    generator = torch.Generator().manual_seed(1)
    a = _psd(40, generator)
    exact, vector = top_eigenpair(a)
    value, _ = top_eigenpair(a, eigh_max_dim=10, power_iterations=500)
    assert abs(value - exact) <= 1e-8 * exact
    warm, _ = top_eigenpair(a, previous=vector, eigh_max_dim=10, power_iterations=1)
    assert abs(warm - exact) <= 1e-10 * exact


def _hessian_top(model: nn.Module, x: torch.Tensor, loss) -> float:
    params = {k: v.detach() for k, v in model.named_parameters()}
    sizes = [v.numel() for v in params.values()]

    def flat_loss(flat: torch.Tensor) -> torch.Tensor:
        chunks = dict(zip(params, (c.view(v.shape) for c, v in zip(flat.split(sizes), params.values()))))
        return loss(torch.func.functional_call(model, chunks, (x,)))

    point = torch.cat([v.reshape(-1) for v in params.values()])
    return torch.linalg.eigvalsh(torch.func.hessian(flat_loss)(point))[-1].item()


def test_exact_case_mse() -> None:
    """§7.2: one Linear layer, ½ mean ‖Wx + b − t‖²: K-FAC (G = I) equals the exact Hessian's top eigenvalue."""
    generator = torch.Generator().manual_seed(2)
    model = _mlp([5, 3], seed=2)
    x = torch.randn(64, 5, generator=generator, dtype=torch.float64) * 2 + 0.5
    t = torch.randn(64, 3, generator=generator, dtype=torch.float64)
    kfac = collect_factors(model, [(x, t)], fisher="exact", loss="mse")
    assert torch.allclose(kfac.layers["0"].g, torch.eye(3, dtype=torch.float64), atol=1e-12)
    exact = _hessian_top(model, x, lambda z: 0.5 * (z - t).pow(2).sum(1).mean())
    assert abs(kfac.spectral_radius() - exact) <= 1e-6 * exact
    assert abs(curvature.top_hessian_eigenvalue(model, x, t, kind="hessian", loss="mse") - exact) <= 1e-6 * exact


def test_exact_case_cross_entropy_at_zero_weights() -> None:
    """§7.3: W = 0, b = 0: Hessian = A ⊗ (I − 11ᵀ/C)/C, K-FAC (exact G) = λmax(A)/C = exact top eigenvalue."""
    generator = torch.Generator().manual_seed(3)
    classes = 4
    model = _mlp([6, classes], scale=0.0)
    x = torch.randn(50, 6, generator=generator, dtype=torch.float64) + 1.0
    y = torch.randint(0, classes, (50,), generator=generator)
    kfac = collect_factors(model, [(x, y)], fisher="exact")
    a_top = top_eigenpair(kfac.layers["0"].a)[0]
    assert abs(kfac.spectral_radius() - a_top / classes) <= 1e-9 * a_top
    exact = _hessian_top(model, x, lambda z: F.cross_entropy(z, y))
    assert abs(kfac.spectral_radius() - exact) <= 1e-6 * exact


def test_block_bounds_and_lanczos() -> None:
    """§7.4: max_l λmax(M_l) ≤ λmax(GGN) ≤ Σ_l λmax(M_l); Lanczos on GGN-vector products equals the dense GGN."""
    generator = torch.Generator().manual_seed(4)
    model = _mlp([5, 7, 6, 3], scale=1.5, seed=4)
    x = torch.randn(40, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=generator)
    ggn = curvature.dense_ggn(model, x, y)
    top = torch.linalg.eigvalsh(ggn)[-1].item()
    blocks, offset = [], 0
    for layer in ("0", "2", "4"):
        size = sum(p.numel() for n, p in model.named_parameters() if n.startswith(f"{layer}."))
        blocks.append(torch.linalg.eigvalsh(ggn[offset:offset + size, offset:offset + size])[-1].item())
        offset += size
    assert max(blocks) <= top + 1e-10 and top <= sum(blocks) + 1e-10
    assert abs(curvature.top_hessian_eigenvalue(model, x, y, kind="ggn", steps=200) - top) <= 1e-8 * top


def test_kfac_close_to_exact_ggn_on_relu_mlps() -> None:
    """§7.5: 6-10-4 ReLU MLP, N = 256, exact-expectation G: K-FAC max-block estimate / exact λmax(GGN) ∈ [0.5, 1.5]."""
    for seed, scale in ((0, 0.5), (1, 1.5), (2, 4.0)):
        generator = torch.Generator().manual_seed(seed)
        model = _mlp([6, 10, 4], scale=scale, seed=seed)
        x = torch.randn(256, 6, generator=generator, dtype=torch.float64)
        y = torch.randint(0, 4, (256,), generator=generator)
        estimate = collect_factors(model, [(x, y)], fisher="exact").spectral_radius("max")
        exact = curvature.top_hessian_eigenvalue(model, x, y, kind="ggn", steps=100)
        assert 0.5 <= estimate / exact <= 1.5, (seed, estimate, exact)


def test_mc_fisher_converges_to_exact() -> None:
    """§7.6: the MC-sampled G averaged over 2,000 draws is within 5 % (Frobenius) of the exact-expectation G."""
    generator = torch.Generator().manual_seed(5)
    model = _mlp([4, 5, 3], scale=1.0, seed=5)
    x = torch.randn(8, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=generator)
    exact = collect_factors(model, [(x, y)], fisher="exact")
    sampled = KFAC(model, ema=None, fisher="mc", seed=5)
    logits = model(x)
    g_sum = {name: torch.zeros_like(state.g) for name, state in exact.layers.items()}
    draws = 2000
    for _ in range(draws):
        for name, (_, g_hat) in sampled.batch_factors(logits, y).items():
            g_sum[name] += g_hat
    sampled.close()
    for name, state in exact.layers.items():
        error = (g_sum[name] / draws - state.g).norm() / state.g.norm()
        assert error < 0.05, (name, error)


def test_factors_do_not_depend_on_batch_size() -> None:
    """§7.7: A and G are the same (1e-6) when the same data are fed in batches of 8 or 64."""
    generator = torch.Generator().manual_seed(6)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4)).double()
    x = torch.randn(64, 2, 4, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 4, (64,), generator=generator)
    for fisher in ("exact", "empirical"):
        small = collect_factors(model, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)], fisher=fisher)
        large = collect_factors(model, [(x, y)], fisher=fisher)
        for name in small.layers:
            for which in ("a", "g"):
                assert torch.allclose(getattr(small.layers[name], which), getattr(large.layers[name], which),
                                      rtol=1e-6, atol=1e-12)


def test_conv_reduces_to_linear() -> None:
    """§7.8: a 1×1 conv on 1×1 inputs has the same A and G as the equivalent Linear."""
    generator = torch.Generator().manual_seed(7)
    linear = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    conv = nn.Sequential(nn.Conv2d(5, 6, 1), nn.Tanh(), nn.Conv2d(6, 3, 1), nn.Flatten()).double()
    with torch.no_grad():
        for lin, cv in ((linear[0], conv[0]), (linear[2], conv[2])):
            cv.weight.copy_(lin.weight.view_as(cv.weight))
            cv.bias.copy_(lin.bias)
    x = torch.randn(32, 5, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (32,), generator=generator)
    from_linear = collect_factors(linear, [(x, y)], fisher="exact")
    from_conv = collect_factors(conv, [(x.view(32, 5, 1, 1), y)], fisher="exact")
    for lin_name, conv_name in (("0", "0"), ("2", "2")):
        for which in ("a", "g"):
            assert torch.allclose(getattr(from_linear.layers[lin_name], which),
                                  getattr(from_conv.layers[conv_name], which), atol=1e-12)


def test_conv_factors_match_explicit_patches() -> None:
    """KFC convention (Grosse & Martens 2016): A = patch second moment over N·T, G sums positions, divides by N."""
    generator = torch.Generator().manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, stride=2, padding=1), nn.Flatten(), nn.Linear(3 * 16, 2)).double()
    x = torch.randn(5, 2, 8, 8, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 2, (5,), generator=generator)
    kfac = collect_factors(model, [(x, y)], layers=["0"], fisher="empirical")
    padded = F.pad(x, (1, 1, 1, 1))
    rows, grads = [], []
    for n in range(5):
        for i in range(4):
            for j in range(4):
                rows.append(torch.cat([padded[n, :, 2 * i:2 * i + 3, 2 * j:2 * j + 3].reshape(-1), torch.ones(1)]))
    a = torch.stack(rows).T @ torch.stack(rows) / (5 * 16)
    assert torch.allclose(kfac.layers["0"].a, a, atol=1e-12)
    out = model[0](x).detach().requires_grad_(True)
    loss = F.cross_entropy(model[2](model[1](out)), y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, out)
    for n in range(5):
        grads.append(grad[n].reshape(3, -1).T)
    g = sum(m.T @ m for m in grads) / 5
    assert torch.allclose(kfac.layers["0"].g, g, atol=1e-12)


def test_eigen_gradient_matches_finite_differences() -> None:
    """§7.9: with u fixed, ∇ mean((uᵀã)²) equals the directional derivative of λmax(A(θ)) (finite differences)."""
    generator = torch.Generator().manual_seed(9)
    model = _mlp([4, 6, 3], scale=1.0, seed=9)
    x = torch.randn(100, 4, generator=generator, dtype=torch.float64)
    first, second = model[0], model[2]

    def a_of_second() -> torch.Tensor:
        hidden = torch.relu(first(x))
        rows = curvature.expand_inputs(second, hidden)
        return rows.T @ rows / rows.shape[0]

    value, vector = top_eigenpair(a_of_second().detach())
    hidden = torch.relu(first(x))
    energy = curvature.input_projection_energy(second, hidden, vector)
    assert abs(energy.item() - value) <= 1e-10 * value
    (grad,) = torch.autograd.grad(energy, first.weight)
    direction = torch.randn(first.weight.shape, generator=generator, dtype=torch.float64)
    step = 1e-6
    with torch.no_grad():
        first.weight.add_(step * direction)
        plus = torch.linalg.eigvalsh(a_of_second())[-1].item()
        first.weight.sub_(2 * step * direction)
        minus = torch.linalg.eigvalsh(a_of_second())[-1].item()
        first.weight.add_(step * direction)
    numeric = (plus - minus) / (2 * step)
    analytic = (grad * direction).sum().item()
    assert abs(analytic - numeric) <= 1e-4 * abs(numeric)


def test_full_penalty_gradient_of_g_term() -> None:
    """g_mode='full': the G-side surrogate is differentiable (double backprop) and equals λmax(Ĝ) on the batch."""
    generator = torch.Generator().manual_seed(10)
    model = _mlp([4, 6, 3], scale=1.0, seed=10)
    x = torch.randn(30, 4, generator=generator, dtype=torch.float64)
    y = torch.randint(0, 3, (30,), generator=generator)
    kfac = KFAC(model, ema=None, fisher="exact")
    logits = model(x)
    kfac.update(logits, y)
    kfac.refresh_eigen()
    name = kfac.penalty_layers("max")[0]
    state = kfac.layers[name]
    full = kfac.penalty("max", "full", logits, y)
    a_only = kfac.penalty("max", "A_only", logits, y)
    # on the batch the factors came from, each surrogate equals its eigenvalue: full = 2·λA·λG, A_only = λA·λG
    assert abs(a_only.item() - state.rho) <= 1e-9 * state.rho
    assert abs(full.item() - 2 * state.rho) <= 1e-9 * state.rho
    grads = torch.autograd.grad(full, [model[0].weight])
    assert grads[0].abs().sum() > 0
    kfac.close()
