"""R2-G2 (vigrad.R2G2 with vigrad.nn): unbiasedness, equality with the local reparameterisation
trick, the conjugate-gradient solve, and the errors where R2-G2 cannot apply.

The unbiasedness models are Gaussian sites observed through a linear map with a Poisson (log-link)
likelihood: the loss is nonlinear in the pre-activations, yet each pre-activation is Gaussian, so
``E[y z - exp(z)] = y m - exp(m + v / 2)`` gives the ELBO and its gradient in closed form.
"""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from jax.scipy.special import gammaln
from unbiased import THRESHOLD, max_abs_z

import vigrad
from vigrad.estimators.r2g2 import (
    R2G2,
    GaussianNoise,
    LocalReparam,
    conjugate_gradients,
    direct_projected_noise,
    projected_noise,
    r2g2_map,
)
from vigrad.nn import Conv2d, Dense, conv2d, latent_linear, linear, local_reparam_linear

jax.config.update("jax_enable_x64", True)

M = 10_000


def gaussian_entropy(scale):
    return jnp.sum(0.5 * jnp.log(2 * jnp.pi * jnp.e * scale**2))


def expected_log_normal_prior(loc, scale):
    return jnp.sum(-0.5 * jnp.log(2 * jnp.pi) - 0.5 * (loc**2 + scale**2))


def expected_poisson(y, mean, var):
    return jnp.sum(y * mean - jnp.exp(mean + 0.5 * var) - gammaln(y + 1.0))


# --- A weight site W [3, 2] used through x @ W with 2 rows: rank(A_j) = 2 < 3, so R2-G2 differs
# from plain reparameterisation.
XW = jnp.array([[0.6, -0.4, 0.9], [-0.3, 0.8, 0.5]])
YW = jnp.array([[1.0, 0.0], [2.0, 1.0]])
W_PARAMS = {
    "loc": jnp.array([[0.2, -0.1], [0.3, 0.4], [-0.2, 0.1]]),
    "scale": jnp.array([[0.7, 0.5], [0.9, 0.6], [0.4, 0.8]]),
}


def weight_model(x, y):
    w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand((3, 2)).to_event(2))
    z = linear("W", x, w)
    numpyro.sample("y", dist.Poisson(jnp.exp(z)).to_event(2), obs=y)


def weight_guide(x, y):
    loc, scale = numpyro.param("loc", W_PARAMS["loc"]), numpyro.param("scale", W_PARAMS["scale"])
    numpyro.sample("W", dist.Normal(loc, scale).to_event(2))


def weight_neg_elbo(p):
    mean, var = XW @ p["loc"], XW**2 @ p["scale"] ** 2
    lik = expected_poisson(YW, mean, var)
    return -(lik + expected_log_normal_prior(p["loc"], p["scale"]) + gaussian_entropy(p["scale"]))


# --- A latent site v [4, 3] (per example) used through v @ W with W [3, 2] a model parameter.
YV = jnp.array([[1.0, 0.0], [0.0, 2.0], [3.0, 1.0], [1.0, 1.0]])
V_PARAMS = {
    "vloc": jnp.array([[0.1, -0.2, 0.3], [0.0, 0.4, -0.1], [0.2, 0.1, 0.0], [-0.3, 0.2, 0.1]]),
    "vscale": jnp.array([[0.8, 0.5, 0.6], [0.7, 0.9, 0.4], [0.5, 0.6, 0.7], [0.9, 0.3, 0.8]]),
    "Wdec": jnp.array([[0.5, -0.3], [0.2, 0.6], [-0.4, 0.3]]),
}


def latent_model(y):
    w = numpyro.param("Wdec", V_PARAMS["Wdec"])
    with numpyro.plate("data", y.shape[0]):
        v = numpyro.sample("v", dist.Normal(0.0, 1.0).expand((3,)).to_event(1))
        h = latent_linear("v", v, w)
        numpyro.sample("y", dist.Poisson(jnp.exp(h)).to_event(1), obs=y)


def latent_guide(y):
    loc = numpyro.param("vloc", V_PARAMS["vloc"])
    scale = numpyro.param("vscale", V_PARAMS["vscale"])
    with numpyro.plate("data", y.shape[0]):
        numpyro.sample("v", dist.Normal(loc, scale).to_event(1))


