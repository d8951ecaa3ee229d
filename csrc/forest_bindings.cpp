// Python bindings of the forest kernels: build_forest (trees in parallel std::threads, GIL
// released), the per-feature split searches and Spark's findSplits (prediction: forest_predict.cpp).
// kernels/forest validates the arguments first; the checks here guard direct calls: everything
// used as an index (class ids, bins, offsets) is checked against what it indexes before any read.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "check.hpp"
#include "forest.hpp"
#include "parallel.hpp"

namespace py = pybind11;
using mk::forest::Candidate;
using mk::forest::ForestData;
using mk::forest::Tree;
using mk::forest::TreeParams;

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

void bind_hybrid_sort(py::module_& m);
void bind_forest_predict(py::module_& m);

namespace {

using mk::require;

// Per-node class buffers and histograms are n_classes wide: a bound keeps a bad count from
// asking for gigabytes (labels are encoded 0..n_classes-1 by the estimator).
constexpr int kMaxClasses = 1 << 16;

void require_classes(int n_classes) {
  require(n_classes >= 1 && n_classes <= kMaxClasses, "n_classes must be in [1, 65536]");
}

void require_criterion(int criterion) {
  require(criterion == mk::forest::kGini || criterion == mk::forest::kEntropy, "criterion must be 0 (gini) or 1 (entropy)");
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v) {
  py::array_t<T> out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

TreeParams make_params(int n_classes, int criterion, int max_depth, std::int64_t min_samples_split,
                       std::int64_t min_samples_leaf, double min_weight_fraction_leaf, double min_impurity_decrease,
                       double min_info_gain, int max_features) {
  TreeParams p;
  p.n_classes = n_classes;
  p.criterion = criterion;
  p.max_depth = max_depth;
  p.min_samples_split = min_samples_split;
  p.min_samples_leaf = min_samples_leaf;
  p.min_weight_fraction_leaf = min_weight_fraction_leaf;
  p.min_impurity_decrease = min_impurity_decrease;
  p.min_info_gain = min_info_gain;
  p.max_features = max_features;
  return p;
}

py::dict build_forest(Arr<float> X_cols, Arr<std::int32_t> y, Arr<double> sample_weight, Arr<std::int32_t> counts,
                      Arr<double> class_weight, Arr<std::uint64_t> seeds, int n_classes, int criterion,
                      int max_depth, std::int64_t min_samples_split, std::int64_t min_samples_leaf,
                      double min_weight_fraction_leaf, double min_impurity_decrease, double min_info_gain,
                      int max_features, std::int64_t n_threads, std::optional<Arr<std::uint8_t>> bins,
                      std::optional<Arr<std::int32_t>> n_bins, std::optional<Arr<float>> split_values,
                      std::optional<Arr<std::int64_t>> split_offsets) {
  require(X_cols.ndim() == 2, "X_cols must be 2-D (n_features, n_samples)");
  require(X_cols.shape(0) <= std::numeric_limits<std::int32_t>::max(), "n_features must be below 2**31");
  require(seeds.ndim() == 1, "seeds must be 1-D (n_trees,)");
  const int F = static_cast<int>(X_cols.shape(0));
  const std::int64_t n = X_cols.shape(1);
  const std::int64_t T = seeds.shape(0);
  require(n < std::numeric_limits<std::int32_t>::max(), "n_samples must be below 2**31 - 1");
  require(y.ndim() == 1 && y.shape(0) == n, "y must have n_samples entries");
  require(sample_weight.ndim() == 1 && sample_weight.shape(0) == n, "sample_weight must have n_samples entries");
  require(counts.ndim() == 2 && counts.shape(0) == T && counts.shape(1) == n, "counts must be (n_trees, n_samples)");
  require_classes(n_classes);
  require(class_weight.ndim() == 2 && class_weight.shape(0) == T && class_weight.shape(1) == n_classes,
          "class_weight must be (n_trees, n_classes)");
  require(F >= 1 && max_features >= 1 && max_features <= F, "max_features must be in [1, n_features]");
  require_criterion(criterion);
  const std::int32_t* yp = y.data();
  for (std::int64_t i = 0; i < n; ++i) {
    if (yp[i] < 0 || yp[i] >= n_classes) mk::bad_entry("y", i, yp[i], "must be in [0, n_classes)");
  }
  ForestData d;
  d.n = n;
  d.n_features = F;
  d.X = X_cols.data();
  d.y = yp;
  d.sample_weight = sample_weight.data();
  if (bins) {
    require(n_bins && split_values && split_offsets, "histogram mode needs bins, n_bins, split_values, split_offsets");
    require(bins->ndim() == 2 && bins->shape(0) == F && bins->shape(1) == n, "bins must be (n_features, n_samples)");
    require(n_bins->ndim() == 1 && n_bins->shape(0) == F, "n_bins must be (n_features,)");
    require(split_values->ndim() == 1, "split_values must be 1-D");
    require(split_offsets->ndim() == 1 && split_offsets->shape(0) == F + 1, "split_offsets must be (n_features + 1,)");
    const std::int32_t* nb = n_bins->data();
    const std::int64_t* off = split_offsets->data();
    const std::int64_t n_values = split_values->shape(0);
    if (off[0] != 0) mk::bad_entry("split_offsets", 0, off[0], "must be 0");
    for (int f = 0; f < F; ++f) {
      if (nb[f] < 1 || nb[f] > 256) mk::bad_entry("n_bins", f, nb[f], "must be in [1, 256]");
      // off[f] is in [0, n_values] here, so the sum cannot overflow.
      if (off[f + 1] != off[f] + nb[f] - 1 || off[f + 1] > n_values) {
        mk::bad_entry("split_offsets", f + 1, off[f + 1],
                      "must be split_offsets[f] + n_bins[f] - 1 (" + std::to_string(off[f] + nb[f] - 1) +
                          ") and at most len(split_values) = " + std::to_string(n_values));
      }
    }
    if (off[F] != n_values) mk::bad_entry("split_offsets", F, off[F], "must equal len(split_values)");
    const std::uint8_t* bp = bins->data();
    for (int f = 0; f < F; ++f) {
      const std::uint8_t* col = bp + static_cast<std::int64_t>(f) * n;
      const std::uint8_t hi = static_cast<std::uint8_t>(nb[f] - 1);
      for (std::int64_t i = 0; i < n; ++i) {
        if (col[i] > hi) {
          throw py::value_error("bins[" + std::to_string(f) + ", " + std::to_string(i) + "] = " +
                                std::to_string(col[i]) + ": feature " + std::to_string(f) + " has n_bins = " +
                                std::to_string(nb[f]) + ", so its bins must be in [0, " + std::to_string(nb[f]) +
                                ")");
        }
      }
    }
    d.bins = bp;
    d.n_bins = nb;
    d.split_values = split_values->data();
    d.split_offsets = off;
  }
  const TreeParams p = make_params(n_classes, criterion, max_depth, min_samples_split, min_samples_leaf,
                                   min_weight_fraction_leaf, min_impurity_decrease, min_info_gain, max_features);
  std::vector<Tree> trees(T);
  {
    py::gil_scoped_release release;
    mk::parallel_for(T, n_threads, [&](std::int64_t t) {
      trees[t] = mk::forest::build_tree(d, p, counts.data() + t * n, class_weight.data() + t * n_classes,
                                        seeds.data()[t]);
    });
  }
  std::int64_t n_nodes = 0, n_leaves = 0;
  py::array_t<std::int64_t> node_offsets(T + 1), leaf_offsets(T + 1);
  for (std::int64_t t = 0; t < T; ++t) {
    node_offsets.mutable_data()[t] = n_nodes;
    leaf_offsets.mutable_data()[t] = n_leaves;
    n_nodes += static_cast<std::int64_t>(trees[t].feature.size());
    n_leaves += static_cast<std::int64_t>(trees[t].value.size()) / n_classes;
  }
  node_offsets.mutable_data()[T] = n_nodes;
  leaf_offsets.mutable_data()[T] = n_leaves;
  py::array_t<std::int32_t> feature(n_nodes), child(n_nodes);
  py::array_t<float> threshold(n_nodes);
  py::array_t<float> value({n_leaves, static_cast<std::int64_t>(n_classes)});
  py::array_t<double> importance({T, static_cast<std::int64_t>(F)});
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t o = node_offsets.data()[t], lo = leaf_offsets.data()[t];
    std::copy(trees[t].feature.begin(), trees[t].feature.end(), feature.mutable_data() + o);
    std::copy(trees[t].child.begin(), trees[t].child.end(), child.mutable_data() + o);
    std::copy(trees[t].threshold.begin(), trees[t].threshold.end(), threshold.mutable_data() + o);
    std::copy(trees[t].value.begin(), trees[t].value.end(), value.mutable_data() + lo * n_classes);
    std::copy(trees[t].importance.begin(), trees[t].importance.end(), importance.mutable_data() + t * F);
  }
  py::dict out;
  out["feature"] = feature;
  out["threshold"] = threshold;
  out["child"] = child;
  out["value"] = value;
  out["node_offsets"] = node_offsets;
  out["leaf_offsets"] = leaf_offsets;
  out["importance"] = importance;
  return out;
}

py::tuple best_split_exact(Arr<float> values, Arr<std::int32_t> y, Arr<double> w, int n_classes, int criterion,
                           std::int64_t min_samples_leaf, double min_weight_leaf) {
  require(values.ndim() == 1 && y.ndim() == 1 && w.ndim() == 1, "values, y and w must be 1-D");
  const std::int64_t m = values.shape(0);
  require(y.shape(0) == m && w.shape(0) == m, "values, y and w must have one length");
  require(m < std::numeric_limits<std::int32_t>::max(), "values must have fewer than 2**31 - 1 entries");
  require_classes(n_classes);
  require_criterion(criterion);
  std::vector<float> vals(values.data(), values.data() + m);
  std::vector<std::int32_t> ids(m);
  std::vector<double> node(n_classes, 0.0), scratch(2 * n_classes);
  double node_w = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    if (y.data()[i] < 0 || y.data()[i] >= n_classes) mk::bad_entry("y", i, y.data()[i], "must be in [0, n_classes)");
    ids[i] = static_cast<std::int32_t>(i);
    node[y.data()[i]] += w.data()[i];
    node_w += w.data()[i];
  }
  TreeParams p = make_params(n_classes, criterion, -1, 2, min_samples_leaf, 0.0, 0.0, 0.0, 1);
  Candidate best{-std::numeric_limits<double>::infinity(), std::numeric_limits<float>::quiet_NaN(), 0, -1};
  const bool varies = mk::forest::exact_feature_split(vals.data(), ids.data(), m, y.data(), w.data(), p, node.data(),
                                                      node_w, min_weight_leaf, scratch.data(), best);
  return py::make_tuple(varies, best.threshold, best.n_left, best.proxy);
}

