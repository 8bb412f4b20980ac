"""A stateful control variate under plain ``numpyro.infer.SVI`` says that its state is dropped.

SVI calls the objective's ``loss()`` when the model has no ``numpyro.mutable`` site and keeps
nothing it returns, so a moving-average or learned baseline would stay at its start unnoticed.
"""

import warnings

import jax
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import vigrad


def model():
    numpyro.sample("k", dist.Bernoulli(0.3))


def guide():
    p = numpyro.param("p", 0.5, constraint=dist.constraints.unit_interval)
    numpyro.sample("k", dist.Bernoulli(p))


def _warnings_of_svi_run(control_variate) -> list[str]:
    loss = vigrad.ELBO(num_particles=2, estimators={"k": vigrad.Score(control_variate)})
    svi = numpyro.infer.SVI(model, guide, optax.adam(1e-2), loss)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        svi.run(jax.random.key(0), 3, progress_bar=False)
    return [str(w.message) for w in caught if "drops the control-variate state" in str(w.message)]


@pytest.mark.parametrize("stateful", [True, False], ids=["MovingAverage", "LeaveOneOut"])
def test_plain_svi_warns_once_when_a_baseline_state_is_dropped(stateful):
    found = _warnings_of_svi_run(vigrad.MovingAverage(0.9) if stateful else vigrad.LeaveOneOut())
    if stateful:
        assert len(found) == 1 and "k']" in found[0] and "vigrad.fit" in found[0]
    else:
        assert found == []
