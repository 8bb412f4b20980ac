"""Particle blocks split over a ``particles`` mesh axis (particle-parallel fits).

A fit over a mesh with a ``particles`` axis traces its step under that mesh
(:func:`jax.set_mesh`); every particle block of an objective constrains the keys it ``vmap``-s over
to be sharded along the axis, and XLA's partitioner propagates the sharding to every array computed
from them. What combines particles (a mean, a log-mean-exp) then becomes a reduction across devices.
Outside such a mesh the constraint is the identity, so objectives need not know where they run.
"""

from __future__ import annotations

import jax
from jax.sharding import PartitionSpec

PARTICLES = "particles"
"""The mesh axis name over which particle blocks are split."""


def constrain_particles(keys: jax.Array) -> jax.Array:
    """A particle block's keys, sharded over the ambient mesh's ``particles`` axis (the identity
    without such an axis, and for a block whose size the axis does not divide)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or PARTICLES not in mesh.axis_names:
        return keys
    if keys.shape[0] % mesh.shape[PARTICLES]:
        return keys
    return jax.lax.with_sharding_constraint(keys, PartitionSpec(PARTICLES))
