"""``RandomForestClassifier``: scikit-learn's estimator API over the C++ trees, with Spark ML's
parameter names accepted too (with Spark's meanings).

Breiman's random forest (2001): each tree grows on a bootstrap sample (``counts[t, i]`` draws of
row i, numpy's ``Generator`` seeded by ``random_state``) and, at each node, on a random subset of
the features (splitmix64 per tree, seeded from the same generator); predictions average the
trees' leaf class fractions. Trees, split search and prediction run in C++ (``kernels.forest.ops``)
unless the reference backend is forced, e.g. ``kernels.use_backend("reference")``.

With scikit-learn installed the class derives from ``BaseEstimator`` and ``ClassifierMixin``
(clone, pipelines, grid search, tags); without it a small base gives ``get_params`` /
``set_params`` / ``score``, and ``import modelkernels.kernels`` never needs scikit-learn.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from modelkernels.kernels.forest import ops
from modelkernels.kernels.forest.validation import (
    NotFittedError,
    check_class_weight_values,
    check_int,
    check_real,
    check_sample_weight,
    check_X,
    check_y,
    is_int,
    is_real,
    param_error,
    scale_weights,
)
from modelkernels.pyimpl.forest import check_trees

try:
    from sklearn.base import BaseEstimator as _Base
    from sklearn.base import ClassifierMixin as _Mixin
except ImportError:  # pragma: no cover - exercised only without scikit-learn
    class _Base:  # type: ignore[no-redef]
        """get_params / set_params as scikit-learn's BaseEstimator (constructor arguments)."""

        def get_params(self, deep: bool = True) -> dict[str, Any]:
            del deep
            names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
            return {name: getattr(self, name) for name in names}

        def set_params(self, **params: Any) -> Any:
            valid = self.get_params()
            for k, v in params.items():
                if k not in valid:
                    raise ValueError(f"Invalid parameter {k!r} for estimator {type(self).__name__}. "
                                     f"Valid parameters are: {sorted(valid)!r}.")
                setattr(self, k, v)
            return self

    class _Mixin:  # type: ignore[no-redef]
        """score as scikit-learn's ClassifierMixin: mean accuracy."""

        _estimator_type = "classifier"

        def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
            pred = self.predict(X)  # type: ignore[attr-defined]
            return float(np.average(pred == np.asarray(y), weights=sample_weight))


FORMAT_VERSION = 1
SPARK_DEFAULTS: dict[str, Any] = dict(numTrees=20, maxDepth=5, maxBins=32, impurity="gini",
                                      featureSubsetStrategy="auto", subsamplingRate=1.0, minInstancesPerNode=1,
                                      minInfoGain=0.0)
_SPARK_TO_SKLEARN = dict(numTrees="n_estimators", maxDepth="max_depth", maxBins="max_bins", impurity="criterion",
                         featureSubsetStrategy="max_features", subsamplingRate="max_samples",
                         minInstancesPerNode="min_samples_leaf", minInfoGain="min_info_gain", seed="random_state")
_Model = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]
NODE_DTYPE = np.dtype([("feature", np.int32), ("threshold", np.float32), ("child", np.int32)])
_MODEL_ARRAYS = ("feature", "threshold", "child", "value", "node_offsets", "leaf_offsets")


def _threads(n_jobs: int | None) -> int:
    """scikit-learn's n_jobs as a thread count: None is 1, -1 all cores, -2 all but one; at most
    the machine's cores (more threads than cores would only add start-up cost)."""
    cores = os.cpu_count() or 1
    if n_jobs is None:
        return 1
    return min(cores, n_jobs if n_jobs > 0 else max(1, cores + 1 + n_jobs))


