"""Every estimator x every built-in objective: each cell is either unbiased (the z-test against an
exact gradient by enumeration or quadrature) or refused before compilation with an error naming
the site and the objective. Refused cells run with the check disabled must fail the same z-test
where a statistical test can show their bias (the negative controls).

Refusals are cheap (nothing is compiled) and run by default; the z-tests of the accepted cells
compile one vectorised gradient each and run under ``-m slow``. The hierarchical objectives (HVI,
IWHVI, DIWHVI) have their own matrix in test_hvi.py.
"""

import itertools

import jax
import jax.numpy as jnp
import pytest
from test_objectives_unbiased import (
    CONT,
    DISC,
    X,
    Y,
    cont_guide,
    cont_model,
    disc_configs,
    disc_guide,
    disc_model,
    exact_by_enumeration,
    exact_by_quadrature,
    exact_rws_loss_gradient,
)
from unbiased import THRESHOLD, gradient_samples, max_abs_z

import vigrad
from vigrad.objectives.renyi import renyi_bound

M = 20_000
K = 2
stop = jax.lax.stop_gradient

OBJECTIVES = {
    "elbo": lambda est: vigrad.ELBO(K, estimators=est),
    "iwelbo": lambda est: vigrad.IWELBO(K, estimators=est),
    "vimco": lambda est: vigrad.VIMCO(K, estimators=est),
    "renyi": lambda est: vigrad.RenyiELBO(0.5, K, estimators=est),
    "dreg": lambda est: vigrad.DReG(K, estimators=est),
    "rws-score": lambda est: vigrad.RWS(K, wake="score", estimators=est),
    "rws-dreg": lambda est: vigrad.RWS(K, wake="dreg", estimators=est),
}
LOG_WEIGHT_FN = {
    "elbo": jnp.mean,
    "iwelbo": vigrad.log_mean_exp,
    "vimco": vigrad.log_mean_exp,
    "renyi": lambda lw: renyi_bound(lw, 0.5),
    "dreg": vigrad.log_mean_exp,
}
DISCRETE = {
    "score": vigrad.Score,
    "score-loo": lambda: vigrad.Score(vigrad.LeaveOneOut()),
    "score-moving-average": lambda: vigrad.Score(vigrad.MovingAverage(0.9)),
    "enumerate": vigrad.Enumerate,
    "mvd": vigrad.MVD,
}
CONTINUOUS = {"reparam": vigrad.Reparam, "path": vigrad.PathGradient, "score": vigrad.Score}
NONLINEAR = ("iwelbo", "vimco", "renyi")
DOUBLY = ("dreg", "rws-dreg")

# Why each refused cell is refused (the error's pattern).
REFUSED = {
    **{(o, "path"): r"PathGradient.*'mu'.*not linear.*DReG" for o in NONLINEAR},
    **{(o, "score-loo"): r"'k'.*per-particle signals.*VIMCO" for o in NONLINEAR},
    **{(o, "mvd"): r"MVD.*'k'.*biased" for o in NONLINEAR},
    **{
        (o, e): r"site '[kz]'.*(own gradient surrogate|doubly reparameterised.*PathGradient)"
        for o in DOUBLY
        for e in DISCRETE
    },
    **{(o, "reparam"): r"'mu'.*doubly reparameterised.*PathGradient" for o in DOUBLY},
    **{(o, "score"): r"site '(mu|k)'.*own gradient surrogate" for o in DOUBLY},
}
# Enumerate on the discrete model would need its two sites summed out together, which parallel
# enumeration does not do: refused by every objective that does not fix its samples
# (test_enumerate.py shows Enumerate, and its refusal in non-linear objectives, on suitable models).
for o in OBJECTIVES:
    REFUSED[(o, "enumerate")] = r"Enumerate\(\) on site '[kz]'.*also depends on"
REFUSED[("rws-score", "enumerate")] = None  # wake-phase samples are fixed: estimators unused


