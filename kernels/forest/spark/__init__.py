"""The forest on Apache Spark: ``RandomForestClassifier`` / ``RandomForestClassificationModel`` as
``pyspark.ml`` Estimator and Model (Spark ML's params and defaults, Pipelines, evaluators,
``write().save`` / ``load``), trained level by level with the partition-side histograms in the
library's C++; and ``read_spark_model``, which loads a model saved by Spark ML's own
``RandomForestClassificationModel.save`` into the library's in-memory estimator (pyarrow only, no
JVM). Needs the ``spark`` extra (pyspark, pyarrow; Java 17 for Spark itself). Imported on first
use, so ``import modelkernels.kernels.forest.spark`` works without pyspark and says what is missing when a
Spark class is asked for."""

from typing import Any

from modelkernels.kernels.forest.spark.spark_model import read_spark_model

_SPARK_CLASSES = ("RandomForestClassifier", "RandomForestClassificationModel")


def spark_unavailable() -> str | None:
    """None when pyspark and pyarrow import; otherwise the reason, in words."""
    try:
        import pyarrow  # noqa: F401
        import pyspark  # noqa: F401
    except ImportError as e:
        return f"kernels.forest.spark needs pyspark and pyarrow (pip install 'modelkernels[spark]'): {e}"
    return None


def __getattr__(name: str) -> Any:
    if name in _SPARK_CLASSES:
        why = spark_unavailable()
        if why:
            raise ImportError(why)
        from modelkernels.kernels.forest.spark import estimator

        return getattr(estimator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RandomForestClassificationModel", "RandomForestClassifier", "read_spark_model", "spark_unavailable"]