def _spark_subset(strategy: Any, n_features: int, n_trees: int) -> int:
    """Spark's featureSubsetStrategy: auto (sqrt; all for one tree), all, onethird, sqrt, log2
    (each rounded up), an integer count, or a fraction in (0, 1] (rounded up)."""
    s = str(strategy).strip().lower()
    if s == "auto":
        s = "all" if n_trees == 1 else "sqrt"
    if s == "all":
        return n_features
    if s == "onethird":
        return max(1, math.ceil(n_features / 3.0))
    if s == "sqrt":
        return max(1, math.ceil(math.sqrt(n_features)))
    if s == "log2":
        return max(1, math.ceil(math.log2(n_features)))
    if re.fullmatch(r"[1-9]\d*", s):
        return min(int(s), n_features)
    if re.fullmatch(r"(0?\.\d+|1\.0*)", s) and 0.0 < float(s) <= 1.0:
        return max(1, math.ceil(float(s) * n_features))
    raise ValueError(f"featureSubsetStrategy={strategy!r}: supported auto, all, onethird, sqrt, log2, an integer "
                     "n >= 1, or a fraction in (0, 1.0]")


def _sklearn_max_features(v: Any, n_features: int) -> int:
    if v is None:
        return n_features
    if v == "sqrt":
        return max(1, int(math.sqrt(n_features)))
    if v == "log2":
        return max(1, int(math.log2(n_features)))
    if is_int(v):
        if v < 1:
            raise param_error("max_features", "an int in the range [1, inf), a float in the range (0.0, 1.0], a "
                              "str among {'sqrt', 'log2'} or None", v)
        if v > n_features:
            raise ValueError(f"max_features must be in (0, n_features={n_features}], got {v}")
        return int(v)
    if is_real(v) and 0.0 < v <= 1.0:
        return max(1, int(v * n_features))
    raise param_error("max_features", "an int in the range [1, inf), a float in the range (0.0, 1.0], a str among "
                      "{'sqrt', 'log2'} or None", v)