def latent_neg_elbo(p):
    mean, var = p["vloc"] @ p["Wdec"], p["vscale"] ** 2 @ p["Wdec"] ** 2
    lik = expected_poisson(YV, mean, var)
    return -(
        lik + expected_log_normal_prior(p["vloc"], p["vscale"]) + gaussian_entropy(p["vscale"])
    )


# --- A 2x2 convolution kernel site [2, 2, 1, 2] on two 3x3 single-channel images (VALID padding).
XC = jnp.array(
    [
        [[0.5, -0.2, 0.1], [0.3, 0.7, -0.4], [0.0, 0.2, 0.6]],
        [[-0.1, 0.4, 0.2], [0.6, -0.3, 0.1], [0.2, 0.5, -0.2]],
    ]
)[..., None]
YC = jnp.array(
    [
        [[[1.0, 0.0], [2.0, 1.0]], [[0.0, 1.0], [1.0, 3.0]]],
        [[[2.0, 1.0], [0.0, 0.0]], [[1.0, 2.0], [1.0, 0.0]]],
    ]
)
C_PARAMS = {
    "cloc": jnp.array([[[[0.2, -0.1]], [[0.1, 0.3]]], [[[-0.2, 0.2]], [[0.3, 0.0]]]]),
    "cscale": jnp.array([[[[0.6, 0.4]], [[0.5, 0.7]]], [[[0.8, 0.3]], [[0.4, 0.6]]]]),
}


