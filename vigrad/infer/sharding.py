"""Fits over several devices and processes with ``jax.sharding`` (no communication of vigrad's own).

A fit's mesh has up to two axes. On ``"data"`` the data plate is split: every array argument whose
leading axis is the data plate's size, and every streamed minibatch, is sharded along that axis, so
each device evaluates the likelihood of its part of the data and XLA's SPMD partitioner inserts the
all-reduce that sums the gradient across devices. On ``"particles"`` the objective's particles are
split: :func:`vigrad.objectives.particle_axis.constrain_particles` shards a particle block's keys, and the partitioner propagates
that sharding through the vectorised particle computations; objectives that combine particles
(IWELBO's log-mean-exp, leave-one-out baselines) reduce across the axis with XLA collectives. The
parameters, optimiser and control-variate states are replicated. Each device computes the same
mathematical function as one device does, so results agree to floating-point reassociation.

With ``jax.distributed`` (one process per host) the mesh spans every process's devices; arrays are
assembled with ``jax.make_array_from_callback``, each process supplying the shards it holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vigrad.objectives.particle_axis import PARTICLES
from vigrad.traces import trace_program

DATA = "data"
AXES = (DATA, PARTICLES)


def make_mesh(devices: int | Sequence[jax.Device] | None, mesh: Mesh | None) -> Mesh | None:
    """The fit's mesh: ``mesh`` as given, or ``devices`` (a count or a list) on a ``data`` axis."""
    if devices is not None and mesh is not None:
        raise ValueError("fit(): pass devices= or mesh=, not both")
    if mesh is not None:
        unknown = set(mesh.axis_names) - set(AXES)
        if unknown:
            raise ValueError(
                f"fit(mesh=...): unknown mesh axes {sorted(unknown)}; a fit's mesh has the axes "
                f"'{DATA}' (split the data plate) and/or '{PARTICLES}' (split the particles)"
            )
        return mesh
    if devices is None:
        return None
    available = jax.devices()
    if isinstance(devices, int):
        if not 1 <= devices <= len(available):
            raise ValueError(
                f"fit(devices={devices}): there are {len(available)} devices; pass a number from "
                f"1 to {len(available)} or a list of devices"
            )
        devices = available[:devices]
    return Mesh(np.array(list(devices)), (DATA,))


def axis_size(mesh: Mesh | None, name: str) -> int:
    return 1 if mesh is None or name not in mesh.axis_names else mesh.shape[name]


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Every leaf of ``tree`` as a global array with ``sharding`` (typed PRNG keys included)."""

    def one(x):
        if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=impl)
        if isinstance(x, jax.Array) and x.is_fully_addressable and sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def replicate(tree: Any, mesh: Mesh) -> Any:
    return place(tree, NamedSharding(mesh, PartitionSpec()))


def data_plate_size(model: Callable, args: tuple, kwargs: dict, data_plate: str | None) -> int:
    """The size of the data plate: ``data_plate``, the one subsampled plate, or the largest."""
    traced = trace_program(model, args, kwargs, abstract=True).plates
    plates = {name: site["args"][:2] for name, site in traced.items()}
    if data_plate is not None:
        if data_plate not in plates:
            raise ValueError(
                f"fit(data_plate='{data_plate}'): the model has no plate of that name; its plates "
                f"are {sorted(plates)}"
            )
        return plates[data_plate][0]
    if not plates:
        raise ValueError(
            "fit() split over a 'data' mesh axis needs a data plate (numpyro.plate) in the model; "
            "without one, use a mesh with a 'particles' axis only"
        )
    subsampled = [size for size, sub in plates.values() if sub is not None and sub < size]
    return subsampled[0] if len(subsampled) == 1 else max(size for size, _ in plates.values())


def place_data(dynamic: list, mesh: Mesh, num_data: int | None) -> list:
    """Array arguments on the mesh: split along ``data`` where their leading axis is the data
    plate's (``num_data``), replicated otherwise."""
    devices = axis_size(mesh, DATA)
    out = []
    for x in dynamic:
        if devices > 1 and np.ndim(x) >= 1 and np.shape(x)[0] == num_data:
            if num_data % devices:
                raise ValueError(
                    f"the data plate has {num_data} points, which do not split evenly over "
                    f"{devices} devices on the '{DATA}' axis; use a device count that divides "
                    f"{num_data}, or drop {num_data % devices} points"
                )
            out.append(place(x, NamedSharding(mesh, PartitionSpec(DATA))))
        else:
            out.append(replicate(x, mesh))
    return out


@contextlib.contextmanager
def particles_over(mesh: Mesh | None):
    """While tracing a fit's step: particle blocks are split over the mesh's ``particles`` axis.

    The mesh is JAX's own ambient mesh (:func:`jax.set_mesh`), which ``constrain_particles``
    reads while the step is traced; vigrad keeps no state of its own for it.
    """
    if axis_size(mesh, PARTICLES) == 1:
        yield
        return
    with jax.set_mesh(mesh):
        yield


def host_copy(tree: Any) -> Any:
    """Leaves as NumPy arrays on every process (replicated leaves read locally, others gathered)."""

    def one(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=impl)
        if x.is_fully_replicated:
            return jax.device_get(x.addressable_data(0))
        return multihost_utils.process_allgather(x, tiled=True)

    return jax.tree.map(one, tree)
