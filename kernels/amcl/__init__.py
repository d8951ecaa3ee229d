"""AMCL: nav2_amcl's particle filter with Numba kernels for its hot paths.

``ParticleFilter(map, **nav2_params)``, ``load_map("map.yaml")``, ``Scan``; the ops
(``amcl_motion``, ``amcl_likelihood_field``, ``amcl_likelihood_field_prob``, ``amcl_beam_model``,
``amcl_kld_resample``, ``amcl_cluster_stats``, ``amcl_distance_map``, ``amcl_ray_cast``,
``amcl_kld_bins``, ``amcl_bin_clusters``) dispatch between the Numba backends and the ``pyimpl.amcl``
reference. See docs/amcl.md.
"""

from modelkernels.kernels.amcl.bin_ops import amcl_bin_clusters, amcl_kld_bins
from modelkernels.kernels.amcl.filter import ParticleFilter
from modelkernels.kernels.amcl.map_io import load_map, save_map
from modelkernels.kernels.amcl.ops import (
    amcl_beam_model,
    amcl_cluster_stats,
    amcl_distance_map,
    amcl_kld_resample,
    amcl_likelihood_field,
    amcl_likelihood_field_prob,
    amcl_motion,
    amcl_ray_cast,
    get_threads,
    set_threads,
)
from modelkernels.pyimpl.amcl.filter import Estimate, Scan
from modelkernels.pyimpl.amcl.maps import OccupancyMap
from modelkernels.pyimpl.amcl.params import AmclParameters

__all__ = [
    "AmclParameters",
    "Estimate",
    "OccupancyMap",
    "ParticleFilter",
    "Scan",
    "amcl_beam_model",
    "amcl_bin_clusters",
    "amcl_cluster_stats",
    "amcl_distance_map",
    "amcl_kld_bins",
    "amcl_kld_resample",
    "amcl_likelihood_field",
    "amcl_likelihood_field_prob",
    "amcl_motion",
    "amcl_ray_cast",
    "get_threads",
    "load_map",
    "save_map",
    "set_threads",
]
