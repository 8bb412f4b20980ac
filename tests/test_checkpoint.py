"""Checkpoints: no code runs on load, resuming checks the run, corruption and kills are survived,
and a resumed run equals an uninterrupted one (fit and SG-MCMC)."""

import importlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import vigrad
import vigrad.sgmcmc as sg
from tests.models import conjugate_guide, conjugate_model
from vigrad.infer.checkpoint import load_checkpoint, save_checkpoint

X = jnp.array([0.5, 1.2, -0.3, 2.0, 0.9, 1.4])
OBJECTIVE = vigrad.ELBO(num_particles=8, estimators={"mu": vigrad.PathGradient()})
OPTIMIZER = optax.adam(0.05)
driver_module = importlib.import_module("vigrad.infer.driver")


model, guide = conjugate_model, conjugate_guide


def wide_guide(x):
    m = numpyro.param("m", jnp.zeros(3))
    s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(m.sum(), s))


def run(num_steps, guide=guide, objective=OBJECTIVE, optimizer=OPTIMIZER, key=1, **kw):
    return vigrad.fit(
        model,
        guide,
        objective,
        optimizer,
        num_steps,
        jax.random.key(key),
        X,
        progress_bar=False,
        chunk_size=50,
        **kw,
    )


class Interrupted(Exception):
    pass


def interrupt_after(monkeypatch, module, saves):
    """Make the run stop after ``saves`` checkpoints, as if it had been killed there."""
    real, count = module.save_checkpoint, [0]

    def save_then_stop(*args, **kwargs):
        real(*args, **kwargs)
        count[0] += 1
        if count[0] == saves:
            raise Interrupted

    monkeypatch.setattr(module, "save_checkpoint", save_then_stop)


@pytest.fixture(scope="module")
def full_fit():
    return run(300)


@pytest.fixture(scope="module")
def saved_fit(tmp_path_factory):
    """A checkpoint after 100 of 300 steps."""
    path = tmp_path_factory.mktemp("fit") / "ckpt.npz"
    run(100, checkpoint_path=path)
    return path


# --- exact resume ------------------------------------------------------------------------------


def test_fit_resumed_after_interruption_equals_uninterrupted(tmp_path, monkeypatch, full_fit):
    path = tmp_path / "ckpt.npz"
    interrupt_after(monkeypatch, driver_module, saves=3)
    with pytest.raises(Interrupted):
        run(300, checkpoint_path=path)
    monkeypatch.undo()
    resumed = run(300, checkpoint_path=path, resume=True)
    np.testing.assert_array_equal(resumed.losses, full_fit.losses)
    for name in full_fit.params:
        np.testing.assert_array_equal(resumed.params[name], full_fit.params[name])


def test_fit_extend_continues_to_more_steps(tmp_path, saved_fit, full_fit):
    path = shutil.copy(saved_fit, tmp_path / "ckpt.npz")
    extended = run(300, checkpoint_path=path, resume="extend")
    np.testing.assert_array_equal(extended.losses, full_fit.losses)
    np.testing.assert_array_equal(extended.params["m"], full_fit.params["m"])
    # The checkpoint now belongs to the 300-step run.
    assert run(300, checkpoint_path=path, resume=True).num_steps == 300


def test_extend_cannot_go_below_the_steps_done(saved_fit):
    with pytest.raises(vigrad.CheckpointError, match=r"has done 100 steps, more than the 50"):
        run(50, checkpoint_path=saved_fit, resume="extend")


def test_resume_takes_only_true_false_or_extend(saved_fit):
    with pytest.raises(ValueError, match="resume must be True, False or 'extend'"):
        run(100, checkpoint_path=saved_fit, resume="yes")


def gaussian_mean(x):
    mu = numpyro.sample("mu", dist.Normal(jnp.zeros(2), 3.0).to_event(1))
    with numpyro.plate("data", x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=numpyro.subsample(x, 1))


