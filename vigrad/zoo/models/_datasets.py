"""The real data sets bundled with the zoo (``data/*.npz`` beside this file), shared by zoo models.

* ``digits``: the UCI optical recognition of handwritten digits test set (Alpaydin and Kaynak
  1998), 1797 images of 8 x 8 pixels counting 0..16, and their labels 0..9;
* ``breast_cancer``: the UCI breast cancer Wisconsin (diagnostic) data (Wolberg, Street and
  Mangasarian 1995), 569 tumours, 30 features, label 1 = benign, 0 = malignant.

Both are the copies that scikit-learn bundles, stored by ``scripts/make_zoo_data.py``; both are
licensed CC BY 4.0 by the UCI Machine Learning Repository. Sources and citations:
``data/README.md``.
"""

from pathlib import Path

import jax.numpy as jnp
import numpy as np

DATA = Path(__file__).resolve().parent / "data"


def digits(binary: bool = True):
    """Images as ``[1797, 64]`` floats (binarised at half intensity if ``binary``) and labels."""
    with np.load(DATA / "digits.npz") as data:
        x = data["images"] / 16.0
        labels = data["labels"].astype(np.int64)
    if binary:
        x = (x > 0.5).astype("float32")
    return jnp.asarray(x, jnp.float32), jnp.asarray(labels)


def breast_cancer():
    """Features ``[569, 30]`` (float64, unscaled) and labels ``[569]`` (1 = benign)."""
    with np.load(DATA / "breast_cancer.npz") as data:
        return data["x"], data["y"].astype(np.int64)
