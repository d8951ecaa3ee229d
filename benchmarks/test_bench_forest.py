"""Random forest: the splitter's sort, fit and predict against scikit-learn in the same run.

Suites: ``forest_sort`` (hybrid sort of (value, index) pairs vs numpy argsort + take, n = 16 ..
100 000, continuous and 5-distinct float32), ``forest_fit`` (100 trees on make_classification
100 000 x 50, 20 informative, 3 classes, n_jobs=2: exact and histogram vs scikit-learn; growth
with rows, features and depth at 20 trees), ``forest_predict`` (20 000 rows through those
forests) and ``forest_accuracy`` (held-out accuracy of the bundled datasets, recorded in
extra_info). ``--quick`` shrinks every size. Each suite checks its output first: the sort
against numpy, the C++ trees against the Python reference on a small fit.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import pytest

from benchmarks.harness import verify
from modelkernels import kernels
from modelkernels.kernels.forest import RandomForestClassifier
from modelkernels.kernels.native import native, native_unavailable

sk_ensemble = pytest.importorskip("sklearn.ensemble")
sk_datasets = pytest.importorskip("sklearn.datasets")
sk_selection = pytest.importorskip("sklearn.model_selection")

pytestmark = pytest.mark.skipif(native_unavailable() is not None, reason=str(native_unavailable()))
N_JOBS = 2

# ------------------------------------------------------------------------------------- sort

SORT_SIZES = [16, 64, 256, 1024, 4096, 16384, 100000]


def _column(n: int, kind: str) -> np.ndarray:
    rng = np.random.default_rng(n)
    if kind == "continuous":
        return rng.standard_normal(n).astype(np.float32)
    return rng.integers(0, 5, n).astype(np.float32)


SORT_CASES = [(k, n, impl) for k in ("continuous", "few-distinct") for n in SORT_SIZES
              for impl in ("hybrid_sort", "numpy argsort+take")]


@pytest.mark.parametrize("kind,n,impl", SORT_CASES, ids=[f"{k}-{n}-{i.split()[0]}" for k, n, i in SORT_CASES])
def test_forest_sort(bench, quick, kind: str, n: int, impl: str) -> None:  # type: ignore[no-untyped-def]
    if quick and n > 4096:
        pytest.skip("--quick: n <= 4096")
    base = _column(n, kind)
    ids = np.arange(n, dtype=np.int32)
    if impl == "hybrid_sort":
        binding = native().hybrid_sort

        def fn(v: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            binding(v, i)
            return v, i
    else:
        def fn(v: np.ndarray, i: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            order = np.argsort(v)
            return v[order], i[order]
    v, i = fn(base.copy(), ids.copy())
    verify(v, np.sort(base), what=f"{impl} n={n} {kind}")
    verify(base[i], v, what=f"{impl} n={n} {kind}: indices carry their values")
    bench(fn, suite="forest_sort", case=f"n={n} {kind}", series=kind, size=n, impl=impl,
          role="ours" if impl == "hybrid_sort" else "peer", setup=lambda: ((base.copy(), ids.copy()), {}),
          rounds=30 if n >= 16384 else 200)


# ------------------------------------------------------------------------------------- fit

@functools.lru_cache(maxsize=4)
def _data(n_train: int, n_features: int) -> tuple[np.ndarray, ...]:
    X, y = sk_datasets.make_classification(n_train + 20000, n_features, n_informative=max(3, min(20, n_features // 2)),
                                           n_classes=3, random_state=0)
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


def _verify_against_reference(splitter: str) -> None:
    X, y, _, _ = _data(400, 8)
    kw = dict(n_estimators=2, splitter=splitter, random_state=0, max_bins=16)
    fast = RandomForestClassifier(**kw).fit(X[:300], y[:300])
    with kernels.use_backend("reference"):
        slow = RandomForestClassifier(**kw).fit(X[:300], y[:300])
    for k in ("feature_", "threshold_", "child_", "value_"):
        verify(getattr(fast, k), getattr(slow, k), what=f"fit {splitter}: {k}")


def _make(impl: str, n_trees: int, max_depth: int | None = None) -> Any:
    if impl == "scikit-learn":
        return sk_ensemble.RandomForestClassifier(n_trees, max_depth=max_depth, n_jobs=N_JOBS, random_state=0)
    return RandomForestClassifier(n_trees, max_depth=max_depth, splitter=impl.split()[-1], n_jobs=N_JOBS,
                                  random_state=0)


FIT_IMPLS = [("ours exact", "ours"), ("ours hist", "ours"), ("scikit-learn", "peer")]


def _headline(quick: bool) -> tuple[int, int, int]:
    return (10000, 20, 10) if quick else (100000, 50, 100)


_FITTED: dict[tuple[str, bool], Any] = {}


@pytest.mark.parametrize("impl,role", FIT_IMPLS, ids=[i for i, _ in FIT_IMPLS])
def test_forest_fit(bench, quick, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    if impl != "scikit-learn":
        _verify_against_reference(impl.split()[-1])
    n, f, trees = _headline(quick)
    X, y, Xte, yte = _data(n, f)
    est = _make(impl, trees).fit(X, y)
    bench(lambda: est.fit(X, y), suite="forest_fit", case=f"{n}x{f}, {trees} trees", impl=impl, role=role,
          rounds=1, extra={"accuracy": float(est.score(Xte, yte))})
    _FITTED[(impl, quick)] = est


GROWTH = [("rows", n, 50, None) for n in (10000, 30000, 100000)] + \
         [("features", 30000, f, None) for f in (10, 25, 50)] + \
         [("depth", 30000, 50, d) for d in (5, 10, 20)]


@pytest.mark.parametrize("series,n,f,depth", GROWTH, ids=[f"{s}-{n}x{f}-d{d}" for s, n, f, d in GROWTH])
@pytest.mark.parametrize("impl,role", FIT_IMPLS, ids=[i for i, _ in FIT_IMPLS])
def test_forest_fit_growth(bench, quick, series: str, n: int, f: int, depth: int | None, impl: str,
                           role: str) -> None:  # type: ignore[no-untyped-def]
    if quick:
        n, f = n // 10, max(5, f // 5)
    X, y, _, _ = _data(n, f)
    trees = 5 if quick else 20
    est = _make(impl, trees, depth)
    size = {"rows": n, "features": f, "depth": depth}[series]
    bench(lambda: est.fit(X, y), suite="forest_fit", case=f"{series}: {n}x{f} depth {depth}, {trees} trees",
          series=series, size=size, impl=impl, role=role, rounds=1)


# ------------------------------------------------------------------------------------- predict

@pytest.mark.parametrize("impl,role", FIT_IMPLS, ids=[i for i, _ in FIT_IMPLS])
def test_forest_predict(bench, quick, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    n, f, trees = _headline(quick)
    X, y, Xte, _ = _data(n, f)
    est = _FITTED.get((impl, quick)) or _make(impl, trees).fit(X, y)
    if impl != "scikit-learn":
        with kernels.use_backend("reference"):
            ref = est.predict_proba(Xte[:50])
        verify(est.predict_proba(Xte[:50]), ref, what=f"predict {impl}")
    if impl == "scikit-learn":
        model_bytes = sum(e.tree_.__getstate__()["nodes"].nbytes + e.tree_.value.nbytes for e in est.estimators_)
    else:
        model_bytes = est.model_nbytes_
    bench(lambda: est.predict_proba(Xte), suite="forest_predict", case=f"{Xte.shape[0]} rows, {trees} trees",
          impl=impl, role=role, rounds=10, extra={"model_bytes": model_bytes})


# ------------------------------------------------------------------------------------- accuracy

ACCURACY_SETS = {
    "breast_cancer": lambda q: sk_datasets.load_breast_cancer(return_X_y=True),
    "digits": lambda q: sk_datasets.load_digits(return_X_y=True),
    "wine": lambda q: sk_datasets.load_wine(return_X_y=True),
    "iris": lambda q: sk_datasets.load_iris(return_X_y=True),
    "make_classification": lambda q: sk_datasets.make_classification(3000, 20, n_informative=8, n_classes=3,
                                                                      random_state=0),
    "covertype-like": lambda q: sk_datasets.make_classification(
        20000 if q else 200000, 54, n_informative=20, n_classes=7, n_clusters_per_class=3, random_state=0),
    "low-cardinality ints": lambda q: _low_cardinality(),
}


def _low_cardinality() -> tuple[np.ndarray, np.ndarray]:
    X, y = sk_datasets.make_classification(5000, 16, n_informative=8, n_classes=3, random_state=3)
    return np.round(X * 1.5), y


@pytest.mark.parametrize("dataset", list(ACCURACY_SETS))
@pytest.mark.parametrize("impl,role", FIT_IMPLS, ids=[i for i, _ in FIT_IMPLS])
def test_forest_accuracy(bench, quick, dataset: str, impl: str, role: str) -> None:  # type: ignore[no-untyped-def]
    """Mean held-out accuracy over seeds (recorded as extra_info['accuracy']); one fit timed."""
    X, y = ACCURACY_SETS[dataset](quick)
    big = X.shape[0] > 10000
    seeds = range(1 if big or quick else 5)
    trees = 20 if big or quick else 100
    scores = []
    for s in seeds:
        Xtr, Xte, ytr, yte = sk_selection.train_test_split(X, y, test_size=0.3, random_state=s, stratify=y)
        est = _make(impl, trees)
        est.set_params(random_state=s)
        scores.append(est.fit(Xtr, ytr).score(Xte, yte))
    bench(lambda: est.fit(Xtr, ytr), suite="forest_accuracy",
          case=f"{dataset} ({X.shape[0]}x{X.shape[1]}), {trees} trees", impl=impl, role=role, rounds=1,
          extra={"accuracy": float(np.mean(scores)), "seeds": len(scores)})
