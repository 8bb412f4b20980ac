"""Fits and SG-MCMC runs across devices (data- and particle-parallel fits, federated clients and
chains), streamed data, checkpoints across device counts, and a two-process ``jax.distributed`` fit.

Several devices are simulated on the CPU (``--xla_force_host_platform_device_count``) in a
subprocess, since the device count is fixed when JAX starts. One subprocess runs every four-device
check (each part reports on its own), so JAX starts once for all of them.
"""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
import pytest

import vigrad

COMMON = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp, numpy as np, numpyro, numpyro.distributions as dist, optax
    jax.config.update("jax_enable_x64", True)
    import vigrad

    X = jax.random.normal(jax.random.key(0), (64,)) + 1.0

    def model(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def subsampled(x):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", x.shape[0], subsample_size=16):
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=numpyro.subsample(x, event_dim=0))

    def streamed(x, num_data):
        mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
        with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
            numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(*args, **kwargs):
        m = numpyro.param("m", 0.0)
        s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
        numpyro.sample("mu", dist.Normal(m, s))

    # One optimiser for every fit: fits of the same model, objective and mesh share a compilation.
    ADAM = optax.adam(0.05)

    def fit(model, objective, num_steps, *args, **kw):
        return vigrad.fit(model, guide, objective, ADAM, num_steps, jax.random.key(1),
                          *args, progress_bar=False, chunk_size=10, **kw)

    def chains(**kw):
        # Four SGLD chains on the subsampled model (split over the devices given).
        result = vigrad.sgmcmc.sample(subsampled, vigrad.sgmcmc.SGLD(1e-3), 40, 16, 4,
                                      jax.random.key(2), np.asarray(X), progress_bar=False,
                                      check=False, **kw)
        return np.asarray(result.samples["mu"])

    def same(a, b, what):
        np.testing.assert_allclose(a.losses, b.losses, rtol=1e-10, atol=1e-10, err_msg=what)
        for name in a.params:
            np.testing.assert_allclose(a.params[name], b.params[name], rtol=1e-10, err_msg=what)
    """
)

SHARDED_FITS = textwrap.dedent(
    """
    from jax.sharding import Mesh
    from vigrad.infer.sharding import particles_over
    from vigrad.objectives.particle_axis import constrain_particles
    assert jax.device_count() == 4
    grid = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "particles"))
    elbo = vigrad.ELBO(4)
    cases = [
        ("ELBO, path gradient, full data", model, elbo, dict(devices=4)),
        ("IWELBO, subsampled plate", subsampled, vigrad.IWELBO(8), dict(mesh=grid)),
        ("IWELBO, particles only", model, vigrad.IWELBO(8),
         dict(mesh=Mesh(np.array(jax.devices()).reshape(1, 4), ("data", "particles")))),
        ("ELBO, score with a moving-average baseline", model,
         vigrad.ELBO(4, estimators={"mu": vigrad.Score(vigrad.MovingAverage())}), dict(devices=4)),
    ]
    for what, m, objective, kw in cases:
        one, many = fit(m, objective, 30, X), fit(m, objective, 30, X, **kw)
        same(one, many, what)
        assert len(many.params["m"].sharding.device_set) == 4, what
        assert jax.tree.leaves(many.state) == [] or all(
            len(x.sharding.device_set) == 4 for x in jax.tree.leaves(many.state)), what

    # A particle block's keys are split over the particles axis, and what is computed from them.
    with particles_over(grid):
        f = jax.jit(lambda k: jax.vmap(lambda k: jax.random.normal(k, (3,)))(
            constrain_particles(jax.random.split(k, 8))))
        out = f(jax.random.key(0))
    assert out.sharding.spec[0] == "particles", out.sharding

    # Streamed minibatches split over the data axis equal the one-device stream.
    data = np.asarray(X)
    stream = lambda: vigrad.Minibatches(8, x=data)
    one = fit(streamed, vigrad.ELBO(2), 30, stream=stream(), num_data=64)
    four = fit(streamed, vigrad.ELBO(2), 30, stream=stream(), num_data=64, devices=4)
    same(one, four, "streamed")

    # A checkpoint written on 4 devices resumes on 2; the result equals an uninterrupted run.
    path = sys.argv[1]
    fit(model, elbo, 20, X, devices=4, checkpoint_path=path)
    resumed = fit(model, elbo, 40, X, devices=2, checkpoint_path=path, resume="extend")
    same(fit(model, elbo, 40, X), resumed, "resumed on 2 devices")
    assert len(resumed.params["m"].sharding.device_set) == 2
    """
)

SHARDED_SGMCMC = textwrap.dedent(
    """
    import vigrad.sgmcmc as sg
    from vigrad.errors import DataError

    assert jax.device_count() == 4

    def model(x):
        mu = numpyro.sample("mu", dist.Normal(jnp.zeros(1), 3.0).to_event(1))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", dist.Normal(mu, 1.0).to_event(1), obs=numpyro.subsample(x, 1))

    centres = jnp.array([-3.0, -1.0, 1.0, 3.0])
    x = (centres[:, None] + jax.random.normal(jax.random.PRNGKey(8), (4, 50))).reshape(-1, 1)
    labels = jnp.repeat(jnp.arange(4), 50)
    # The draws are compared, not diagnosed: no convergence check.
    key, kw = jax.random.PRNGKey(9), dict(num_warmup=10, progress_bar=False, check=False)

    # Clients on devices (shard_map), and chains on devices: the same draws as on one device.
    kernel = sg.FSGLD(2e-4, shards=labels, local_steps=10)
    one = sg.sample(model, kernel, 60, 20, 4, key, x, **kw)
    clients = sg.FSGLD(2e-4, shards=labels, local_steps=10, devices=4)
    four = sg.sample(model, clients, 60, 20, 4, key, x, **kw)
    np.testing.assert_allclose(four.samples["mu"], one.samples["mu"], atol=1e-10)
    assert four.aux.clients[0].sharding.spec == jax.sharding.PartitionSpec("clients")
    chains = sg.sample(model, kernel, 60, 20, 4, key, x, devices=4, **kw)
    np.testing.assert_allclose(chains.samples["mu"], one.samples["mu"], atol=1e-10)
    assert len(chains.state.position["mu"].sharding.device_set) == 4

    # Three shards do not spread over four devices.
    try:
        sg.sample(model, sg.DSGLD(1e-4, shards=3, devices=4), 10, 5, 1, key, x, **kw)
    except DataError as err:
        assert "cannot be spread evenly" in str(err)
    else:
        raise AssertionError("no error for 3 shards on 4 devices")
    """
)

# Each part runs in its own namespace (a copy of COMMON's) and prints PASSED or its traceback, so
# that a failing part does not hide the others' results.
FOUR_DEVICES = COMMON + textwrap.dedent(
    f"""
    import traceback
    common = dict(globals())
    for name, part in {{"fits": {SHARDED_FITS!r}, "sgmcmc": {SHARDED_SGMCMC!r}}}.items():
        try:
            exec(part, dict(common))
            print("PASSED", name, flush=True)
        except Exception:
            print("FAILED", name, traceback.format_exc(), flush=True)
    """
)


def _with_devices(n):
    """The suite's XLA flags (see conftest.py) with ``n`` host CPU devices."""
    return f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()


