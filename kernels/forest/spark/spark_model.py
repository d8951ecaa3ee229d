"""Read a model saved by Spark ML's own ``RandomForestClassificationModel.save`` (Spark 3 and 4)
into the library's estimator, with pyarrow and no JVM.

Spark's layout (``org.apache.spark.ml.tree.EnsembleModelReadWrite``): ``metadata/part-00000`` is
one JSON line (class, paramMap, numFeatures, numClasses, numTrees); ``data/`` is Parquet with one
row per node: ``treeID`` and ``nodeData`` (id, prediction, impurity, impurityStats, rawCount,
gain, leftChild, rightChild, split(featureIndex, leftCategoriesOrThreshold, numCategories));
``treesMetadata/`` holds each tree's weight. Node ids are Spark's pre-order numbers; the trees are
renumbered breadth first (the two children of a node next to each other, as the library's arrays
need). A leaf's class fractions are its impurity statistics normalised, as Spark's ``predictRaw``
adds them. Spark's thresholds are doubles and its test is ``x <= threshold``; each becomes the
largest float32 not above it, so for float32-representable features (and so for every feature the
library's float32 predictor sees) the test gives Spark's answer.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

_CLASS = "org.apache.spark.ml.classification.RandomForestClassificationModel"


def _floor32(t: float) -> np.float32:
    f = np.float32(t)
    return np.nextafter(f, np.float32(-np.inf)) if float(f) > t else f


def _metadata(path: Path) -> dict[str, Any]:
    parts = sorted((path / "metadata").glob("part-*"))
    if not parts:
        raise ValueError(f"{path}: no metadata/part-* file; not a Spark ML model directory")
    meta: dict[str, Any] = json.loads(parts[0].read_text().splitlines()[0])
    if meta.get("class") != _CLASS:
        raise ValueError(f"{path}: a {meta.get('class')!r}; this reader reads {_CLASS}")
    return meta


def _tree_arrays(nodes: dict[int, dict[str, Any]], n_classes: int, where: str) -> tuple[list[Any], ...]:
    """One tree's (feature, threshold, child, values, importance-by-feature) in breadth-first order."""
    if 0 not in nodes:
        raise ValueError(f"{where}: no root node (id 0)")
    order = [0]
    new_id = {0: 0}
    feature: list[int] = []
    threshold: list[float] = []
    child: list[int] = []
    values: list[np.ndarray] = []
    importance: dict[int, float] = {}
    i = 0
    while i < len(order):
        nd = nodes[order[i]]
        stats = np.asarray(nd["impurityStats"], np.float64)
        if stats.shape != (n_classes,):
            raise ValueError(f"{where}: node {order[i]} has {stats.shape[0]} class statistics, the model {n_classes}")
        lc, rc = int(nd["leftChild"]), int(nd["rightChild"])
        if lc < 0:
            feature.append(-1)
            threshold.append(0.0)
            child.append(len(values))
            total = stats.sum()
            values.append(stats / total if total > 0 else np.zeros(n_classes))
        else:
            split = nd["split"]
            if split is None or int(split["numCategories"]) >= 0:
                raise ValueError(f"{where}: node {order[i]} has a categorical split; only continuous features "
                                 "(thresholds) are supported")
            for c in (lc, rc):
                if c not in nodes or c in new_id:
                    raise ValueError(f"{where}: node {order[i]} names child {c}, which is missing or already used")
                new_id[c] = len(order)
                order.append(c)
            f = int(split["featureIndex"])
            feature.append(f)
            threshold.append(float(_floor32(float(split["leftCategoriesOrThreshold"][0]))))
            child.append(new_id[lc])
            importance[f] = importance.get(f, 0.0) + float(nd["gain"]) * float(stats.sum())
        i += 1
    return feature, threshold, child, values, [importance]


def read_spark_model(path: str | os.PathLike[str]) -> Any:
    """A fitted ``kernels.forest.RandomForestClassifier`` from the directory of a Spark ML
    ``RandomForestClassificationModel.save`` (local or mounted path). Its ``predict_proba`` gives
    Spark's ``probability`` and ``predict`` Spark's ``prediction`` (classes are the label indices)."""
    import pyarrow.parquet as pq

    from modelkernels.kernels.forest.spark.convert import fitted_estimator

    root = Path(path)
    meta = _metadata(root)
    n_features, n_classes, n_trees = int(meta["numFeatures"]), int(meta["numClasses"]), int(meta["numTrees"])
    trees = pq.read_table(root / "treesMetadata")  # (treeID, metadata, weights), named or as _1, _2, _3
    weights = trees.column("weights" if "weights" in trees.column_names else 2).to_pylist()
    if any(w != 1.0 for w in weights):
        raise ValueError(f"{path}: tree weights other than 1.0 (not a random forest's)")
    table = pq.read_table(root / "data")
    named = "treeID" in table.column_names
    tree_ids = table.column("treeID" if named else 0).to_pylist()
    node_data = table.column("nodeData" if named else 1).to_pylist()
    per_tree: list[dict[int, dict[str, Any]]] = [{} for _ in range(n_trees)]
    for t, nd in zip(tree_ids, node_data):
        if not 0 <= int(t) < n_trees:
            raise ValueError(f"{path}: treeID {t} outside [0, numTrees={n_trees})")
        per_tree[int(t)][int(nd["id"])] = nd
    feature: list[int] = []
    threshold: list[float] = []
    child: list[int] = []
    values: list[np.ndarray] = []
    node_offsets, leaf_offsets = [0], [0]
    importance = np.zeros((n_trees, n_features))
    for t, nodes in enumerate(per_tree):
        f, th, ch, vals, (imp,) = _tree_arrays(nodes, n_classes, f"{path} tree {t}")
        feature += f
        threshold += th
        child += ch
        values += vals
        node_offsets.append(len(feature))
        leaf_offsets.append(len(values))
        for k, v in imp.items():
            if not 0 <= k < n_features:
                raise ValueError(f"{path} tree {t}: a split on feature {k}; the model has {n_features}")
            importance[t, k] = v
    model: dict[str, np.ndarray] = dict(feature=np.array(feature, np.int32), threshold=np.array(threshold, np.float32),
                                        child=np.array(child, np.int32),
                                        value=np.array(values, np.float32).reshape(-1, n_classes),
                                        node_offsets=np.array(node_offsets, np.int64),
                                        leaf_offsets=np.array(leaf_offsets, np.int64), importance=importance)
    params = dict(meta.get("defaultParamMap", {}), **meta.get("paramMap", {}))
    params["numTrees"] = n_trees
    return fitted_estimator(model, n_features, n_classes, params)
