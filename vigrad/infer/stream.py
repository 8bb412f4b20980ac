"""Minibatches streamed from the host into the compiled chunks of a fit.

A data set larger than the device's memory stays on the host (a NumPy array or ``np.memmap``).
Before each chunk of ``n`` steps the host gathers the ``n`` minibatches the chunk needs and
transfers them at once as arrays with a leading step axis; the compiled chunk scans over them, so
no Python code runs between steps. The model receives step ``t``'s minibatch as keyword arguments
and scales its likelihood with a subsampled plate, ``numpyro.plate("data", N, subsample_size=B)``:
for a batch drawn uniformly at random the scaled log likelihood ``(N / B) sum_{i in batch} log p(x_i
| z)`` is an unbiased estimate of the full one, so the objective's gradient stays unbiased.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping

import numpy as np


class Minibatches:
    """Uniformly drawn minibatches of host arrays, for ``vigrad.fit(..., stream=...)``.

    Step ``t`` draws ``batch_size`` distinct indices uniformly from the ``N`` rows with a NumPy
    generator seeded by ``(seed, t)``, so a run does not depend on how it is cut into chunks and a
    resumed run sees the same batches. The indices are sorted, so a memory-mapped file is read in
    order.

    Args:
        batch_size: rows per step ``B``.
        seed: the seed of the index draws.
        max_device_bytes: the most bytes of data transferred to the device at once; the fit's
            chunks are shortened to stay within it (``None``: no limit).
        **arrays: named host arrays sharing their leading axis (``N`` rows), passed to the model
            as keyword arguments of that name, each with ``B`` rows.
    """

    def __init__(
        self, batch_size: int, *, seed: int = 0, max_device_bytes: int | None = None, **arrays
    ):
        if not arrays:
            raise ValueError("Minibatches() needs at least one named array, e.g. x=X")
        sizes = {name: np.shape(a)[0] for name, a in arrays.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"Minibatches(): the arrays have different numbers of rows {sizes}")
        self.num_data = next(iter(sizes.values()))
        self.batch_size = int(batch_size)
        if not 1 <= self.batch_size <= self.num_data:
            raise ValueError(
                f"Minibatches(batch_size={batch_size}): use 1 <= batch_size <= {self.num_data}"
            )
        self.arrays = arrays
        self.seed = int(seed)
        self.max_device_bytes = max_device_bytes

    @property
    def step_bytes(self) -> int:
        """Bytes of one step's minibatch."""
        return sum(
            self.batch_size * int(np.prod(np.shape(a)[1:])) * np.dtype(a.dtype).itemsize
            for a in self.arrays.values()
        )

    def batch(self, step: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng((self.seed, step))
        index = np.sort(rng.choice(self.num_data, self.batch_size, replace=False))
        return {name: np.asarray(a[index]) for name, a in self.arrays.items()}

    def example(self) -> dict[str, np.ndarray]:
        """Step 0's batch, to trace the model with."""
        return self.batch(0)

    def chunk(self, step: int, n: int, size: int) -> dict[str, np.ndarray]:
        """Steps ``step, ..., step + n - 1``'s batches stacked, padded to ``size`` rows."""
        batches = [self.batch(t) for t in range(step, step + n)]
        batches += batches[-1:] * (size - n)
        return {name: np.stack([b[name] for b in batches]) for name in self.arrays}


class BatchIterator:
    """Minibatches from an iterator of ``{name: array}`` mappings (one per step, equal shapes).

    The iterator is consumed in order, a chunk's worth at a time. A checkpoint cannot hold an
    iterator's position: a resumed fit continues with whatever the iterator yields next.
    """

    def __init__(self, batches: Iterable[Mapping[str, np.ndarray]], max_device_bytes=None):
        self._it: Iterator = iter(batches)
        first = {k: np.asarray(v) for k, v in next(self._it).items()}
        self._it = itertools.chain([first], self._it)
        self._first = first
        self.max_device_bytes = max_device_bytes
        self.batch_size = len(next(iter(first.values())))

    @property
    def step_bytes(self) -> int:
        return sum(a.nbytes for a in self._first.values())

    def example(self) -> dict[str, np.ndarray]:
        """The first batch, to trace the model with."""
        return self._first

    def chunk(self, step: int, n: int, size: int) -> dict[str, np.ndarray]:
        batches = [{k: np.asarray(v) for k, v in b.items()} for b in itertools.islice(self._it, n)]
        if len(batches) < n:
            raise ValueError(
                f"the batch iterator ran out after {step + len(batches)} batches; the fit needs "
                "one per step"
            )
        batches += batches[-1:] * (size - n)
        return {name: np.stack([b[name] for b in batches]) for name in self._first}


def as_stream(source) -> Minibatches | BatchIterator:
    """A fit's ``stream=``: :class:`Minibatches`, :class:`BatchIterator` or an iterable of batches."""
    if isinstance(source, (Minibatches, BatchIterator)):
        return source
    if isinstance(source, Iterable) and not isinstance(source, (Mapping, np.ndarray)):
        return BatchIterator(source)
    raise TypeError(
        "fit(stream=...) takes vigrad.Minibatches(batch_size, x=X, ...) or an iterable of "
        f"{{name: array}} minibatches, not {type(source).__name__}"
    )
