"""Bayesian neural-network building blocks whose linear maps declare their Gaussian inputs.

* :func:`linear`, :func:`conv2d`, :func:`latent_linear`: a linear map of a latent site, with the
  gradient of the site's estimator (:class:`~vigrad.R2G2`, :class:`~vigrad.LocalReparam`, or the
  plain map under any other);
* :class:`Dense`, :class:`Conv2d`: layers whose weights are NumPyro latent sites, with the estimator
  chosen per layer ("rt", "lrt", "r2g2");
* :func:`check_declared_maps`: a trace-time check that a site under R2-G2 meets the loss only
  through its declared map.
"""

from vigrad.nn.check import check_declared_maps
from vigrad.nn.functional import conv2d, latent_linear, linear, local_reparam_linear
from vigrad.nn.layers import Conv2d, Dense, estimator_for

__all__ = [
    "Conv2d",
    "Dense",
    "check_declared_maps",
    "conv2d",
    "estimator_for",
    "latent_linear",
    "linear",
    "local_reparam_linear",
]
