"""Write the zoo's bundled data sets (vigrad/zoo/models/data/*.npz) from scikit-learn's copies.

    .venv/bin/python scripts/make_zoo_data.py

Needs scikit-learn (the ``dev`` extra). Values are stored exactly as scikit-learn loads them
(digit pixels as the integers 0..16, breast-cancer features as float64), so the zoo's data and
its reference posteriors do not depend on whether scikit-learn is installed. Sources and licences:
vigrad/zoo/models/data/README.md.
"""

from pathlib import Path

import numpy as np

try:
    from sklearn.datasets import load_breast_cancer, load_digits
except ImportError as err:
    raise SystemExit(
        "scripts/make_zoo_data.py needs scikit-learn, part of the dev extra: pip install '.[dev]'"
    ) from err

OUT = Path(__file__).resolve().parent.parent / "vigrad" / "zoo" / "models" / "data"


def main() -> None:
    digits = load_digits()
    images = digits.data.astype(np.uint8)
    assert np.array_equal(images, digits.data), "digit pixels are not integers in 0..16"
    np.savez_compressed(OUT / "digits.npz", images=images, labels=digits.target.astype(np.uint8))
    cancer = load_breast_cancer()
    np.savez_compressed(
        OUT / "breast_cancer.npz",
        x=cancer.data,
        y=cancer.target.astype(np.uint8),
        feature_names=np.asarray(cancer.feature_names, dtype=str),
    )
    for path in sorted(OUT.glob("*.npz")):
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
