"""Public objects print as what they are: settings that differ from the defaults, arrays by shape."""

import numpy as np

import vigrad
from vigrad.sgmcmc import SGLD, SGMCMCResult


def test_objectives_and_estimators_print_their_settings():
    assert repr(vigrad.ELBO(num_particles=4)) == "ELBO(num_particles=4)"
    assert repr(vigrad.Score(vigrad.LeaveOneOut())) == "Score(control_variate=LeaveOneOut())"
    iwelbo = vigrad.IWELBO(num_particles=16, estimators={"z": vigrad.PathGradient()})
    assert repr(iwelbo) == "IWELBO(num_particles=16, estimators={'z': PathGradient()})"
    assert repr(vigrad.RenyiELBO(alpha=0.3)) == "RenyiELBO(alpha=0.3)"

    @vigrad.objective(num_particles=4)
    def mean_log_weight(log_w):
        return log_w.mean()

    assert repr(mean_log_weight) == "LogWeightProgram(fn=mean_log_weight, num_particles=4)"


def test_results_print_shapes_not_values():
    fit = vigrad.FitResult(
        params={"m": np.zeros(3, np.float32)},
        unconstrained_params={"m": np.zeros(3, np.float32)},
        losses=np.linspace(10.0, 2.5, 1000),
        state={},
        opt_state=(np.zeros(3), np.zeros(3)),
        num_steps=1000,
    )
    assert repr(fit) == (
        "FitResult(num_steps=1000, final_loss=2.5, params={'m': float32[3]}, diverged_at=None, "
        "message=None)"
    )
    draws = SGMCMCResult(
        samples={"w": np.zeros((4, 500, 30))},
        state=None,
        aux=None,
        num_warmup=100,
        num_steps=2600,
        thinning=5,
        kernel=SGLD(step_size=1e-3),
        kwargs={"x": np.zeros((569, 30))},
    )
    assert repr(draws) == (
        "SGMCMCResult(kernel=SGLD(step_size=0.001), samples={'w': float64[4, 500, 30]}, "
        "num_warmup=100, num_steps=2600, thinning=5, converged=None)"
    )