def _conv(x, k):
    return jax.lax.conv_general_dilated(
        x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_model(x, y):
    k = numpyro.sample("K", dist.Normal(0.0, 1.0).expand((2, 2, 1, 2)).to_event(4))
    z = conv2d("K", x, k, padding="VALID")
    numpyro.sample("y", dist.Poisson(jnp.exp(z)).to_event(4), obs=y)


def conv_guide(x, y):
    loc, scale = (
        numpyro.param("cloc", C_PARAMS["cloc"]),
        numpyro.param("cscale", C_PARAMS["cscale"]),
    )
    numpyro.sample("K", dist.Normal(loc, scale).to_event(4))


def conv_neg_elbo(p):
    mean, var = _conv(XC, p["cloc"]), _conv(XC**2, p["cscale"] ** 2)
    lik = expected_poisson(YC, mean, var)
    return -(
        lik + expected_log_normal_prior(p["cloc"], p["cscale"]) + gaussian_entropy(p["cscale"])
    )


CASES = {
    "dense": (weight_model, weight_guide, (XW, YW), W_PARAMS, weight_neg_elbo, "W"),
    "latent": (latent_model, latent_guide, (YV,), V_PARAMS, latent_neg_elbo, "v"),
    "conv": (conv_model, conv_guide, (XC, YC), C_PARAMS, conv_neg_elbo, "K"),
}


def estimates(case, *estimators, seed=0):
    """[M, ...] gradient estimates of the case's ELBO for each estimator, from the same keys, all
    in one compiled call (one compile is cheaper than one per estimator)."""
    model, guide, args, params, _, site = CASES[case]
    elbos = [vigrad.ELBO(estimators={site: estimator}) for estimator in estimators]

    def grads(key):
        return [
            jax.grad(lambda p, elbo=elbo: elbo.loss(key, p, model, guide, *args))(params)
            for elbo in elbos
        ]

    keys = jax.random.split(jax.random.PRNGKey(seed), M)
    return jax.jit(jax.vmap(grads))(keys)


def exact_gradient(case):
    _, _, _, params, neg_elbo, _ = CASES[case]
    return jax.jit(jax.grad(neg_elbo))(params)


@pytest.fixture(scope="module")
def dense_samples():
    r2g2, rt, truncated = estimates("dense", R2G2(), vigrad.Reparam(), R2G2(maxiter=1))
    return {"r2g2": r2g2, "rt": rt, "truncated": truncated}


def test_r2g2_dense_unbiased_with_negative_control(dense_samples):
    exact = exact_gradient("dense")
    assert max_abs_z(dense_samples["r2g2"], exact) < THRESHOLD
    assert max_abs_z(dense_samples["rt"], exact) < THRESHOLD
    # Negative control: one CG iteration does not reach the projection (rank 2), and the same
    # test must reject it.
    assert max_abs_z(dense_samples["truncated"], exact) > 2 * THRESHOLD


def test_r2g2_lowers_variance_of_the_scale_gradient(dense_samples):
    var = lambda g: float(np.sum(np.var(np.asarray(g["scale"]), axis=0)))
    assert var(dense_samples["r2g2"]) < 0.95 * var(dense_samples["rt"])
    # The loc gradient is the same estimator: R2-G2 only changes the noise in the scale gradient.
    loc_var = lambda g: float(np.sum(np.var(np.asarray(g["loc"]), axis=0)))
    assert abs(loc_var(dense_samples["r2g2"]) / loc_var(dense_samples["rt"]) - 1) < 0.1


@pytest.mark.parametrize(
    "case, estimator, negative",
    [
        ("latent", R2G2(), R2G2(maxiter=1)),
        ("conv", R2G2(), R2G2(maxiter=1)),
        ("conv", R2G2(per_example=True), R2G2(per_example=True, maxiter=1, tol=1.0)),
        ("dense", R2G2(per_example=True), None),
    ],
    ids=["latent", "conv", "conv-per-example", "dense-per-example"],
)
def test_r2g2_unbiased_latent_conv_per_example(case, estimator, negative):
    exact = exact_gradient(case)
    if negative is None:
        (samples,) = estimates(case, estimator, seed=1)
    else:
        samples, negative_samples = estimates(case, estimator, negative, seed=1)
        # One CG iteration is short of the rank (or, for the per-example convolution's direct
        # solve, one ridge-regularised solve with a ridge as large as the trace shrinks eps*),
        # and the same test must reject it. (Per example, a dense layer's systems have rank one
        # and a closed form.)
        assert max_abs_z(negative_samples, exact) > 2 * THRESHOLD
    assert max_abs_z(samples, exact) < THRESHOLD


# --- Equality with the local reparameterisation trick.


def test_equals_local_reparameterisation_per_example():
    """A dense layer with a weight draw per example: R2-G2's gradients (in loc, scale and the
    inputs) equal the local reparameterisation trick's, with the matching pre-activation noise."""
    key = jax.random.PRNGKey(4)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    b, d_in, d_out = 5, 4, 3
    x = jax.random.normal(k1, (b, d_in))
    loc = 0.3 * jax.random.normal(k2, (d_in, d_out))
    scale = jnp.exp(0.3 * jax.random.normal(k3, (d_in, d_out)))
    eps = jax.random.normal(k4, (b, d_in, d_out))
    targets = jnp.arange(b) % d_out

    def loss(z):
        return -jnp.sum(jax.nn.log_softmax(jnp.tanh(z) * 3.0)[jnp.arange(b), targets])

    def r2g2_loss(loc, scale, x):
        full = (b, d_in, d_out)
        parts = GaussianNoise(jnp.broadcast_to(loc, full), jnp.broadcast_to(scale, full), eps)
        return loss(r2g2_map(jnp.matmul, x[:, None, :], parts, (-2,))[:, 0, :])

    # The pre-activation noise that the per-example weight noise induces.
    xi = jnp.einsum("bi,ij,bij->bj", x, scale, eps) / jnp.sqrt(x**2 @ scale**2)

    def lrt_loss(loc, scale, x):
        return loss(local_reparam_linear(x, loc, scale, noise=xi))

    rt_loss = lambda s: loss(jnp.einsum("bi,bij->bj", x, loc + s * eps))

    # Every value and gradient in one compiled call: op by op, each is a compile of its own.
    @jax.jit
    def compare(loc, scale, x):
        grad = lambda f: jax.value_and_grad(f, argnums=(0, 1, 2))(loc, scale, x)
        return grad(r2g2_loss), grad(lrt_loss), jax.grad(rt_loss)(scale)

    (v_r2g2, g_r2g2), (v_lrt, g_lrt), rt = compare(loc, scale, x)
    assert np.allclose(v_r2g2, v_lrt, rtol=1e-12)
    for a, c in zip(g_r2g2, g_lrt, strict=True):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
    # And it is not plain reparameterisation.
    assert not np.allclose(rt, g_r2g2[1], rtol=1e-3)


def test_local_reparameterisation_gradient_at_a_zero_input_row():
    """A row of zeros has zero pre-activation variance; R2-G2's projection is zero there, and the
    closed form's gradient is finite (no derivative of sqrt at 0) and equals it."""
    x = XW.at[1].set(0.0)
    xi = jnp.array([[0.3, -1.2], [0.7, 0.4]])

    def loss(loc, scale, x):
        return jnp.sum(jnp.sin(local_reparam_linear(x, loc, scale, noise=xi[: x.shape[0]])))

    @jax.jit
    def gradients(loc, scale, x):
        all_rows = jax.grad(loss, argnums=(0, 1, 2))(loc, scale, x)
        return all_rows, jax.grad(loss, argnums=1)(loc, scale, x[:1])

    grads, only_first = gradients(W_PARAMS["loc"], W_PARAMS["scale"], x)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in grads)
    np.testing.assert_allclose(grads[1], only_first, atol=1e-14)


