"""``ParticleFilter``: nav2_amcl's localizer (``pyimpl.amcl.filter``) running on the dispatched ops,
so the Numba kernels run where they can and the reference elsewhere.

``backend="reference"`` (or ``kernels.use_backend("reference")``) runs the very same filter on the
reference kernels: with one ``random_seed`` both give the same particles, step for step.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from kernels.amcl import ops
from pyimpl.amcl import filter as reference_filter
from pyimpl.amcl.maps import OccupancyMap


def dispatched_kernels(backend: str | None = None) -> dict[str, Any]:
    """The filter's kernel table as dispatched ops (``backend`` forces one for all)."""
    return {
        "motion": partial(ops.amcl_motion, backend=backend),
        "likelihood_field": partial(ops.amcl_likelihood_field, backend=backend),
        "likelihood_field_prob": partial(ops.amcl_likelihood_field_prob, backend=backend),
        "beam": partial(ops.amcl_beam_model, backend=backend),
        "kld_resample": partial(ops.amcl_kld_resample, backend=backend),
        "cluster_stats": partial(ops.amcl_cluster_stats, backend=backend),
        "distance_map": partial(ops.amcl_distance_map, backend=backend),
    }


class ParticleFilter(reference_filter.ParticleFilter):
    """AMCL over an ``OccupancyMap`` with nav2's parameter names and defaults.

    >>> pf = ParticleFilter(load_map("map.yaml"), random_seed=0)        # doctest: +SKIP
    >>> pf.initialize((1.0, 2.0, 0.0), (0.25, 0.25, 0.07))              # doctest: +SKIP
    >>> pf.update(odom_pose, Scan(ranges, angle_min, angle_increment, range_max=12.0))  # doctest: +SKIP
    >>> pf.estimate().pose                                              # doctest: +SKIP
    """

    def __init__(self, occupancy_map: OccupancyMap, *, backend: str | None = None, **params: Any) -> None:
        super().__init__(occupancy_map, kernels=dispatched_kernels(backend), **params)
        self.backend = backend
