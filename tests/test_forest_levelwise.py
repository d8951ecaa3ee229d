"""Level-wise growth (``kernels.forest.levelwise``) on in-memory rows: the engine interface that
Spark (and later Dask or Ray) plugs into, without Spark."""

from __future__ import annotations

import numpy as np

from modelkernels import kernels
from modelkernels.kernels.forest.levelwise import GrowthParams, LocalEngine, bag_counts, grow_forest, quantile_splits


def _data(n: int, n_features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, n_features)).astype(np.float32)
    y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int32) + (X[:, 2] > 1.0)
    return X, y.astype(np.int32)


def _grow_local(backend: str, max_depth: int = 4) -> dict[str, np.ndarray]:
    X, y = _data(600, 5, 0)
    n_bins, values, offsets = quantile_splits(X, 16)
    bins = np.stack([np.searchsorted(values[offsets[f]:offsets[f + 1]], X[:, f]) for f in range(5)], 1)
    bag = bag_counts(np.random.default_rng(1), 600, 3, 1.0, True)
    engine = LocalEngine(bins.astype(np.uint8), y, np.ones(600), bag, batch_rows=250)
    p = GrowthParams(n_trees=3, max_depth=max_depth, max_features=3, criterion=0, min_instances=2, min_info_gain=0.0,
                     min_weight=0.0, max_memory_mb=1, seed=5)
    with kernels.use_backend(backend):
        return grow_forest(engine, p, n_bins, values, offsets, 3)


def test_levelwise_native_equals_reference() -> None:
    native, ref = _grow_local("native", max_depth=3), _grow_local("reference", max_depth=3)
    for k in ("feature", "threshold", "child", "node_offsets", "leaf_offsets"):
        np.testing.assert_array_equal(native[k], ref[k], err_msg=k)
    np.testing.assert_allclose(native["value"], ref["value"], rtol=1e-6)


def test_levelwise_forest_predicts_and_respects_depth() -> None:
    from modelkernels.kernels.forest.spark.convert import fitted_estimator

    model = _grow_local("native", max_depth=4)
    est = fitted_estimator(model, 5, 3, {"numTrees": 3, "maxDepth": 4})
    X, y = _data(400, 5, 9)
    assert np.mean(est.predict(X) == y) > 0.8
    assert est.feature_importances_.argmax() == 0 and abs(est.feature_importances_.sum() - 1) < 1e-12
    # depth 4 at most: at most 2**5 - 1 nodes per tree
    assert (np.diff(model["node_offsets"]) <= 31).all() and model["feature"].max() < 5