py::tuple best_split_hist(Arr<std::uint8_t> bins, Arr<std::int32_t> y, Arr<double> w, Arr<float> edges, int n_classes,
                          int criterion, std::int64_t min_samples_leaf, double min_weight_leaf) {
  require(bins.ndim() == 1 && y.ndim() == 1 && w.ndim() == 1 && edges.ndim() == 1, "bins, y, w and edges must be 1-D");
  const std::int64_t m = bins.shape(0);
  require(y.shape(0) == m && w.shape(0) == m, "bins, y and w must have one length");
  require(edges.shape(0) <= 255, "edges must have at most 255 entries (bins are uint8: at most 256 bins)");
  require_classes(n_classes);
  require_criterion(criterion);
  const int nb = static_cast<int>(edges.shape(0)) + 1;
  std::vector<double> hist(static_cast<std::size_t>(nb) * n_classes, 0.0), node(n_classes, 0.0),
      scratch(2 * n_classes);
  std::vector<std::int64_t> counts(nb, 0);
  double node_w = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    const int b = bins.data()[i], c = y.data()[i];
    if (b >= nb) mk::bad_entry("bins", i, b, "must be in [0, len(edges) + 1 = " + std::to_string(nb) + ")");
    if (c < 0 || c >= n_classes) mk::bad_entry("y", i, c, "must be in [0, n_classes)");
    hist[static_cast<std::size_t>(b) * n_classes + c] += w.data()[i];
    ++counts[b];
    node[c] += w.data()[i];
    node_w += w.data()[i];
  }
  TreeParams p = make_params(n_classes, criterion, -1, 2, min_samples_leaf, 0.0, 0.0, 0.0, 1);
  Candidate best{-std::numeric_limits<double>::infinity(), std::numeric_limits<float>::quiet_NaN(), 0, -1};
  const bool varies = mk::forest::histogram_feature_split(hist.data(), counts.data(), nb, m, p, node.data(), node_w,
                                                          min_weight_leaf, edges.data(), scratch.data(), best);
  return py::make_tuple(varies, best.bin, best.threshold, best.n_left, best.proxy);
}

