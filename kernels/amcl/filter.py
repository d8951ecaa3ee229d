"""``ParticleFilter``: nav2_amcl's localizer (``pyimpl.amcl.filter``) running on the dispatched ops,
so the Numba kernels run where they can and the reference elsewhere.

``backend="reference"`` (or ``kernels.use_backend("reference")``) runs the very same filter on the
reference kernels: with one ``random_seed`` both give the same particles, step for step.
``kld_bins`` picks the structure that counts and clusters the (x, y, θ) bins: ``"hash"`` (the
default, the faster on every measured case: BENCHMARKS.md) or ``"kdtree"`` (nav2's tree); both give
the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from modelkernels.kernels.amcl import ops
from modelkernels.kernels.registry import forced_backend
from modelkernels.pyimpl.amcl import filter as reference_filter
from modelkernels.pyimpl.amcl.maps import OccupancyMap

KLD_BINS = {"hash": "numba", "kdtree": "numba_kdtree"}  # structure -> its backend of the bin ops


def _on_bins(fn: Callable[..., Any], op: str, kld_bins: str, backend: str | None) -> Callable[..., Any]:
    """``fn`` on the backend of ``kld_bins`` where the Numba kernels would run; what a caller forces
    otherwise (``backend=``, ``use_backend``, the environment) is kept."""
    def run(*args: Any, **kwargs: Any) -> Any:
        forced, _ = forced_backend(op, backend)
        if forced in (None, "numba") and ops.numba_unavailable() is None:
            forced = KLD_BINS[kld_bins]
        return fn(*args, backend=forced, **kwargs)
    return run


def dispatched_kernels(backend: str | None = None, kld_bins: str = "hash") -> dict[str, Any]:
    """The filter's kernel table as dispatched ops (``backend`` forces one for all; ``kld_bins``
    picks the bin structure of resampling and clustering)."""
    if kld_bins not in KLD_BINS:
        raise ValueError(f"kld_bins={kld_bins!r}: expected one of {', '.join(map(repr, KLD_BINS))}")
    return {
        "motion": partial(ops.amcl_motion, backend=backend),
        "likelihood_field": partial(ops.amcl_likelihood_field, backend=backend),
        "likelihood_field_prob": partial(ops.amcl_likelihood_field_prob, backend=backend),
        "beam": partial(ops.amcl_beam_model, backend=backend),
        "kld_resample": _on_bins(ops.amcl_kld_resample, "amcl_kld_resample", kld_bins, backend),
        "cluster_stats": _on_bins(ops.amcl_cluster_stats, "amcl_cluster_stats", kld_bins, backend),
        "distance_map": partial(ops.amcl_distance_map, backend=backend),
    }


class ParticleFilter(reference_filter.ParticleFilter):
    """AMCL over an ``OccupancyMap`` with nav2's parameter names and defaults.

    >>> pf = ParticleFilter(load_map("map.yaml"), random_seed=0)        # doctest: +SKIP
    >>> pf.initialize((1.0, 2.0, 0.0), (0.25, 0.25, 0.07))              # doctest: +SKIP
    >>> pf.update(odom_pose, Scan(ranges, angle_min, angle_increment, range_max=12.0))  # doctest: +SKIP
    >>> pf.estimate().pose                                              # doctest: +SKIP
    """

    def __init__(self, occupancy_map: OccupancyMap, *, backend: str | None = None, kld_bins: str = "hash",
                 **params: Any) -> None:
        super().__init__(occupancy_map, kernels=dispatched_kernels(backend, kld_bins), **params)
        self.backend = backend
        self.kld_bins = kld_bins