def _pinv_projection(rows, scale, noise):
    rows, scale, noise = (np.asarray(a) for a in (rows, scale, noise))
    out = np.zeros_like(noise)
    for b in range(rows.shape[0]):
        for o in range(scale.shape[1]):
            a = rows[b] * scale[:, o]
            out[b, :, o] = np.linalg.pinv(a) @ a @ noise[b, :, o]
    return out


@pytest.mark.parametrize(
    "positions, size, deficient",
    [(3, 7, True), (9, 5, True), (9, 5, False)],
    ids=["wide", "tall", "tall-full-rank"],
)
def test_direct_projection_equals_pseudo_inverse(positions, size, deficient):
    """Rank-deficient systems on both sides (a zero row, repeated rows, a zero column), and the
    full-column-rank shortcut (eps* = eps)."""

    @jax.jit
    def systems_and_projection():
        k1, k2, k3 = jax.random.split(jax.random.PRNGKey(9), 3)
        rows = jax.random.normal(k1, (3, positions, size))
        if deficient:
            rows = rows.at[0, 0].set(0.0).at[1, 1].set(rows[1, 0]).at[2, :, 1].set(0.0)
        scale = jnp.exp(jax.random.normal(k2, (size, 2)))
        noise = jax.random.normal(k3, (3, size, 2))
        return rows, scale, noise, direct_projected_noise(rows, scale, noise)

    rows, scale, noise, eps_star = systems_and_projection()
    np.testing.assert_allclose(eps_star, _pinv_projection(rows, scale, noise), atol=1e-10)


def test_per_example_conv_equals_per_example_kernels():
    """R2G2(per_example=True) on a convolution: the value is the convolution of each example with
    its own kernel draw, the gradient (kernel loc, scale and the inputs) that of the convolution
    with the kernel's projected noise, eps* = A^+ A eps per example and output channel."""
    from vigrad.nn.functional import _patches, _per_example_conv2d

    k1, k2, k3, k4, k5 = jax.random.split(jax.random.PRNGKey(10), 5)
    x = jax.random.normal(k1, (3, 5, 4, 2)).at[0, :2].set(0.0)
    shape, strides, padding = (3, 2, 2, 3), (2, 1), "SAME"
    loc = 0.3 * jax.random.normal(k2, shape)
    scale = jnp.exp(0.3 * jax.random.normal(k3, shape))
    parts = GaussianNoise(loc, scale, jnp.zeros(shape), k4)
    # The per-example noise the layer draws from the site's key, as kernels.
    noise = jax.random.normal(k4, (3, 12, 3)).reshape(3, *shape)
    conv = jax.vmap(
        lambda xb, kb: jax.lax.conv_general_dilated(
            xb[None], kb, strides, padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
        )[0]
    )
    rows = jax.jit(lambda x: _patches(x, (3, 2), strides, padding).reshape(3, -1, 12))(x)
    eps_star = _pinv_projection(rows, scale.reshape(12, 3), noise.reshape(3, 12, 3))
    eps_star = jnp.asarray(eps_star).reshape(3, *shape)
    g_out = jax.random.normal(k5, (3, 3, 4, 3))

    def layer(loc, scale, x):
        return jnp.sum(
            g_out
            * jnp.tanh(
                _per_example_conv2d(
                    x,
                    parts._replace(loc=loc, scale=scale),
                    strides,
                    padding,
                    R2G2(per_example=True),
                )
            )
        )

    def reference(loc, scale, x):
        return jnp.sum(g_out * jnp.tanh(conv(x, loc + scale * eps_star)))

    # Every value and gradient in one compiled call: op by op, each is a compile of its own.
    @jax.jit
    def compare(loc, scale, x):
        value = _per_example_conv2d(x, parts, strides, padding, R2G2(per_example=True))
        values = (value, conv(x, loc + scale * noise), conv(x, loc + scale * eps_star))
        grad = lambda f: jax.grad(f, argnums=(0, 1, 2))(loc, scale, x)
        return values, grad(layer), grad(reference)

    (value, drawn, projected), got, want = compare(loc, scale, x)
    np.testing.assert_allclose(value, drawn, atol=1e-12)
    # At the same value: the reference's forward uses eps*, whose outputs equal the draw's.
    np.testing.assert_allclose(projected, value, atol=1e-10)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-10)