DATA = jax.random.normal(jax.random.PRNGKey(0), (40, 2))
KERNEL = sg.SGHMC(1e-2, friction=10.0)


def draw(num_samples, kernel=KERNEL, **kw):
    return sg.sample(
        gaussian_mean,
        kernel,
        num_samples,
        8,
        2,
        jax.random.PRNGKey(7),
        DATA,
        num_warmup=30,
        thinning=3,
        chunk_size=30,
        progress_bar=False,
        **kw,
    )


def test_sample_resumed_after_interruption_equals_uninterrupted(tmp_path, monkeypatch):
    whole = draw(240).samples["mu"]  # Step t depends on t alone: a shorter run is a prefix.
    path = tmp_path / "ckpt.npz"
    interrupt_after(monkeypatch, driver_module, saves=3)
    with pytest.raises(Interrupted):
        draw(150, checkpoint_path=path)
    monkeypatch.undo()
    resumed = draw(150, checkpoint_path=path, resume=True)
    np.testing.assert_array_equal(resumed.samples["mu"], whole[:, :50])

    with pytest.raises(vigrad.CheckpointError, match=r"num_samples.*\n.*num_steps.*\n.*'extend'"):
        draw(240, checkpoint_path=path, resume=True)
    with pytest.raises(vigrad.CheckpointError, match="kernel.friction"):
        draw(150, sg.SGHMC(1e-2, friction=5.0), checkpoint_path=path, resume=True)
    with pytest.raises(vigrad.CheckpointError, match="kernel.__type__"):
        draw(150, sg.SGLD(1e-2), checkpoint_path=path, resume=True)
    extended = draw(240, checkpoint_path=path, resume="extend")
    np.testing.assert_array_equal(extended.samples["mu"], whole)


# --- a checkpoint belongs to one run ---------------------------------------------------------


@pytest.mark.parametrize(
    "change, differs",
    [
        (
            dict(guide=wide_guide),
            r'params.m: checkpoint has "float64\[\]", this call has '
            r'"float64\[3\]"',
        ),
        (dict(optimizer=optax.sgd(0.05)), r"these differ: optimizer, optimizer_state"),
        (dict(optimizer=optax.adam(0.01)), r'optimizer\.update.*"-0\.05", this call has "-0\.01"'),
        (dict(key=2), r"rng_key: checkpoint has .*\[0, 1\].*\[0, 2\]"),
        (
            dict(objective=vigrad.ELBO(num_particles=4, estimators={"mu": vigrad.PathGradient()})),
            r"objective.num_particles: checkpoint has 8, this call has 4",
        ),
        (
            dict(objective=vigrad.ELBO(num_particles=8, estimators={"mu": vigrad.Reparam()})),
            r"objective.assignment.by_name.mu.__type__: .*PathGradient.*Reparam",
        ),
        (dict(objective=vigrad.IWELBO(num_particles=8)), r"objective.__type__: .*ELBO.*IWELBO"),
        (
            dict(num_steps=300),
            r"num_steps: checkpoint has 100, this call has 300\n.*"
            r"delete .*ckpt.npz or pass resume=False.*resume='extend'",
        ),
    ],
)
def test_resuming_a_different_run_is_an_error(saved_fit, change, differs):
    num_steps = change.pop("num_steps", 100)
    with pytest.raises(vigrad.CheckpointError, match=differs) as info:
        run(num_steps, checkpoint_path=saved_fit, resume=True, **change)
    assert f"delete {saved_fit} or pass resume=False" in str(info.value)


def test_state_is_checked_against_the_template(tmp_path):
    path = tmp_path / "ckpt.npz"
    save_checkpoint(path, {"a": np.zeros(3), "b": 1}, {"run": 1})
    with pytest.raises(vigrad.CheckpointError, match=r"state\['a'\]: checkpoint has float64\[3\]"):
        load_checkpoint(path, {"a": np.zeros(2), "b": 1}, {"run": 1})
    with pytest.raises(vigrad.CheckpointError, match=r"state\['c'\]: only this call has it"):
        load_checkpoint(path, {"a": np.zeros(3), "b": 1, "c": 2.0}, {"run": 1})