py::array_t<float> find_splits(Arr<float> distinct, Arr<double> counts, int max_bins) {
  require(distinct.ndim() == 1 && counts.ndim() == 1 && counts.shape(0) == distinct.shape(0),
          "distinct and counts must be 1-D of one length");
  require(max_bins >= 2, "max_bins must be >= 2");
  return to_array(mk::forest::find_splits(distinct.data(), counts.data(), distinct.shape(0), max_bins));
}

}  // namespace

void bind_forest(py::module_& m) {
  bind_hybrid_sort(m);
  bind_forest_predict(m);
  m.def("build_forest", &build_forest, py::arg("X_cols"), py::arg("y"), py::arg("sample_weight"), py::arg("counts"),
        py::arg("class_weight"), py::arg("seeds"), py::arg("n_classes"), py::arg("criterion"), py::arg("max_depth"),
        py::arg("min_samples_split"), py::arg("min_samples_leaf"), py::arg("min_weight_fraction_leaf"),
        py::arg("min_impurity_decrease"), py::arg("min_info_gain"), py::arg("max_features"), py::arg("n_threads"),
        py::arg("bins") = py::none(), py::arg("n_bins") = py::none(), py::arg("split_values") = py::none(),
        py::arg("split_offsets") = py::none(), "Build n_trees trees in parallel; returns the packed node arrays.");
  m.def("best_split_exact", &best_split_exact, py::arg("values"), py::arg("y"), py::arg("w"), py::arg("n_classes"),
        py::arg("criterion"), py::arg("min_samples_leaf"), py::arg("min_weight_leaf"));
  m.def("best_split_hist", &best_split_hist, py::arg("bins"), py::arg("y"), py::arg("w"), py::arg("edges"),
        py::arg("n_classes"), py::arg("criterion"), py::arg("min_samples_leaf"), py::arg("min_weight_leaf"));
  m.def("find_splits", &find_splits, py::arg("distinct"), py::arg("counts"), py::arg("max_bins"));
}
