"""Shared pieces of the R2-G2 benchmarks: data, gradient variance, step timing, training curves.

Timings are taken under whatever load the machine has: each configuration is timed in interleaved
rounds and the median per-step time is reported, as a ratio to plain reparameterisation in the same
run.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.infer import SVI

HERE = Path(__file__).parent


def digits(seed: int = 0, test_size: int = 397):
    """sklearn's bundled 8x8 digits, scaled to [0, 1], split into train and test sets."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.asarray(data.data, np.float32) / 16.0
    y = np.asarray(data.target, np.int32)
    perm = np.random.default_rng(seed).permutation(len(y))
    test, train = perm[:test_size], perm[test_size:]
    return x[train], y[train], x[test], y[test]


def minibatches(rng: np.random.Generator, n: int, batch_size: int):
    perm = rng.permutation(n)
    for i in range(n // batch_size):
        yield perm[i * batch_size : (i + 1) * batch_size]


def gradient_variance(
    svi: SVI, state, args: tuple, num_keys: int, key: jax.Array
) -> dict[str, float]:
    """Total variance (trace of the covariance) of the gradient of each parameter over keys, at
    fixed parameters and data."""
    params = svi.get_params(state)
    loss = lambda k, p: svi.loss.loss(k, p, svi.model, svi.guide, *args)
    grads = jax.jit(jax.vmap(lambda k: jax.grad(lambda p: loss(k, p))(params)))(
        jax.random.split(key, num_keys)
    )
    return {name: float(jnp.sum(jnp.var(g, axis=0))) for name, g in grads.items()}


def step_times(updates: dict[str, Callable], states: dict, args: tuple, rounds: int, steps: int):
    """Median seconds per step of each jitted update, timed in interleaved rounds."""
    for name, update in updates.items():  # compile outside the timings
        jax.block_until_ready(update(states[name], *args))
    times = {name: [] for name in updates}
    for _ in range(rounds):
        for name, update in updates.items():
            state = states[name]
            start = time.perf_counter()
            for _ in range(steps):
                state, loss = update(state, *args)
            jax.block_until_ready(loss)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: float(np.median(t)) for name, t in times.items()}


def adam(lr: float = 1e-2):
    return optax.adam(lr)


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1))


def mean_and_error(curves: list[list[float]]) -> tuple[np.ndarray, np.ndarray]:
    """Mean over seeds and its standard error."""
    a = np.asarray(curves, dtype=np.float64)
    se = a.std(axis=0, ddof=1) / np.sqrt(a.shape[0]) if a.shape[0] > 1 else np.zeros(a.shape[1])
    return a.mean(axis=0), se


def plot_curves(
    path: Path, x, curves: dict[str, list[list[float]]], xlabel: str, ylabel: str, title: str
):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, runs in curves.items():
        mean, se = mean_and_error(runs)
        ax.errorbar(x, mean, yerr=se, label=name, capsize=3, marker="o", markersize=3)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_variance(path: Path, epochs, variances: dict[str, dict[str, list[float]]], title: str):
    """variances[layer][estimator] = per-epoch values; one panel per layer, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers = list(variances)
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 3), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        for name, values in variances[layer].items():
            ax.plot(epochs, values, marker="o", markersize=3, label=name)
        ax.set_yscale("log")
        ax.set_title(layer)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("gradient variance (trace)")
    axes[0][-1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