def test_dense_layer_lrt_in_the_elbo_is_unbiased():
    """LocalReparam through vigrad.nn.linear: per-row pre-activation sampling keeps the ELBO
    gradient unbiased (same closed form as above, rows independent)."""
    exact = exact_gradient("dense")
    (samples,) = estimates("dense", LocalReparam(), seed=2)
    assert max_abs_z(samples, exact) < THRESHOLD


# --- Conjugate gradients.


def test_cg_converges_within_rank_iterations():
    n, d, ranks = 12, 20, (1, 3, 7)
    a, eps = [], []
    for rank, key in zip(ranks, jax.random.split(jax.random.PRNGKey(5), len(ranks)), strict=True):
        k1, k2, k3 = jax.random.split(key, 3)
        a.append(jax.random.normal(k1, (n, rank)) @ jax.random.normal(k2, (rank, d)))
        eps.append(jax.random.normal(k3, (d,)))

    def solve(a, eps):
        # Matrix-free: only products with A and A^T.
        matvec = lambda beta: a @ (a.T @ beta)
        return conjugate_gradients(matvec, a @ eps, (0,), tol=1e-10, maxiter=n)

    # The three ranks in one compiled call; each keeps its own iteration count under vmap.
    results = jax.jit(jax.vmap(solve))(jnp.stack(a), jnp.stack(eps))
    for i, rank in enumerate(ranks):
        assert int(results.iterations[i]) <= rank
        assert float(results.residual[i]) < 1e-10
        projection = np.linalg.pinv(np.asarray(a[i])) @ np.asarray(a[i]) @ np.asarray(eps[i])
        np.testing.assert_allclose(a[i].T @ results.x[i], projection, atol=1e-8)


def test_cg_solves_independent_systems_at_once():
    key = jax.random.PRNGKey(6)
    k1, k2, k3 = jax.random.split(key, 3)
    x = jax.random.normal(k1, (3, 6))
    scale = jnp.exp(jax.random.normal(k2, (6, 4)))
    noise = jax.random.normal(k3, (6, 4))
    eps_star, result = jax.jit(lambda x, s, e: projected_noise(lambda u: x @ u, s, e, (0,)))(
        x, scale, noise
    )
    assert int(result.iterations) <= 3
    x, scale = np.asarray(x), np.asarray(scale)
    for j in range(4):
        a = x * scale[:, j]
        expected = np.linalg.pinv(a) @ a @ np.asarray(noise[:, j])
        np.testing.assert_allclose(eps_star[:, j], expected, atol=1e-8)


def test_gradients_do_not_flow_through_cg():
    """The while loop of CG is not reverse-differentiable, so a gradient through it would fail to
    trace; the scale gradient is x^T g times the stopped projected noise."""
    x, loc, scale = XW, W_PARAMS["loc"], W_PARAMS["scale"]
    noise = jax.random.normal(jax.random.PRNGKey(7), loc.shape)
    g_out = jnp.array([[0.3, -0.2], [0.5, 0.1]])

    def f(loc, scale, x):
        return jnp.sum(g_out * r2g2_map(jnp.matmul, x, GaussianNoise(loc, scale, noise), (0,)))

    @jax.jit
    def grads_projection_and_value(loc, scale, x):
        eps_star, _ = projected_noise(lambda u: x @ u, scale, noise, (0,))
        value = r2g2_map(jnp.matmul, x, GaussianNoise(loc, scale, noise), (0,))
        return jax.grad(f, argnums=(0, 1, 2))(loc, scale, x), eps_star, value

    (g_loc, g_scale, g_x), eps_star, value = grads_projection_and_value(loc, scale, x)
    x, loc, scale, noise, g_out, eps_star = map(np.asarray, (x, loc, scale, noise, g_out, eps_star))
    np.testing.assert_allclose(g_loc, x.T @ g_out, atol=1e-12)
    np.testing.assert_allclose(g_scale, (x.T @ g_out) * eps_star, atol=1e-12)
    np.testing.assert_allclose(g_x, g_out @ (loc + scale * eps_star).T, atol=1e-12)
    # The forward value is the plain map's.
    np.testing.assert_allclose(value, x @ (loc + scale * noise), atol=1e-12)