def test_round_trip_keeps_keys_dtypes_and_types(tmp_path):
    path = tmp_path / "ckpt.npz"
    state = {
        "keys": jax.random.split(jax.random.key(3, impl="rbg"), 2),
        "raw_key": jax.random.PRNGKey(4),
        "half": jnp.arange(3, dtype=ml_dtypes.bfloat16),
        "host": np.arange(4.0).reshape(2, 2),
        "count": 5,
        "scale": 0.25,
    }
    history = {"losses": np.linspace(0, 1, 7)}
    save_checkpoint(path, state, {"run": 1}, history=history)
    template = jax.tree.map(jnp.zeros_like, state)
    template.update(
        host=np.zeros((2, 2)),
        count=0,
        scale=0.0,
        keys=jax.random.split(jax.random.key(0, impl="rbg"), 2),
    )
    loaded = load_checkpoint(path, template, {"run": 1})
    assert jax.random.key_impl(loaded.state["keys"]) == jax.random.key_impl(state["keys"])
    np.testing.assert_array_equal(
        jax.random.key_data(loaded.state["keys"]), jax.random.key_data(state["keys"])
    )
    assert loaded.state["half"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(loaded.state["half"], state["half"])
    assert isinstance(loaded.state["host"], np.ndarray) and isinstance(loaded.state["count"], int)
    assert (loaded.state["count"], loaded.state["scale"]) == (5, 0.25)
    np.testing.assert_array_equal(loaded.history["losses"], history["losses"])
    assert loaded.run == {"run": 1}


# --- nothing in a file runs on load ------------------------------------------------------------


class CreatesFile:
    """Unpickling this creates the file ``path``: what a crafted checkpoint could do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("protocol", [0, pickle.HIGHEST_PROTOCOL])
def test_pickled_checkpoint_is_refused_and_never_unpickled(tmp_path, protocol):
    marker = tmp_path / "marker"
    payload = pickle.dumps({"format": "vigrad-checkpoint-1", "tree": CreatesFile(marker)}, protocol)
    pickle.loads(payload)  # Negative control: unpickling it does create the marker.
    assert marker.exists()
    marker.unlink()
    path = tmp_path / "ckpt.pkl"
    path.write_bytes(payload)
    message = "pickled checkpoint from an older vigrad" if protocol >= 2 else "not a vigrad"
    with pytest.raises(vigrad.CheckpointError, match=message):
        run(100, checkpoint_path=path, resume=True)
    assert not marker.exists()


def test_object_array_inside_the_archive_is_never_unpickled(tmp_path, saved_fit):
    marker = tmp_path / "marker"
    path = tmp_path / "ckpt.npz"
    with zipfile.ZipFile(saved_fit) as good, zipfile.ZipFile(path, "w") as bad:
        for name in good.namelist():
            if name == "s1.npy":
                with bad.open(name, "w") as member:
                    evil = np.array([CreatesFile(marker)], dtype=object)
                    np.lib.format.write_array(member, evil, allow_pickle=True)
            else:
                bad.writestr(name, good.read(name))
    with pytest.raises(vigrad.CheckpointError, match=f"checkpoint {path} is truncated or corrupt"):
        run(100, checkpoint_path=path, resume=True)
    assert not marker.exists()


# --- corruption --------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [0.0, 0.0001, 0.5, 0.99])
def test_truncated_checkpoint_is_an_error_naming_the_file(tmp_path, saved_fit, keep):
    data = saved_fit.read_bytes()
    path = tmp_path / "ckpt.npz"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(vigrad.CheckpointError, match=f"checkpoint {path} is truncated or corrupt"):
        run(100, checkpoint_path=path, resume=True)


def test_changed_array_fails_the_checksum(tmp_path, saved_fit):
    path = tmp_path / "ckpt.npz"
    with zipfile.ZipFile(saved_fit) as good, zipfile.ZipFile(path, "w") as bad:
        meta = json.loads(bytes(np.load(saved_fit)["meta"]).decode())
        member = next(e["member"] for e in meta["state"] if e["where"] == "['params']['m']")
        for name in good.namelist():
            if name == f"{member}.npy":
                with bad.open(name, "w") as out:
                    np.lib.format.write_array(out, np.asarray(123.0))
            else:
                bad.writestr(name, good.read(name))
    with pytest.raises(vigrad.CheckpointError, match="do not match their SHA-256 checksum"):
        run(100, checkpoint_path=path, resume=True)


def test_other_archives_are_not_checkpoints(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(2))
    with pytest.raises(vigrad.CheckpointError, match="is not a vigrad checkpoint"):
        load_checkpoint(path, {}, {})


# --- killed while writing ----------------------------------------------------------------------

# Objects whose descriptions the writer records: the test process, a new interpreter, must describe
# them identically for the checkpoints to load.
RUN_OBJECTS = """
import optax, vigrad, vigrad.sgmcmc as sg
from vigrad.infer.describe import describe
RUN = describe({
    "objective": vigrad.ELBO(8, estimators={"mu": vigrad.Score(vigrad.MovingAverage(0.9))}),
    "renyi": vigrad.RenyiELBO(alpha=0.3),
    "optimizer": optax.chain(optax.clip_by_global_norm(1.0),
                             optax.adam(optax.exponential_decay(0.1, 100, 0.5))),
    "kernel": sg.SGLD(sg.polynomial_decay(1e-3)),
})
"""

WRITER = RUN_OBJECTS + textwrap.dedent(
    """
    import os, sys, time
    import numpy as np
    from vigrad.infer.checkpoint import save_checkpoint

    path, base = sys.argv[1], np.arange(200_000, dtype=np.float64)
    save_checkpoint(path, {"x": base, "step": 0}, RUN)
    # One forked writer per line read; the test kills it and this process reaps it. Forking skips
    # a fresh interpreter's imports (JAX has started no threads: only NumPy arrays are written).
    for _ in sys.stdin:
        pid = os.fork()
        if pid == 0:
            step, deadline = 1, time.monotonic() + 20
            while time.monotonic() < deadline:
                save_checkpoint(path, {"x": base + step, "step": step}, RUN)
                step += 1
            os._exit(0)
        print(pid, flush=True)
        os.waitpid(pid, 0)
        print("reaped", flush=True)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_killed_writer_always_leaves_a_readable_checkpoint(tmp_path):
    path = tmp_path / "ckpt.npz"
    template = {"x": np.zeros(200_000), "step": 0}
    objects: dict = {}
    exec(RUN_OBJECTS, objects)
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    rng, steps, pid = random.Random(0), [], None
    try:
        for _ in range(10):
            writer.stdin.write("go\n")
            writer.stdin.flush()
            pid = int(writer.stdout.readline())
            time.sleep(rng.uniform(0.005, 0.06))
            os.kill(pid, signal.SIGKILL)
            assert writer.stdout.readline().strip() == "reaped"
            pid = None
            saved = load_checkpoint(path, template, objects["RUN"])
            np.testing.assert_array_equal(
                saved.state["x"], template["x"] + np.arange(200_000) + saved.state["step"]
            )
            steps.append(saved.state["step"])
    finally:
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        writer.stdin.close()
        try:
            writer.wait(timeout=30)
        except subprocess.TimeoutExpired:
            writer.kill()
            raise
    assert writer.returncode == 0
    assert max(steps) > 0
    # Kills landed in the middle of writes: their temporary files remain beside the checkpoint.
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"]