class RandomForestClassifier(_Mixin, _Base):
    """Random forest classifier: scikit-learn's parameters, or Spark ML's by their names.

    scikit-learn names (defaults as scikit-learn 1.9): n_estimators, criterion ('gini',
    'entropy', 'log_loss' = entropy), max_depth, min_samples_split, min_samples_leaf,
    min_weight_fraction_leaf, max_features ('sqrt', 'log2', int, float, None),
    min_impurity_decrease, bootstrap, oob_score, n_jobs, random_state, max_samples,
    class_weight (None, 'balanced', 'balanced_subsample', dict). Added: splitter ('exact': sorted
    values; 'hist': Spark-style quantile bins) with max_bins, and min_info_gain (Spark's).

    Spark ML names (None: not given): numTrees, maxDepth, maxBins, impurity,
    featureSubsetStrategy, subsamplingRate, minInstancesPerNode, minInfoGain, seed. A Spark name
    that is given overrides its scikit-learn counterpart. ``RandomForestClassifier.spark(...)``
    starts from Spark's defaults (20 trees, depth 5, 32 bins, histogram splitter).
    """

    def __init__(self, n_estimators: int = 100, *, criterion: str = "gini", max_depth: int | None = None,
                 min_samples_split: int | float = 2, min_samples_leaf: int | float = 1,
                 min_weight_fraction_leaf: float = 0.0, max_features: Any = "sqrt",
                 min_impurity_decrease: float = 0.0, bootstrap: bool = True, oob_score: bool = False,
                 n_jobs: int | None = None, random_state: Any = None, max_samples: int | float | None = None,
                 class_weight: Any = None, splitter: str = "exact", max_bins: int = 32, min_info_gain: float = 0.0,
                 numTrees: int | None = None, maxDepth: int | None = None, maxBins: int | None = None,
                 impurity: str | None = None, featureSubsetStrategy: str | None = None,
                 subsamplingRate: float | None = None, minInstancesPerNode: int | None = None,
                 minInfoGain: float | None = None, seed: int | None = None) -> None:
        self.n_estimators = n_estimators
        self.criterion = criterion
        self.max_depth = max_depth
        self.min_samples_split = min_samples_split
        self.min_samples_leaf = min_samples_leaf
        self.min_weight_fraction_leaf = min_weight_fraction_leaf
        self.max_features = max_features
        self.min_impurity_decrease = min_impurity_decrease
        self.bootstrap = bootstrap
        self.oob_score = oob_score
        self.n_jobs = n_jobs
        self.random_state = random_state
        self.max_samples = max_samples
        self.class_weight = class_weight
        self.splitter = splitter
        self.max_bins = max_bins
        self.min_info_gain = min_info_gain
        self.numTrees = numTrees
        self.maxDepth = maxDepth
        self.maxBins = maxBins
        self.impurity = impurity
        self.featureSubsetStrategy = featureSubsetStrategy
        self.subsamplingRate = subsamplingRate
        self.minInstancesPerNode = minInstancesPerNode
        self.minInfoGain = minInfoGain
        self.seed = seed

    @classmethod
    def spark(cls, **params: Any) -> RandomForestClassifier:
        """An estimator with Spark ML's defaults (histogram splitter), overridden by ``params``."""
        merged: dict[str, Any] = {**SPARK_DEFAULTS, "splitter": "hist", **params}
        return cls(**merged)

    # ------------------------------------------------------------------ parameters

    def _resolved(self, n: int, n_features: int) -> dict[str, Any]:
        """Effective settings after Spark names override scikit-learn ones, all checked."""
        p = {k: getattr(self, k) for k in ("n_estimators", "criterion", "max_depth", "min_samples_split",
                                           "min_samples_leaf", "min_weight_fraction_leaf", "max_features",
                                           "min_impurity_decrease", "bootstrap", "oob_score", "n_jobs",
                                           "random_state", "max_samples", "class_weight", "splitter", "max_bins",
                                           "min_info_gain")}
        spark_depth = False
        for spark_name, name in _SPARK_TO_SKLEARN.items():
            v = getattr(self, spark_name)
            if v is not None:
                p[name] = v
                spark_depth = spark_depth or spark_name == "maxDepth"
        check_int("n_estimators", p["n_estimators"], 1)
        crit = p["criterion"].lower() if isinstance(p["criterion"], str) else p["criterion"]
        if crit not in ("gini", "entropy", "log_loss"):
            raise param_error("criterion", "a str among {'gini', 'entropy', 'log_loss'}", p["criterion"])
        p["criterion"] = "entropy" if crit == "log_loss" else crit
        if spark_depth:
            check_int("maxDepth", p["max_depth"], 0)
        else:
            check_int("max_depth", p["max_depth"], 1, none=True)
        p["max_depth"] = -1 if p["max_depth"] is None else min(int(p["max_depth"]), 2**31 - 1)
        mss = p["min_samples_split"]
        if is_int(mss):
            check_int("min_samples_split", mss, 2)
        elif is_real(mss) and 0.0 < mss <= 1.0:
            mss = max(2, math.ceil(mss * n))
        else:
            raise param_error("min_samples_split", "an int in the range [2, inf) or a float in the range (0.0, 1.0]",
                              mss)
        p["min_samples_split"] = int(mss)
        msl = p["min_samples_leaf"]
        if is_int(msl):
            check_int("minInstancesPerNode" if self.minInstancesPerNode is not None else "min_samples_leaf", msl, 1)
        elif is_real(msl) and 0.0 < msl < 1.0:
            msl = max(1, math.ceil(msl * n))
        else:
            raise param_error("min_samples_leaf", "an int in the range [1, inf) or a float in the range (0.0, 1.0)",
                              msl)
        p["min_samples_leaf"] = int(msl)
        check_real("min_weight_fraction_leaf", p["min_weight_fraction_leaf"], 0.0, 0.5)
        check_real("min_impurity_decrease", p["min_impurity_decrease"], 0.0, math.inf, closed="left")
        check_real("minInfoGain" if self.minInfoGain is not None else "min_info_gain", p["min_info_gain"], 0.0,
                   math.inf, closed="left")
        if self.featureSubsetStrategy is not None:
            p["max_features"] = _spark_subset(self.featureSubsetStrategy, n_features, p["n_estimators"])
        else:
            p["max_features"] = _sklearn_max_features(p["max_features"], n_features)
        for name in ("bootstrap", "oob_score"):
            if not isinstance(p[name], (bool, np.bool_)):
                raise param_error(name, "an instance of 'bool'", p[name])
        if p["oob_score"] and not p["bootstrap"]:
            raise ValueError("Out of bag estimation only available if bootstrap=True")
        nj = p["n_jobs"]
        check_int("n_jobs", nj, -(2**31), none=True)
        if nj == 0:
            raise param_error("n_jobs", "an int other than 0 or None", nj)
        p["n_jobs"] = _threads(nj)
        ms = p["max_samples"]
        if ms is None:
            p["n_draw"] = n
        elif is_int(ms):
            check_int("max_samples", ms, 1)
            if ms > n:
                raise ValueError(f"`max_samples` must be <= n_samples={n} but got value {ms}")
            p["n_draw"] = int(ms)
        elif is_real(ms) and 0.0 < ms <= 1.0:
            p["n_draw"] = max(1, round(n * ms))
        else:
            raise param_error("subsamplingRate" if self.subsamplingRate is not None else "max_samples",
                              "None, an int in the range [1, inf) or a float in the range (0.0, 1.0]", ms)
        if p["splitter"] not in ("exact", "hist"):
            raise param_error("splitter", "a str among {'exact', 'hist'}", p["splitter"])
        check_int("maxBins" if self.maxBins is not None else "max_bins", p["max_bins"], 2, 256)
        return p

    # ------------------------------------------------------------------ fit / predict

    def _class_weights(self, cw: Any, y: np.ndarray, n_classes: int) -> np.ndarray:
        """Per-class multipliers for 'balanced' (n / (C * count)) or a dict {label: weight}."""
        if cw is None or cw == "balanced_subsample":
            return np.ones(n_classes)
        if cw == "balanced":
            return y.shape[0] / (n_classes * np.bincount(y, minlength=n_classes).astype(np.float64))
        if isinstance(cw, dict):
            check_class_weight_values(cw)
            out = np.ones(n_classes)
            index = {c: i for i, c in enumerate(self.classes_.tolist())}
            for label, wt in cw.items():
                if label not in index:
                    raise ValueError(f"The classes, {[label]}, are not in class_weight")
                out[index[label]] = float(wt)
            return out
        raise param_error("class_weight", "a str among {'balanced', 'balanced_subsample'}, a dict or None", cw)

    def fit(self, X: Any, y: Any, sample_weight: Any = None) -> RandomForestClassifier:
        """Grow the forest on X (n_samples, n_features), labels y (any sortable type)."""
        Xc = check_X(X)
        n, n_features = Xc.shape
        classes, y_enc = check_y(y, n)
        sw = check_sample_weight(sample_weight, n)
        p = self._resolved(n, n_features)
        self.classes_ = classes
        self.n_classes_ = int(classes.shape[0])
        self.n_features_in_ = n_features
        C, T = self.n_classes_, p["n_estimators"]
        rs = p["random_state"]
        if isinstance(rs, np.random.RandomState):
            rs = int(rs.randint(2**31 - 1))
        rng = np.random.default_rng(rs)
        counts = np.empty((T, n), dtype=np.int32)
        for t in range(T):
            if p["bootstrap"]:
                counts[t] = np.bincount(rng.integers(0, n, p["n_draw"]), minlength=n)
            elif p["n_draw"] < n:
                counts[t] = 0
                counts[t, rng.choice(n, p["n_draw"], replace=False)] = 1
            else:
                counts[t] = 1
        base_cw = self._class_weights(p["class_weight"], y_enc, C)
        cw = np.tile(base_cw, (T, 1))
        if p["class_weight"] == "balanced_subsample":
            for t in range(T):
                per_class = np.bincount(y_enc, weights=counts[t], minlength=C)
                present = per_class > 0
                cw[t, present] = counts[t].sum() / (C * per_class[present])
        sw = scale_weights(sw, counts, cw, y_enc)
        seeds = rng.integers(0, 2**64, T, dtype=np.uint64, endpoint=False)
        X_cols = np.ascontiguousarray(Xc.T)
        kw: dict[str, Any] = dict(
            y=y_enc, sample_weight=sw, counts=counts, class_weight=cw, seeds=seeds, n_classes=C,
            criterion=p["criterion"], max_depth=p["max_depth"], min_samples_split=p["min_samples_split"],
            min_samples_leaf=p["min_samples_leaf"], min_weight_fraction_leaf=float(p["min_weight_fraction_leaf"]),
            min_impurity_decrease=float(p["min_impurity_decrease"]), min_info_gain=float(p["min_info_gain"]),
            max_features=p["max_features"], n_threads=p["n_jobs"])
        if p["splitter"] == "hist":
            kw.update(ops.binned(X_cols, p["max_bins"], seed=int(rng.integers(2**31))))
        model = ops.build_forest(X_cols, **kw)
        self._set_model(model)
        if p["oob_score"]:
            proba, used = ops.forest_predict_proba(Xc, *self._arrays(), n_threads=p["n_jobs"], inbag=counts)
            if (used == 0).any():
                warnings.warn("Some inputs do not have OOB scores. This probably means too few trees were used to "
                              "compute any reliable OOB estimates.", UserWarning, stacklevel=2)
            self.oob_decision_function_ = proba
            self.oob_score_ = float(np.mean(proba.argmax(axis=1) == y_enc))
        return self

    def _set_model(self, model: dict[str, np.ndarray]) -> None:
        self._set_arrays(model)
        imp = np.asarray(model["importance"], dtype=np.float64)
        totals = imp.sum(axis=1)
        grown = totals > 0
        if grown.any():
            per_tree = imp[grown] / totals[grown, None]
            mean = per_tree.mean(axis=0)
            self.feature_importances_ = mean / mean.sum()
        else:
            self.feature_importances_ = np.zeros(imp.shape[1])

    def _set_arrays(self, model: Any) -> None:
        """Keep (feature, threshold, child) as the fields of one packed 12-byte record per node,
        the layout the C++ prediction walks without copying."""
        nodes = np.empty(np.asarray(model["feature"]).shape[0], dtype=NODE_DTYPE)
        for k in ("feature", "threshold", "child"):
            nodes[k] = model[k]
        self.nodes_ = nodes
        self.value_ = np.ascontiguousarray(model["value"], dtype=np.float32)
        self.node_offsets_ = np.ascontiguousarray(model["node_offsets"], dtype=np.int64)
        self.leaf_offsets_ = np.ascontiguousarray(model["leaf_offsets"], dtype=np.int64)

    @property
    def feature_(self) -> np.ndarray:
        """Split feature per node over all trees (-1 at leaves); tree t is node_offsets_[t:t+2]."""
        return self._fitted_nodes()["feature"]

    @property
    def threshold_(self) -> np.ndarray:
        """Split threshold per node: ``x <= threshold`` goes to the left child."""
        return self._fitted_nodes()["threshold"]

    @property
    def child_(self) -> np.ndarray:
        """Left child per internal node (the right one follows it); row of value_ per leaf."""
        return self._fitted_nodes()["child"]

    def _fitted_nodes(self) -> np.ndarray:
        if not hasattr(self, "nodes_"):
            raise NotFittedError(f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                                 "appropriate arguments before using this estimator.")
        nodes: np.ndarray = self.nodes_
        return nodes

    def _arrays(self) -> _Model:
        """(feature, threshold, child, value, node_offsets, leaf_offsets) of the fitted trees."""
        nodes = self._fitted_nodes()
        return (nodes["feature"], nodes["threshold"], nodes["child"], self.value_, self.node_offsets_,
                self.leaf_offsets_)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Mean over trees of the class fractions of the leaf each row reaches: (n, n_classes)."""
        arrays = self._arrays()
        Xc = check_X(X, reset_features=self.n_features_in_)
        check_int("n_jobs", self.n_jobs, -(2**31), none=True)
        proba, _ = ops.forest_predict_proba(Xc, *arrays, n_threads=_threads(self.n_jobs))
        return proba

    def predict_log_proba(self, X: Any) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.log(self.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The class with the highest mean probability (the first on ties), as a label of classes_."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]

    @property
    def n_nodes_(self) -> int:
        """Nodes over all trees."""
        return int(self._fitted_nodes().shape[0])

    @property
    def model_nbytes_(self) -> int:
        """Bytes of the fitted node and leaf arrays (the model's memory)."""
        return int(self.nodes_.nbytes + self.value_.nbytes + self.node_offsets_.nbytes + self.leaf_offsets_.nbytes)

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the fitted forest as an ``.npz`` of plain arrays plus a JSON header; ``load`` reads
        it with ``allow_pickle=False``, so loading never executes code. Labels must be numbers,
        strings or booleans (pickle the estimator for other label types)."""
        arrays = self._arrays()
        if self.classes_.dtype.kind not in "biufUS":
            raise ValueError(f"classes_ of dtype {self.classes_.dtype} cannot be saved without pickle; labels must be "
                             "numbers, strings or booleans (use pickle for other label types)")
        params = self.get_params(deep=False)
        json_params = {k: v for k, v in params.items() if _jsonable(v)}
        skipped = sorted(set(params) - set(json_params))
        header = dict(format="kernels.forest.RandomForestClassifier", version=FORMAT_VERSION, params=json_params,
                      skipped_params=skipped, n_features_in=int(self.n_features_in_),
                      oob_score=getattr(self, "oob_score_", None))
        payload: dict[str, Any] = {k: np.ascontiguousarray(a) for k, a in zip(_MODEL_ARRAYS, arrays)}
        payload["classes"] = self.classes_
        payload["feature_importances"] = self.feature_importances_
        payload["header"] = np.array(json.dumps(header))
        with open(path, "wb") as fh:
            np.savez_compressed(fh, **payload)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RandomForestClassifier:
        """Read a forest written by ``save`` (no pickle: arrays and JSON only)."""
        with np.load(Path(path), allow_pickle=False) as z:
            header = json.loads(str(z["header"]))
            if header.get("format") != "kernels.forest.RandomForestClassifier":
                raise ValueError(f"{path}: not a kernels.forest model file")
            if header.get("version") != FORMAT_VERSION:
                raise ValueError(f"{path}: format version {header.get('version')}; this library reads "
                                 f"{FORMAT_VERSION}")
            est = cls(**header["params"])
            model = {k: z[k] for k in _MODEL_ARRAYS}
            est.classes_ = z["classes"]
            est.feature_importances_ = z["feature_importances"]
        est.n_classes_ = int(est.classes_.shape[0])
        n_features = header.get("n_features_in")
        if not is_int(n_features) or n_features < 1:
            raise ValueError(f"{path}: header n_features_in = {n_features!r}; expected an int >= 1")
        imp = np.asarray(est.feature_importances_)
        if imp.shape != (n_features,) or imp.dtype.kind != "f" or not np.isfinite(imp).all():
            raise ValueError(f"{path}: feature_importances of shape {imp.shape} and dtype {imp.dtype} does not match "
                             f"header n_features_in = {n_features}: expected {n_features} finite floats")
        est.n_features_in_ = int(n_features)
        check_model(model, est.n_features_in_, est.n_classes_)
        est._set_arrays(model)
        if header.get("oob_score") is not None:
            est.oob_score_ = float(header["oob_score"])
        return est


def check_model(model: dict[str, np.ndarray], n_features: int, n_classes: int) -> None:
    """Reject node arrays that are not a forest (a model file is data): dtypes, then the tree
    structure (``pyimpl.forest.check_trees``)."""
    want = dict(feature="i", threshold="f", child="i", value="f", node_offsets="i", leaf_offsets="i")
    for k, kind in want.items():
        if model[k].dtype.kind != kind:
            raise ValueError(f"model array {k!r} has dtype {model[k].dtype}; expected kind {kind!r}")
    if model["value"].ndim != 2 or model["value"].shape[1] != n_classes:
        raise ValueError(f"model array 'value' must have shape (n_leaves, {n_classes}), got {model['value'].shape}")
    value = model["value"]
    if not np.isfinite(value).all() or (value < 0).any() or (value > 1).any():
        bad = np.flatnonzero(~((value >= 0) & (value <= 1)).all(axis=1))[0]
        raise ValueError(f"model array 'value' row {bad} = {value[bad].tolist()}: leaf values are class fractions, "
                         "finite numbers in [0, 1]")
    if np.isnan(model["threshold"]).any():
        raise ValueError(f"model array 'threshold' has NaN at node {np.flatnonzero(np.isnan(model['threshold']))[0]}; "
                         "split thresholds must be numbers")
    check_trees(model["feature"], model["threshold"], model["child"], value.shape[0],
                model["node_offsets"], model["leaf_offsets"], n_features)


def _jsonable(v: Any) -> bool:
    try:
        json.dumps(v)
    except (TypeError, ValueError):
        return False
    return True


__all__ = ["RandomForestClassifier"]