def run_script(script, *argv, env=None, timeout=600):
    env = {**os.environ, "XLA_FLAGS": _with_devices(4), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", script, *map(str, argv)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    out = run_script(FOUR_DEVICES, tmp_path_factory.mktemp("four") / "ckpt.npz")
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_fits_over_four_devices_equal_one_device(four_devices):
    assert "PASSED fits" in four_devices, four_devices[-3000:]


def test_sharded_clients_and_chains_equal_one_device(four_devices):
    assert "PASSED sgmcmc" in four_devices, four_devices[-3000:]


X = jnp.array([0.5, 1.2, -0.3, 2.0, 0.9, 1.4])


def streamed_model(x, num_data):
    mu = numpyro.sample("mu", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", num_data, subsample_size=x.shape[0]):
        numpyro.sample("x", dist.Normal(mu, 1.0), obs=x)


def guide(*args, **kwargs):
    m = numpyro.param("m", 0.0)
    s = numpyro.param("s", 1.0, constraint=dist.constraints.positive)
    numpyro.sample("mu", dist.Normal(m, s))


def test_streamed_memmap_larger_than_the_memory_cap_fits_the_exact_posterior(tmp_path):
    n, batch, cap = 2000, 100, 4000
    data = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.float64, (n,))
    data[:] = np.random.default_rng(0).normal(0.7, 1.0, n)
    data.flush()
    source = vigrad.Minibatches(
        batch, x=np.load(tmp_path / "x.npy", mmap_mode="r"), seed=3, max_device_bytes=cap
    )
    assert data.nbytes >= 4 * cap
    chunks = []
    chunk = source.chunk
    source.chunk = lambda *a: chunks.append(chunk(*a)) or chunks[-1]
    result = vigrad.fit(
        streamed_model,
        guide,
        vigrad.ELBO(4),
        optax.adam(optax.cosine_decay_schedule(0.1, 2000)),
        2000,
        jax.random.key(0),
        num_data=n,
        stream=source,
        progress_bar=False,
    )
    assert max(c["x"].nbytes for c in chunks) <= cap
    post_mean = data.sum() / (n + 1)
    # Without the plate's N / B scaling the posterior sd would be 1 / sqrt(B + 1) = 0.1, not 0.022.
    assert abs(float(result.params["m"]) - post_mean) < 0.01
    assert abs(float(result.params["s"]) - 1 / np.sqrt(n + 1)) < 0.01


def test_stream_from_an_iterator_and_its_errors():
    # One objective and optimiser for the three fits, so the second reuses the first's compilation.
    elbo, adam = vigrad.ELBO(2), optax.adam(0.05)

    def fit(stream, **kw):
        return vigrad.fit(
            streamed_model,
            guide,
            elbo,
            adam,
            4,
            jax.random.key(0),
            num_data=30,
            stream=stream,
            chunk_size=3,
            progress_bar=False,
            **kw,
        )

    result = fit({"x": np.full(3, float(t))} for t in range(5))
    assert result.num_steps == 4
    with pytest.raises(ValueError, match="ran out after 2 batches"):
        fit(iter([{"x": np.zeros(3)}] * 2))
    with pytest.raises(ValueError, match="larger than max_device_bytes=8"):
        fit(vigrad.Minibatches(3, x=np.zeros(30), max_device_bytes=8))


def free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


DISTRIBUTED = (
    textwrap.dedent(
        """
        import sys
        import jax
        port, pid, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
        # Collectives between CPU processes go through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                                   process_id=pid)
        """
    )
    + COMMON
    + textwrap.dedent(
        """
        assert jax.device_count() == 4 and jax.local_device_count() == 2
        result = fit(model, vigrad.ELBO(4), 30, np.asarray(X), devices=4, checkpoint_path=path)
        np.save(f"{path}.{pid}.npy", result.losses)
        np.save(f"{path}.chains.{pid}.npy", chains(devices=4))
        print("OK", pid)
        """
    )
)


@pytest.mark.slow
def test_two_processes_with_jax_distributed(tmp_path):
    """Two local processes of two CPU devices each fit with the data split over all four and run
    SG-MCMC chains split over all four; both see the single-device losses and draws, and process 0
    alone writes the checkpoint."""
    port, path = free_port(), tmp_path / "ckpt.npz"
    env = {"XLA_FLAGS": _with_devices(2)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", DISTRIBUTED, str(port), str(i), str(path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **env},
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, stderr) in zip(procs, outs, strict=True):
        assert p.returncode == 0, stderr[-3000:]
    single = run_script(COMMON + SINGLE, path.with_suffix(".single.npy"), env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = np.load(path.with_suffix(".single.npy"))
    chains = np.load(path.with_suffix(".single.chains.npy"))
    for i in range(2):
        np.testing.assert_allclose(np.load(f"{path}.{i}.npy"), reference, rtol=1e-10)
        np.testing.assert_allclose(np.load(f"{path}.chains.{i}.npy"), chains, rtol=1e-10)
    assert path.exists() and not list(tmp_path.glob("*.tmp"))


SINGLE = textwrap.dedent(
    """
    np.save(sys.argv[1], fit(model, vigrad.ELBO(4), 30, np.asarray(X)).losses)
    np.save(sys.argv[1].replace(".npy", ".chains.npy"), chains())
    """
)