# --- Layers.


def test_layers_train_with_each_estimator():
    import optax

    x = jax.random.normal(jax.random.PRNGKey(8), (6, 4, 4, 1))
    y = jnp.arange(6) % 3
    conv = Conv2d("c1", 1, 2, kernel_size=3, estimator="r2g2")
    hidden = Dense("d1", 4 * 4 * 2, 4, estimator="lrt")
    out = Dense("d2", 4, 3, estimator="r2g2")
    plain = Dense("d3", 4, 3, estimator="rt")

    def model(x, y):
        h = jax.nn.relu(conv(x)).reshape(x.shape[0], -1)
        h = jnp.tanh(hidden(h))
        logits = out(h) + plain(h)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("y", dist.Categorical(logits=logits), obs=y)

    def guide(x, y):
        for layer in (conv, hidden, out, plain):
            layer.guide()

    svi = numpyro.infer.SVI(model, guide, optax.adam(3e-2), vigrad.ELBO(num_particles=2))
    # Outside vigrad the layers are plain maps: NumPyro's own ELBO runs them.
    plain_svi = numpyro.infer.SVI(model, guide, optax.adam(1e-2), numpyro.infer.Trace_ELBO())

    # Both fits' init and steps in one compiled call: op by op, every array shape is a compile.
    @jax.jit
    def train(key, plain_key):
        step = lambda state, _: svi.update(state, x, y)
        losses = jax.lax.scan(step, svi.init(key, x, y), length=30)[1]
        return losses, plain_svi.evaluate(plain_svi.init(plain_key, x, y), x, y)

    losses, plain_loss = train(jax.random.PRNGKey(0), jax.random.PRNGKey(1))
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert np.isfinite(float(plain_loss))


# --- Errors.


def _loss(model, guide, *args, estimators=None):
    elbo = vigrad.ELBO(estimators=estimators)
    params = {"loc": W_PARAMS["loc"], "scale": W_PARAMS["scale"]}
    return elbo.loss(jax.random.PRNGKey(0), params, model, guide, *args)


def test_error_non_gaussian_site():
    def guide(x, y):
        numpyro.sample("W", dist.LogNormal(numpyro.param("loc", W_PARAMS["loc"]), 1.0).to_event(2))

    with pytest.raises(vigrad.EstimatorError, match=r"R2G2\(\) cannot serve site 'W'.*Gaussian"):
        _loss(weight_model, guide, XW, YW, estimators={"W": R2G2()})


def test_error_non_diagonal_site():
    def model(x, y):
        w = numpyro.sample("W", dist.MultivariateNormal(jnp.zeros(3), jnp.eye(3)))
        numpyro.sample("y", dist.Normal(linear("W", x, w[:, None]), 1.0).to_event(2), obs=y[:, :1])

    def guide(x, y):
        loc = numpyro.param("mvn_loc", jnp.zeros(3))
        numpyro.sample("W", dist.MultivariateNormal(loc, jnp.eye(3)))

    with pytest.raises(vigrad.EstimatorError, match=r"site 'W'.*non-diagonal"):
        _loss(model, guide, XW, YW, estimators={"W": R2G2()})


def test_error_undeclared_map():
    def model(x, y):
        w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand((3, 2)).to_event(2))
        numpyro.sample("y", dist.Poisson(jnp.exp(x @ w)).to_event(2), obs=y)

    with pytest.raises(
        vigrad.EstimatorError, match=r"site 'W'.*never declared.*vigrad\.nn\.linear"
    ):
        _loss(model, weight_guide, XW, YW, estimators={"W": R2G2()})


def test_error_site_used_outside_the_map():
    def model(x, y):
        w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand((3, 2)).to_event(2))
        z = linear("W", x, 2.0 * w)
        numpyro.sample("y", dist.Poisson(jnp.exp(z)).to_event(2), obs=y)

    with pytest.raises(vigrad.EstimatorError, match=r"site 'W'.*outside the declared map"):
        _loss(model, weight_guide, XW, YW, estimators={"W": R2G2()})


