"""scikit-learn's bundled handwritten digits (1797 images of 8 x 8 pixels), shared by zoo models."""

import jax.numpy as jnp


def digits(binary: bool = True):
    """Images as ``[1797, 64]`` floats (binarised at half intensity if ``binary``) and labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = data.data / 16.0
    if binary:
        x = (x > 0.5).astype("float32")
    return jnp.asarray(x, jnp.float32), jnp.asarray(data.target)
