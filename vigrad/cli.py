"""The ``vigrad`` command: fit zoo models (or a user's file) and report the posterior.

vigrad fit eight_schools --objective dreg --particles 8 --steps 3000
vigrad fit my_model.py --out results/mine
vigrad models

JAX, NumPyro and ArviZ are imported inside the commands that use them, so ``--help`` and
``vigrad models`` answer at once.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import shlex
import shutil
import sys
import textwrap
import time
import warnings
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from vigrad.errors import VigradError
from vigrad.registry import ESTIMATORS, KERNELS, OBJECTIVES

# The objectives of vigrad.registry.OBJECTIVES that a zoo file's model and guide serve as they are,
# with --estimator applying: the hierarchical ones (iwhvi, diwhvi) need a model paired with a
# reverse model, and rws (wake="score") draws every site its own way.
OBJECTIVE_NAMES = ("elbo", "iwelbo", "vimco", "renyi", "dreg")
MAX_PRINTED_ELEMENTS = 24  # larger sites are summarised in summary.csv only


def make_estimator(name: str):
    """The estimator named ``name`` in :data:`vigrad.registry.ESTIMATORS`."""
    if name not in ESTIMATORS:
        close = difflib.get_close_matches(name, [*ESTIMATORS, *ESTIMATORS.aliases], n=2)
        hint = f" Did you mean {' or '.join(close)}?" if close else ""
        raise VigradError(
            f"Unknown estimator '{name}'.{hint} Choose one of: {ESTIMATORS.describe('; ')}."
        )
    return ESTIMATORS.build(name)


def parse_estimators(pairs: Sequence[str]) -> dict:
    out = {}
    for pair in pairs:
        site, sep, name = pair.partition("=")
        if not sep or not site or not name:
            raise VigradError(f"--estimator takes SITE=NAME (e.g. tau=path), got '{pair}'.")
        out[site] = make_estimator(name)
    return out


def make_objective(name: str, num_particles: int, estimators: dict, alpha: float):
    """The objective named ``name`` in :data:`vigrad.registry.OBJECTIVES`."""
    options = {"alpha": alpha} if name == "renyi" else {}
    return OBJECTIVES.build(name, num_particles=num_particles, estimators=estimators, **options)


def _full_data(fn, zm, data):
    """``fn`` with the zoo model's data plate (if it subsamples) set to every index."""
    import jax.numpy as jnp
    from numpyro.handlers import substitute

    from vigrad.traces import trace_program

    if not zm.data_plate:
        return fn
    plates = trace_program(zm.model, kwargs=data).plates
    if zm.data_plate not in plates:
        return fn
    return substitute(fn, data={zm.data_plate: jnp.arange(plates[zm.data_plate]["args"][0])})


def _print_summary(summary, posterior: dict) -> None:
    """The summary table, without sites too large to read (they stay in summary.csv)."""
    large = [k for k, v in posterior.items() if v[0].size > MAX_PRINTED_ELEMENTS]
    shown = summary.drop(index=[i for i in summary.index if i.split("[")[0] in large])
    if len(shown):
        print(shown.to_string())
    if large:
        print(
            f"(in summary.csv only, more than {MAX_PRINTED_ELEMENTS} elements each: "
            f"{', '.join(large)})"
        )


def _reference_table(reference: dict, draws: dict) -> list[str]:
    import numpy as np

    lines = [
        "",
        f"Against the reference posterior ({reference['method']}):",
        f"  {'site':<14}{'max |mean error| / sd':>24}{'sd ratio (range)':>22}",
    ]
    for name, ref in reference["sites"].items():
        if name not in draws:
            continue
        x = np.asarray(draws[name]).reshape(np.asarray(draws[name]).shape[0], -1)
        ref_mean, ref_sd = np.asarray(ref["mean"]), np.asarray(ref["sd"])
        err = np.max(np.abs(x.mean(0) - ref_mean) / ref_sd)
        ratio = x.std(0, ddof=1) / ref_sd
        lines.append(f"  {name:<14}{err:>24.2f}{f'{ratio.min():.2f}..{ratio.max():.2f}':>22}")
    return lines