def cells():
    for o in OBJECTIVES:
        for e in DISCRETE:
            yield o, "discrete", e
        for e in CONTINUOUS:
            yield o, "continuous", e


def make(objective, kind, estimator):
    if kind == "discrete":
        make_est = DISCRETE[estimator]
        return OBJECTIVES[objective]({"k": make_est(), "z": make_est()})
    return OBJECTIVES[objective]({"mu": CONTINUOUS[estimator]()})


def loss_fn(obj, kind):
    if kind == "discrete":
        return lambda key, p: obj.loss(key, p, disc_model, disc_guide, Y)
    return lambda key, p: obj.loss(key, p, cont_model, cont_guide, X)


def exact_rws_discrete():
    """Loss gradient of the wake phases at fixed samples: -E[sum_k w~_k grad log q(z_k)]."""
    lq, lw = disc_configs(DISC)
    idx = jnp.array(list(itertools.product(range(6), repeat=K)))
    weights = jnp.exp(jnp.sum(lq[idx], axis=1))
    w = jax.nn.softmax(lw[idx], axis=1)
    expected = lambda p: jnp.sum(weights[:, None] * w * disc_configs(p)[0][idx])
    return jax.tree.map(jnp.negative, jax.grad(expected)(DISC))


def exact(objective, kind):
    if objective.startswith("rws"):
        return exact_rws_discrete() if kind == "discrete" else exact_rws_loss_gradient()
    fn = LOG_WEIGHT_FN[objective]
    if kind == "discrete":
        return jax.grad(exact_by_enumeration(fn, K))(DISC)
    return jax.grad(exact_by_quadrature(fn))(CONT)


def refusal(objective, kind, estimator):
    pattern = REFUSED.get((objective, estimator))
    if kind == "continuous" and estimator not in CONTINUOUS:
        return None
    if kind == "discrete" and estimator == "path":
        return None
    if (objective, estimator) in (("dreg", "path"), ("rws-dreg", "path")) and kind == "discrete":
        return None
    if estimator in ("reparam",) and kind == "discrete":
        return None
    if (objective, estimator) == ("elbo", "enumerate") and kind == "continuous":
        return None
    return pattern


ACCEPTED = [c for c in cells() if refusal(*c) is None]
REFUSED_CELLS = [c for c in cells() if refusal(*c) is not None]


@pytest.mark.parametrize("objective,kind,estimator", REFUSED_CELLS)
def test_refused_before_compilation(objective, kind, estimator):
    obj = make(objective, kind, estimator)
    params = DISC if kind == "discrete" else CONT
    with pytest.raises(vigrad.EstimatorError, match=refusal(objective, kind, estimator)):
        jax.eval_shape(loss_fn(obj, kind), jax.random.key(0), params)


@pytest.mark.slow
@pytest.mark.parametrize("objective,kind,estimator", ACCEPTED)
def test_accepted_cell_unbiased(objective, kind, estimator):
    obj = make(objective, kind, estimator)
    params = DISC if kind == "discrete" else CONT
    grads = gradient_samples(loss_fn(obj, kind), params, jax.random.key(1), M)
    assert max_abs_z(grads, exact(objective, kind)) < THRESHOLD


# Negative controls: a refused cell run anyway is caught by the same test.
BIASED = [
    ("iwelbo", "continuous", "path"),
    ("renyi", "continuous", "path"),
    ("vimco", "discrete", "mvd"),
    ("rws-dreg", "continuous", "reparam"),
    ("dreg", "continuous", "reparam"),
]


@pytest.mark.slow
@pytest.mark.parametrize("objective,kind,estimator", BIASED)
def test_refused_cell_run_anyway_is_biased(objective, kind, estimator):
    obj = make(objective, kind, estimator)
    obj.check_unbiasedness = False
    params = DISC if kind == "discrete" else CONT
    grads = gradient_samples(loss_fn(obj, kind), params, jax.random.key(1), M)
    assert max_abs_z(grads, exact(objective, kind)) > THRESHOLD
