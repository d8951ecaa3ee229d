"""``read_spark_model`` on directories laid out as Spark ML's RandomForestClassificationModel.save
(written here with pyarrow, no Spark): a hand-made forest predicts as its trees say, and crafted
files (categorical splits, a child used twice, a feature outside) raise errors that say what."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow", reason="pyarrow is not installed (pip install 'modelkernels[spark]')")
pq = pytest.importorskip("pyarrow.parquet")

from modelkernels.kernels.forest.spark import read_spark_model  # noqa: E402

_CLASS = "org.apache.spark.ml.classification.RandomForestClassificationModel"


def _node(id: int, stats: list[float], left: int = -1, right: int = -1, feature: int = -1, threshold: float = 0.0,
          gain: float = 0.0, categories: int = -1) -> dict[str, Any]:
    split = dict(featureIndex=feature, leftCategoriesOrThreshold=[threshold], numCategories=categories)
    return dict(id=id, prediction=float(np.argmax(stats)), impurity=0.5, impurityStats=stats, rawCount=int(sum(stats)),
                gain=gain, leftChild=left, rightChild=right, split=split)


def _save(path: Path, trees: list[list[dict[str, Any]]], n_features: int = 2, n_classes: int = 2) -> Path:
    for sub in ("metadata", "data", "treesMetadata"):
        (path / sub).mkdir(parents=True)
    meta = {"class": _CLASS, "uid": "rfc_test", "paramMap": {"numTrees": len(trees), "maxDepth": 2},
            "defaultParamMap": {"maxBins": 32}, "numFeatures": n_features, "numClasses": n_classes,
            "numTrees": len(trees)}
    (path / "metadata" / "part-00000").write_text(json.dumps(meta) + "\n")
    rows = [(t, nd) for t, nodes in enumerate(trees) for nd in nodes]
    pq.write_table(pa.table({"treeID": [t for t, _ in rows], "nodeData": [nd for _, nd in rows]}),
                   path / "data" / "part-00000.parquet")
    pq.write_table(pa.table({"_1": list(range(len(trees))), "_2": ["{}"] * len(trees), "_3": [1.0] * len(trees)}),
                   path / "treesMetadata" / "part-00000.parquet")
    return path


def _forest() -> list[list[dict[str, Any]]]:
    # tree 0: x0 <= 0.1 (a double between float32 values) -> leaf [3, 1] else (x1 <= 2 -> [0, 4] else [1, 1])
    # Spark numbers nodes in pre-order: 0, left 1, right 2 (with children 3, 4)
    tree0 = [_node(0, [4, 6], 1, 2, feature=0, threshold=0.1, gain=0.2), _node(1, [3, 1]),
             _node(2, [1, 5], 3, 4, feature=1, threshold=2.0, gain=0.1), _node(3, [0, 4]), _node(4, [1, 1])]
    tree1 = [_node(0, [5, 5])]
    return [tree0, tree1]


def test_reads_and_predicts_as_the_trees_say(tmp_path: Path) -> None:
    est = read_spark_model(_save(tmp_path / "m", _forest()))
    t = np.float32(0.1)
    below = np.nextafter(t, np.float32(-1)) if float(t) > 0.1 else t
    X = np.array([[below, 0.0], [np.nextafter(below, np.float32(1)), 2.0], [5.0, 2.5]], np.float32)
    tree0 = np.array([[0.75, 0.25], [0.0, 1.0], [0.5, 0.5]])
    np.testing.assert_allclose(est.predict_proba(X), (tree0 + 0.5) / 2, atol=1e-7)
    assert est.n_nodes_ == 6 and est.n_features_in_ == 2 and list(est.classes_) == [0.0, 1.0]
    imp = np.array([0.2 * 10, 0.1 * 6])
    np.testing.assert_allclose(est.feature_importances_, imp / imp.sum())
    assert est.get_params()["maxBins"] == 32 and est.get_params()["numTrees"] == 2


@pytest.mark.parametrize("change, match", [
    (lambda f: f[0][0]["split"].update(numCategories=3), "categorical split"),
    (lambda f: f[0][2].update(leftChild=1), "missing or already used"),
    (lambda f: f[0][2]["split"].update(featureIndex=5), "feature 5"),
    (lambda f: f[0][1].update(impurityStats=[1.0, 2.0, 3.0]), "3 class statistics"),
])
def test_crafted_files_raise(tmp_path: Path, change: Any, match: str) -> None:
    forest = _forest()
    change(forest)
    with pytest.raises(ValueError, match=match):
        read_spark_model(_save(tmp_path / "m", forest))


def test_not_a_forest_directory(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no metadata"):
        read_spark_model(tmp_path)