def test_error_site_consumed_by_two_maps():
    def model(x, y):
        w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand((3, 2)).to_event(2))
        z = linear("W", x[:1], w)
        z2 = linear("W", x[1:], w)
        numpyro.sample("y", dist.Poisson(jnp.exp(jnp.concatenate([z, z2]))).to_event(2), obs=y)

    with pytest.raises(vigrad.EstimatorError, match=r"site 'W'.*more than one declared map"):
        _loss(model, weight_guide, XW, YW, estimators={"W": R2G2()})


def test_error_local_reparameterisation_on_conv():
    with pytest.raises(vigrad.EstimatorError, match=r"Layer 'c'.*dense layers only"):
        Conv2d("c", 1, 2, estimator="lrt")
    with pytest.raises(vigrad.EstimatorError, match=r"LocalReparam\(\) on site 'K'.*R2G2"):
        params = C_PARAMS
        vigrad.ELBO(estimators={"K": LocalReparam()}).loss(
            jax.random.PRNGKey(0), params, conv_model, conv_guide, XC, YC
        )
    with pytest.raises(vigrad.EstimatorError, match=r"unknown estimator 'reinforce'"):
        Dense("d", 2, 2, estimator="reinforce")


def test_check_declared_maps_finds_use_outside_the_map():
    from vigrad.nn import check_declared_maps

    def coupled_model(x, y):
        w = numpyro.sample("W", dist.Normal(0.0, 1.0).expand((3, 2)).to_event(2))
        z = linear("W", x, w)
        numpyro.sample("y", dist.Normal(z, jnp.exp(jnp.sum(w))).to_event(2), obs=y)

    with pytest.raises(vigrad.EstimatorError, match=r"site 'W'.*density of site 'y'.*outside"):
        check_declared_maps(coupled_model, weight_guide, XW, YW, estimators={"W": R2G2()})
    # The declared map alone, the site's own prior, and other estimators pass.
    check_declared_maps(weight_model, weight_guide, XW, YW, estimators={"W": R2G2()})
    check_declared_maps(latent_model, latent_guide, YV, estimators={"v": R2G2()})
    check_declared_maps(coupled_model, weight_guide, XW, YW)


def test_declarations_live_on_their_own_trace():
    """What R2-G2 records about a site lives on the particle's guide trace: a failed trace leaves
    nothing behind, and a trace run inside another's model sees only its own sites."""
    from numpyro.handlers import block

    from vigrad.objectives.particles import guide_site

    def failing_model(x, y):
        weight_model(x, y)
        raise RuntimeError("the model failed after its declared map")

    for _ in range(3):
        with pytest.raises(RuntimeError, match="model failed"):
            _loss(failing_model, weight_guide, XW, YW, estimators={"W": R2G2()})
    assert guide_site("W") is None
    expected = _loss(weight_model, weight_guide, XW, YW, estimators={"W": R2G2()})

    inner = []

    def outer_model(x, y):
        # A whole particle of the same model and site names traced inside this one's model.
        inner.append(
            block(lambda: _loss(weight_model, weight_guide, x, y, estimators={"W": R2G2()}))()
        )
        weight_model(x, y)

    outer = _loss(outer_model, weight_guide, XW, YW, estimators={"W": R2G2()})
    np.testing.assert_allclose(inner[0], expected)
    np.testing.assert_allclose(outer, expected)


def test_no_module_level_mutable_state():
    """Estimators, particles, vigrad.nn, the registries and the tracing helper keep no mutable
    module-level objects: what one trace records cannot leak into another."""
    import importlib
    import pkgutil
    import types

    import vigrad.estimators
    import vigrad.nn

    names = [
        f"vigrad.estimators.{m.name}" for m in pkgutil.iter_modules(vigrad.estimators.__path__)
    ]
    names += [f"vigrad.nn.{m.name}" for m in pkgutil.iter_modules(vigrad.nn.__path__)]
    names += ["vigrad.objectives.particles", "vigrad.registry", "vigrad.traces"]
    names += [f"vigrad.diagnostics.{m}" for m in ("select", "gradients", "psis")]
    mutable = []
    for name in names:
        module = importlib.import_module(name)
        for attr, value in vars(module).items():
            if attr.startswith("__") or isinstance(value, types.ModuleType):
                continue
            if isinstance(value, dict | list | set | bytearray):
                mutable.append(f"{name}.{attr}")
            elif isinstance(value, type) and value.__module__ == name:
                mutable += [
                    f"{name}.{attr}.{a}"
                    for a, v in vars(value).items()
                    if not a.startswith("_") and isinstance(v, dict | list | set)
                ]
    assert mutable == []