def _plots(out: Path, losses, draws: dict, reference: dict | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(1, len(losses) + 1), losses, lw=0.6)
    lo, hi = np.percentile(losses, [1, 99.5]) if len(losses) > 20 else (None, None)
    if lo is not None:
        ax.set_ylim(lo - 0.05 * abs(hi - lo), hi)
    ax.set(xlabel="step", ylabel="loss (negative objective)", title="Loss trace")
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=120)
    plt.close(fig)

    from vigrad.diagnostics.posterior_plots import plot_posterior

    plot_posterior(draws, out / "posterior.png", reference=reference, label="guide draws")


def cmd_fit(args: argparse.Namespace) -> int:
    import arviz as az
    import jax
    import numpy as np
    import optax

    import vigrad
    from vigrad.diagnostics import psis_summary, to_inference_data
    from vigrad.zoo import load_model

    zm = load_model(args.model)
    suggested = dict(zm.estimators)
    if args.objective in ("iwelbo", "vimco", "renyi"):
        # The zoo's sticking-the-landing suggestions hold for the ELBO and DReG only: these
        # objectives are not linear in log q, so those sites fall back to reparameterisation.
        dropped = sorted(n for n, e in suggested.items() if isinstance(e, vigrad.PathGradient))
        if dropped:
            print(
                f"note: {args.objective} is not linear in log q, so the model's suggested "
                f"PathGradient on {dropped} is replaced by Reparam (use --objective dreg for "
                "path gradients in an importance-weighted bound)"
            )
        suggested = {
            n: vigrad.Reparam() if isinstance(e, vigrad.PathGradient) else e
            for n, e in suggested.items()
        }
    estimators = {**suggested, **parse_estimators(args.estimator)}
    num_particles = zm.num_particles if args.particles is None else args.particles
    if args.objective != "elbo" and args.particles is None:
        num_particles = max(num_particles, 8)
    objective = make_objective(args.objective, num_particles, estimators, args.alpha)
    steps = zm.steps if args.steps is None else args.steps
    lr = zm.learning_rate if args.lr is None else args.lr
    data = dict(zm.load_data())

    print(f"vigrad fit {zm.name}: {zm.description}")
    chosen = ", ".join(f"{k}={type(v).__name__}" for k, v in estimators.items()) or "none"
    print(
        f"objective {type(objective).__name__}(K={num_particles}), adam({lr:g}), {steps} steps; "
        f"estimators {chosen} (others: Reparam if reparameterisable, else Score)"
    )
    key = jax.random.key(args.seed)
    fit_key, draw_key = jax.random.split(key)
    t0 = time.perf_counter()
    result = vigrad.fit(
        zm.model,
        zm.guide,
        objective,
        optax.adam(lr),
        steps,
        fit_key,
        progress_bar=not args.no_progress,
        **data,
    )
    seconds = time.perf_counter() - t0
    losses = np.asarray(result.losses)
    tail = losses[-max(1, len(losses) // 10) :]
    print(
        f"fitted in {seconds:.1f} s (compile included); "
        f"loss over the last 10% of steps {tail.mean():.3f} +- {tail.std():.3f}"
    )
    if result.message:
        print(f"warning: {result.message}")

    with warnings.catch_warnings():
        # The data plate is evaluated on every index, not the subsample size it declares.
        warnings.filterwarnings("ignore", message="subsample_size does not match")
        idata = to_inference_data(
            result,
            model=_full_data(zm.model, zm, data),
            guide=_full_data(zm.guide, zm, data),
            kwargs=data,
            num_samples=args.draws,
            rng_key=draw_key,
            objective=objective,
        )
    # The independent guide draws, pooled over their pseudo-chains.
    posterior = {
        k: np.asarray(v).reshape(-1, *np.asarray(v).shape[2:])
        for k, v in idata.posterior.data_vars.items()
    }
    summary = az.summary(idata, var_names=list(posterior), kind="stats", hdi_prob=0.94)
    khat = float(idata.posterior.attrs["psis_khat"])
    site_khat = {
        k[len("psis_khat_site_") :]: v
        for k, v in idata.posterior.attrs.items()
        if k.startswith("psis_khat_site_")
    }
    print()
    print(f"Posterior summary ({args.draws} guide draws):")
    _print_summary(summary, posterior)
    print()
    reading = idata.posterior.attrs["psis_khat_message"]
    print(f"PSIS k-hat of the guide as an importance proposal: {khat:.2f} ({reading})")
    if site_khat:
        print("  per site: " + ", ".join(f"{k} {v:.2f}" for k, v in site_khat.items()))
    corrected = psis_summary(idata)
    if np.isfinite(corrected["psis_mean"]).all():
        print("\nPSIS-corrected means and sds (importance-reweighted guide draws), beside the raw:")
        _print_summary(corrected.round(3), posterior)
    if zm.reference:
        print("\n".join(_reference_table(zm.reference, posterior)))

    out = _clear_outputs(Path(args.out), FIT_OUTPUTS)
    summary.to_csv(out / "summary.csv")
    corrected.to_csv(out / "psis_summary.csv")
    idata.to_netcdf(str(out / "inference_data.nc"))
    np.save(out / "losses.npy", losses)
    record = {
        "model": zm.name,
        "objective": type(objective).__name__,
        "num_particles": num_particles,
        "estimators": {k: repr(v) for k, v in estimators.items()},
        "steps": int(result.num_steps),
        "learning_rate": lr,
        "seed": args.seed,
        "seconds": seconds,
        "final_loss": float(tail.mean()),
        "khat": khat,
        "params": {k: np.asarray(v).tolist() for k, v in result.params.items()},
    }
    (out / "result.json").write_text(json.dumps(record, indent=1) + "\n")
    if not args.no_plots:
        _plots(out, losses, posterior, zm.reference)
    print(
        f"\nwrote {out}/: summary.csv, psis_summary.csv, inference_data.nc, losses.npy, result.json"
        + ("" if args.no_plots else ", loss.png, posterior.png")
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import jax
    import optax

    import vigrad
    from vigrad.diagnostics import plot_comparison, select_estimators
    from vigrad.zoo import load_model

    zm = load_model(args.model)
    data = dict(zm.load_data())
    num_particles = zm.num_particles if args.particles is None else args.particles
    key = jax.random.key(args.seed)
    fit_key, compare_key = jax.random.split(key)
    params = None
    if args.warmup_steps > 0:
        # Compare where the fit spends its time: variances change as the guide moves.
        objective = vigrad.ELBO(num_particles=num_particles, estimators=zm.estimators)
        print(f"vigrad compare {zm.name}: warm-up fit of {args.warmup_steps} steps first")
        result = vigrad.fit(
            zm.model,
            zm.guide,
            objective,
            optax.adam(zm.learning_rate),
            args.warmup_steps,
            fit_key,
            progress_bar=not args.no_progress,
            **data,
        )
        params = result.params
    else:
        from vigrad.traces import trace_program, values

        params = values(trace_program(zm.guide, kwargs=data).params)
    selection = select_estimators(
        zm.model,
        zm.guide,
        params,
        num_particles=num_particles,
        num_samples=args.samples,
        rng_key=compare_key,
        **data,
    )
    print()
    print(selection.comparison)
    print()
    print(selection.report)
    out = _clear_outputs(Path(args.out), COMPARE_OUTPUTS)
    command = _fit_command(args, selection.estimators)
    (out / "comparison.txt").write_text(
        f"{selection.comparison}\n\n{selection.report}\n\n{command}\n"
    )
    if not args.no_plots:
        plot_comparison(selection.comparison, out / "comparison.png", title=zm.name)
    print(f"\nwrote {out}/: comparison.txt" + ("" if args.no_plots else ", comparison.png"))
    print(f"\nTo fit with the chosen estimators:\n{command}")
    return 0


def _fit_command(args: argparse.Namespace, chosen: dict) -> str:
    """The ``vigrad fit`` line that uses ``chosen`` (site -> estimator), ready to paste."""
    from vigrad.diagnostics.select import estimator_name

    # The CLI's names, keyed by the readable name the comparison gives each candidate.
    cli_name: dict[str, str] = {}
    for n in ESTIMATORS:
        cli_name.setdefault(estimator_name(make_estimator(n)), n)
    words = ["vigrad", "fit", args.model]
    if args.particles is not None:
        words += ["--particles", str(args.particles)]
    unnamed = []
    for site, estimator in chosen.items():
        name = estimator_name(estimator)
        if name in cli_name:
            words += ["--estimator", f"{site}={cli_name[name]}"]
        else:
            unnamed.append(f"{site}: {name}")
    line = " ".join(shlex.quote(w) for w in words)
    if unnamed:
        line += (
            "\n(no --estimator name for "
            + "; ".join(unnamed)
            + ": set them in the model file's ESTIMATORS)"
        )
    return line


def cmd_sample(args: argparse.Namespace) -> int:
    import arviz as az
    import jax
    import numpy as np

    from vigrad import sgmcmc
    from vigrad.zoo import load_model

    zm = load_model(args.model)
    if zm.data_plate is None:
        raise VigradError(
            f"{zm.name} declares no DATA_PLATE: stochastic-gradient MCMC draws minibatches from "
            "the plate over observations. Add DATA_PLATE = '<plate name>' to the model's file."
        )
    data = dict(zm.load_data())
    # A placeholder when the pilot below chooses the step size.
    step_size = 1e-4 if args.step_size is None else args.step_size
    kernel = KERNELS.build(args.kernel, step_size=step_size)
    select_key, sample_key = jax.random.split(jax.random.key(args.seed))
    if args.step_size is None:
        t0 = time.perf_counter()
        selection = sgmcmc.select_step_size(
            zm.model,
            kernel,
            args.batch_size,
            select_key,
            data_plate=zm.data_plate,
            **data,
        )
        kernel = selection.kernel
        print(f"{selection.message}; {time.perf_counter() - t0:.1f} s")
    print(
        f"vigrad sample {zm.name}: {type(kernel).__name__}(step_size={kernel.step_size:g}), "
        f"{args.chains} chains x {args.samples} steps after {args.warmup} warm-up, "
        f"batch {args.batch_size}, thinning {args.thinning}"
    )
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        # The convergence check is printed below, with the summary.
        warnings.simplefilter("ignore", sgmcmc.ConvergenceWarning)
        result = sgmcmc.sample(
            zm.model,
            kernel,
            args.samples,
            args.batch_size,
            args.chains,
            sample_key,
            num_warmup=args.warmup,
            thinning=args.thinning,
            progress_bar=not args.no_progress,
            data_plate=zm.data_plate,
            **data,
        )
    seconds = time.perf_counter() - t0
    print(f"sampled in {seconds:.1f} s (compile included)")
    idata = result.to_inference_data()
    posterior = {
        k: np.asarray(v).reshape(-1, *np.asarray(v).shape[2:])
        for k, v in idata.posterior.data_vars.items()
    }
    summary = az.summary(idata, hdi_prob=0.94)
    print()
    print(f"Posterior summary ({args.chains} chains; ESS and R-hat across chains):")
    _print_summary(summary, posterior)
    print()
    verdict = "" if result.convergence.ok else "WARNING: "
    print(f"Convergence (every element of every site): {verdict}{result.convergence.message}")
    if zm.reference:
        print("\n".join(_reference_table(zm.reference, posterior)))
    out = _clear_outputs(Path(args.out), SAMPLE_OUTPUTS)
    summary.to_csv(out / "summary.csv")
    idata.to_netcdf(str(out / "inference_data.nc"))
    if not args.no_plots:
        from vigrad.diagnostics.posterior_plots import plot_posterior, plot_trace

        plot_trace(result.samples, out / "trace.png")
        label = f"{type(kernel).__name__} draws"
        plot_posterior(posterior, out / "posterior.png", reference=zm.reference, label=label)
    print(
        f"\nwrote {out}/: summary.csv, inference_data.nc"
        + ("" if args.no_plots else ", trace.png, posterior.png")
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from vigrad.zoo import describe_model, list_models

    names = list_models()
    indent = max(map(len, names), default=0) + 2
    width = max(shutil.get_terminal_size().columns, indent + 40)
    for name in names:
        lines = textwrap.wrap(describe_model(name), width - indent) or [""]
        print(f"{name:<{indent}}{lines[0]}")
        for line in lines[1:]:
            print(" " * indent + line)
    return 0


def _version() -> str:
    try:
        return version("vigrad")
    except PackageNotFoundError:  # ``python -m vigrad`` from a source tree that was never installed
        return "(source tree, not installed)"


# What each command writes into its --out folder (plots included even with --no-plots, so that
# an earlier run's plots are never left beside new results).
FIT_OUTPUTS = (
    "summary.csv",
    "psis_summary.csv",
    "inference_data.nc",
    "losses.npy",
    "result.json",
    "loss.png",
    "posterior.png",
)
COMPARE_OUTPUTS = ("comparison.txt", "comparison.png")
SAMPLE_OUTPUTS = ("summary.csv", "inference_data.nc", "trace.png", "posterior.png")


def _check_outputs(out: Path, names: Sequence[str], overwrite: bool) -> None:
    """Refuse, before any work, to replace an earlier run's results unless asked to."""
    existing = [n for n in names if (out / n).exists()]
    if existing and not overwrite:
        raise VigradError(
            f"{out}/ already holds {', '.join(existing)} from an earlier run. Pass --overwrite "
            "to replace them, or choose another folder with --out."
        )


def _clear_outputs(out: Path, names: Sequence[str]) -> Path:
    """``out``, created, without the files this run writes (some, such as plots, are optional)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in names:
        (out / name).unlink(missing_ok=True)
    return out


def _number(kind: type, low: float, strict: bool = False) -> Callable[[str], float]:
    """An argparse type: a ``kind`` (int or float) at least ``low``, or above it if ``strict``.

    argparse prefixes the message with the option's name, e.g. ``argument --particles: must be an
    integer >= 1, got '0'``.
    """
    noun = "an integer" if kind is int else "a number"
    bound = f"> {low:g}" if strict else f">= {low:g}"

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got '{text}'") from None
        if not math.isfinite(value) or value < low or (strict and value == low):
            raise argparse.ArgumentTypeError(f"must be {noun} {bound}, got '{text}'")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"
    return parse


def _draws(text: str) -> int:
    value = _number(int, 4)(text)
    if value % 4:
        raise argparse.ArgumentTypeError(
            f"must be a multiple of 4 (the draws are split into 4 pseudo-chains for ArviZ), got "
            f"'{text}'; use {4 * max(1, round(value / 4))}"
        )
    return value


def _renyi_alpha(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number other than 1, got '{text}'") from None
    if not math.isfinite(value) or value == 1.0:
        raise argparse.ArgumentTypeError(
            f"must be a finite number other than 1 (alpha = 1 is the ELBO: use --objective elbo), "
            f"got '{text}'"
        )
    return value


POSITIVE_INT = _number(int, 1)
NONNEGATIVE_INT = _number(int, 0)
POSITIVE_FLOAT = _number(float, 0.0, strict=True)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option whose default is a value.

    Options without one (``None``: the model file decides; flags) say so in their own help.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        no_value = action.default is None or action.default is False or action.default == []
        if no_value or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _add_output_options(parser: argparse.ArgumentParser, default: str) -> None:
    parser.add_argument("--out", default=None, help=f"output folder (default: {default})")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier run in --out (without it, such a folder is "
        "refused before any work is done)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-plots", action="store_true", help="write no plots")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vigrad", description=__doc__.splitlines()[0], formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"vigrad {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, summary: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(
            name, help=summary, description=description or summary, formatter_class=_HelpFormatter
        )

    fit = add("fit", "fit a zoo model or a Python file's model and guide")
    fit.add_argument("model", help="zoo model name (see `vigrad models`) or path to a .py file")
    fit.add_argument(
        "--estimator",
        action="append",
        default=[],
        metavar="SITE=NAME",
        help=f"estimator for a guide site; NAME in {', '.join(ESTIMATORS)} (repeatable; "
        "default: the model's ESTIMATORS, else Reparam where the site can be reparameterised, "
        "else Score)",
    )
    fit.add_argument("--objective", default="elbo", choices=OBJECTIVE_NAMES, help="objective")
    fit.add_argument(
        "--alpha", type=_renyi_alpha, default=0.5, help="Renyi alpha (--objective renyi)"
    )
    fit.add_argument(
        "--particles",
        type=POSITIVE_INT,
        default=None,
        help="particles per step K (default: the model's NUM_PARTICLES; at least 8 for "
        "objectives other than elbo)",
    )
    fit.add_argument(
        "--steps", type=POSITIVE_INT, default=None, help="steps (default: the model's STEPS)"
    )
    fit.add_argument(
        "--lr",
        type=POSITIVE_FLOAT,
        default=None,
        help="Adam learning rate (default: the model's LEARNING_RATE)",
    )
    fit.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="random seed")
    fit.add_argument(
        "--draws",
        type=_draws,
        default=2000,
        help="guide draws for the summary (a multiple of 4)",
    )
    _add_output_options(fit, "results/MODEL")
    fit.set_defaults(run=cmd_fit, outputs=FIT_OUTPUTS)

    compare = add(
        "compare",
        "measure each candidate estimator per guide site and pick the best",
        "Measure each candidate estimator per guide site, pick the one with the lowest "
        "variance x time, and print the `vigrad fit` command that uses the choices.",
    )
    compare.add_argument("model", help="zoo model name or path to a .py file")
    compare.add_argument(
        "--particles",
        type=POSITIVE_INT,
        default=None,
        help="particles per estimate (default: the model's NUM_PARTICLES)",
    )
    compare.add_argument(
        "--samples", type=_number(int, 2), default=256, help="gradient estimates per candidate"
    )
    compare.add_argument(
        "--warmup-steps",
        type=NONNEGATIVE_INT,
        default=300,
        help="fit steps before measuring (0: the initial guide)",
    )
    compare.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="random seed")
    _add_output_options(compare, "results/MODEL")
    compare.set_defaults(run=cmd_compare, outputs=COMPARE_OUTPUTS)

    smp = add("sample", "stochastic-gradient MCMC on a zoo model")
    smp.add_argument("model", help="zoo model name or path to a .py file (needs DATA_PLATE)")
    smp.add_argument("--kernel", default="sgld", choices=list(KERNELS), help="SG-MCMC kernel")
    smp.add_argument(
        "--step-size",
        type=POSITIVE_FLOAT,
        default=None,
        help="epsilon in theta += eps/2 grad + N(0, eps) (default: chosen by a pilot run, "
        "the smallest kernel Stein discrepancy over 1e-8..1)",
    )
    smp.add_argument(
        "--samples", type=POSITIVE_INT, default=5000, help="steps per chain after warm-up"
    )
    smp.add_argument("--warmup", type=NONNEGATIVE_INT, default=1000, help="warm-up steps")
    smp.add_argument(
        "--batch-size", type=POSITIVE_INT, default=64, help="observations per gradient"
    )
    smp.add_argument("--chains", type=POSITIVE_INT, default=4, help="independent chains")
    smp.add_argument(
        "--thinning", type=POSITIVE_INT, default=5, help="keep every n-th step (at most --samples)"
    )
    smp.add_argument("--seed", type=NONNEGATIVE_INT, default=0, help="random seed")
    _add_output_options(smp, "results/MODEL/KERNEL")
    smp.set_defaults(run=cmd_sample, outputs=SAMPLE_OUTPUTS)

    models = add("models", "list the zoo models")
    models.set_defaults(run=cmd_models, outputs=())
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "sample" and args.thinning > args.samples:
        parser.error(
            f"argument --thinning: must be at most --samples ({args.samples}), got "
            f"{args.thinning}: no draw would be kept"
        )
    if getattr(args, "out", "") is None:
        default = Path("results") / Path(args.model).stem
        args.out = str(default / args.kernel if args.command == "sample" else default)
    try:
        if args.outputs:
            _check_outputs(Path(args.out), args.outputs, args.overwrite)
        return args.run(args)
    except VigradError as err:
        print(f"vigrad: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
