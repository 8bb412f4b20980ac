"""The name tables (vigrad.registry): every entry builds, the older vocabularies still work, and
reading a table starts nothing heavy."""

import subprocess
import sys

import pytest

import vigrad
from vigrad.registry import CONTROL_VARIATES, ESTIMATORS, KERNELS, OBJECTIVES


def test_every_entry_loads_its_constructor():
    for table in (CONTROL_VARIATES, ESTIMATORS, OBJECTIVES, KERNELS):
        for name, entry in table.items():
            assert callable(entry.load()), name
            assert entry.description, name


def test_estimator_names_of_the_command_line_and_of_vigrad_nn():
    expected = {
        "reparam": vigrad.Reparam(),
        "path": vigrad.PathGradient(),
        "score": vigrad.Score(),
        "score-loo": vigrad.Score(vigrad.LeaveOneOut()),
        "score-ma": vigrad.Score(vigrad.MovingAverage(0.9)),
        "enumerate": vigrad.Enumerate(),
        "rt": vigrad.Reparam(),
        "lrt": vigrad.LocalReparam(),
        "r2g2": vigrad.R2G2(),
    }
    assert {name: ESTIMATORS.build(name) for name in expected} == expected
    assert vigrad.nn.estimator_for("score-loo", "fc") == vigrad.Score(vigrad.LeaveOneOut())


def test_objectives_and_kernels_build_with_their_options():
    renyi = OBJECTIVES.build("renyi", num_particles=4, estimators=None, alpha=0.5)
    assert isinstance(renyi, vigrad.RenyiELBO) and renyi.alpha == 0.5
    rws = OBJECTIVES.build("rws", num_particles=4, estimators=None, wake="dreg")
    assert rws.wake == "dreg" and OBJECTIVES["rws"].options == ("wake",)
    for name in ("elbo", "iwelbo", "vimco", "dreg"):
        assert OBJECTIVES.build(name, num_particles=2, estimators=None).num_particles == 2
    assert KERNELS.build("sgld", step_size=1e-3).step_size == 1e-3


def test_unknown_names_list_the_known_ones():
    with pytest.raises(vigrad.VigradError, match=r"Unknown estimator 'reinforce'.*score-loo = "):
        ESTIMATORS.build("reinforce")
    with pytest.raises(vigrad.VigradError, match=r"Unknown objective 'elb'.*elbo = vigrad.ELBO"):
        OBJECTIVES.entry("elb")


def test_tables_are_immutable_and_cheap_to_read():
    with pytest.raises(TypeError):
        ESTIMATORS._entries["mine"] = ESTIMATORS["reparam"]
    code = "import sys, vigrad.registry as r; r.ESTIMATORS.describe(); print('jax' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
