"""Markdown tables from the JSON that bench_bnn.py and bench_vae.py write to measured/.

Usage: python benchmarks/r2g2/report.py
"""

from __future__ import annotations

import json

import numpy as np
from common import HERE


def fmt(x: float) -> str:
    return f"{x:.3g}"


def bnn_tables(name: str) -> None:
    path = HERE / "measured" / f"{name}.json"
    if not path.exists():
        return
    r = json.loads(path.read_text())
    names = list(r["step_time_s"])
    print(f"### {name.upper()}  (args: {r['args']})\n")
    print("| estimator | step time (ms) | ratio to rt |\n|---|---|---|")
    for e in names:
        t = r["step_time_s"][e]
        print(f"| {e} | {1e3 * t:.2f} | {t / r['step_time_s']['rt']:.2f} |")
    print()
    for p in ("loc", "rho"):
        print(f"Gradient variance of the weight {p} parameters, ratio to rt, by epoch:\n")
        epochs = len(next(iter(r["variances"].values()))[f"rt {p}"])
        print("| layer | estimator | " + " | ".join(f"ep {i}" for i in range(epochs)) + " |")
        print("|---|---|" + "---|" * epochs)
        for site, per in r["variances"].items():
            base = np.asarray(per[f"rt {p}"])
            print(f"| {site} | rt (absolute) | " + " | ".join(fmt(x) for x in base) + " |")
            for e in names[1:]:
                ratio = np.asarray(per[f"{e} {p}"]) / base
                print(f"| {site} | {e} | " + " | ".join(fmt(x) for x in ratio) + " |")
        print()
    print("Test log-likelihood per point (mean ± s.e. over seeds), by epoch:\n")
    curves = r["test_log_lik"]
    epochs = len(next(iter(curves.values()))[0])
    print("| estimator | " + " | ".join(f"ep {i}" for i in range(epochs)) + " |")
    print("|---|" + "---|" * epochs)
    for e, runs in curves.items():
        a = np.asarray(runs)
        se = a.std(axis=0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])
        print(
            f"| {e} | "
            + " | ".join(f"{m:.3f} ± {s:.3f}" for m, s in zip(a.mean(0), se, strict=True))
            + " |"
        )
    print()


def vae_tables() -> None:
    path = HERE / "measured" / "vae.json"
    if not path.exists():
        return
    r = json.loads(path.read_text())
    print(f"### VAE  (args: {r['args']})\n")
    print("| layers | rt step (ms) | r2g2 step (ms) | ratio |\n|---|---|---|---|")
    for layers, res in r["results"].items():
        t = res["step_time_s"]
        print(
            f"| {layers} | {1e3 * t['rt']:.2f} | {1e3 * t['r2g2']:.2f} | {t['r2g2'] / t['rt']:.2f} |"
        )
    print()
    for layers, res in r["results"].items():
        print(f"{layers}-layer VAE, gradient variance r2g2 / rt by epoch:\n")
        epochs = len(next(iter(res["variances"].values()))["rt"])
        print("| group | " + " | ".join(f"ep {i}" for i in range(epochs)) + " |")
        print("|---|" + "---|" * epochs)
        for group, per in res["variances"].items():
            ratio = np.asarray(per["r2g2"]) / np.asarray(per["rt"])
            print(f"| {group} | " + " | ".join(fmt(x) for x in ratio) + " |")
        print()
        print(f"{layers}-layer VAE, test negative ELBO per point (mean ± s.e.), by epoch:\n")
        curves = res["test_neg_elbo"]
        epochs = len(next(iter(curves.values()))[0])
        print("| estimator | " + " | ".join(f"ep {i}" for i in range(epochs)) + " |")
        print("|---|" + "---|" * epochs)
        for e, runs in curves.items():
            a = np.asarray(runs)
            se = a.std(axis=0, ddof=1) / np.sqrt(len(a)) if len(a) > 1 else np.zeros(a.shape[1])
            print(
                f"| {e} | "
                + " | ".join(f"{m:.2f} ± {s:.2f}" for m, s in zip(a.mean(0), se, strict=True))
                + " |"
            )
        print()


if __name__ == "__main__":
    bnn_tables("mlp")
    bnn_tables("cnn")
    vae_tables()
