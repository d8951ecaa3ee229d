// Python bindings of the forest kernels: build_forest (trees in parallel std::threads, GIL
// released), predict_proba (rows in parallel), the per-feature split searches and Spark's
// findSplits. kernels/forest validates every argument first; the checks here guard direct calls.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "forest.hpp"

namespace py = pybind11;
using mk::forest::Candidate;
using mk::forest::ForestData;
using mk::forest::Tree;
using mk::forest::TreeParams;

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

void bind_hybrid_sort(py::module_& m);

namespace {

// Message as a C string: building a std::string on every call would cost an allocation even
// when the check passes (these run once per node in the loops below).
void require(bool ok, const char* what) {
  if (!ok) throw py::value_error(what);
}

// Runs job(i) for i in [0, n) on n_threads threads; the first exception is rethrown.
template <class Job>
void parallel_for(std::int64_t n, int n_threads, Job job) {
  std::atomic<std::int64_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto worker = [&]() {
    while (true) {
      const std::int64_t i = next.fetch_add(1);
      if (i >= n) return;
      try {
        job(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next.store(n);
      }
    }
  };
  const int k = static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(n_threads, n)));
  std::vector<std::thread> threads;
  for (int t = 1; t < k; ++t) threads.emplace_back(worker);
  worker();
  for (auto& t : threads) t.join();
  if (error) std::rethrow_exception(error);
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
                      int max_features, int n_threads, std::optional<Arr<std::uint8_t>> bins,
                      std::optional<Arr<std::int32_t>> n_bins, std::optional<Arr<float>> split_values,
                      std::optional<Arr<std::int64_t>> split_offsets) {
  require(X_cols.ndim() == 2, "X_cols must be 2-D (n_features, n_samples)");
  const int F = static_cast<int>(X_cols.shape(0));
  const std::int64_t n = X_cols.shape(1);
  const std::int64_t T = seeds.shape(0);
  require(n < std::numeric_limits<std::int32_t>::max(), "n_samples must be below 2**31 - 1");
  require(y.ndim() == 1 && y.shape(0) == n, "y must have n_samples entries");
  require(sample_weight.ndim() == 1 && sample_weight.shape(0) == n, "sample_weight must have n_samples entries");
  require(counts.ndim() == 2 && counts.shape(0) == T && counts.shape(1) == n, "counts must be (n_trees, n_samples)");
  require(class_weight.ndim() == 2 && class_weight.shape(0) == T && class_weight.shape(1) == n_classes,
          "class_weight must be (n_trees, n_classes)");
  require(n_classes >= 1 && F >= 1 && max_features >= 1 && max_features <= F, "bad n_classes / max_features");
  const std::int32_t* yp = y.data();
  for (std::int64_t i = 0; i < n; ++i) require(yp[i] >= 0 && yp[i] < n_classes, "y must be in [0, n_classes)");
  ForestData d;
  d.n = n;
  d.n_features = F;
  d.X = X_cols.data();
  d.y = yp;
  d.sample_weight = sample_weight.data();
  if (bins) {
    require(n_bins && split_values && split_offsets, "histogram mode needs bins, n_bins, split_values, split_offsets");
    require(bins->ndim() == 2 && bins->shape(0) == F && bins->shape(1) == n, "bins must be (n_features, n_samples)");
    require(n_bins->shape(0) == F && split_offsets->shape(0) == F + 1, "n_bins / split_offsets length");
    for (int f = 0; f < F; ++f) {
      const std::int64_t edges = split_offsets->data()[f + 1] - split_offsets->data()[f];
      require(n_bins->data()[f] >= 1 && n_bins->data()[f] <= 256 && edges == n_bins->data()[f] - 1,
              "n_bins[f] must be 1..256 with n_bins[f] - 1 split values");
    }
    require(split_offsets->data()[F] == split_values->shape(0), "split_offsets must end at len(split_values)");
    d.bins = bins->data();
    d.n_bins = n_bins->data();
    d.split_values = split_values->data();
    d.split_offsets = split_offsets->data();
  }
  const TreeParams p = make_params(n_classes, criterion, max_depth, min_samples_split, min_samples_leaf,
                                   min_weight_fraction_leaf, min_impurity_decrease, min_info_gain, max_features);
  std::vector<Tree> trees(T);
  {
    py::gil_scoped_release release;
    parallel_for(T, n_threads, [&](std::int64_t t) {
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

struct PackedNode {
  std::int32_t feature;
  float threshold;
  std::int32_t child;
};

// Mean over trees of the leaf class fractions: rows in parallel blocks, every tree per block.
// With inbag (n_trees, n_samples), tree t is skipped for sample i where inbag[t, i] > 0 (the
// out-of-bag estimate); the second result counts the trees used per row.
py::tuple predict_proba(Arr<float> X, py::array feature, py::array threshold, py::array child, Arr<float> value,
                        Arr<std::int64_t> node_offsets, Arr<std::int64_t> leaf_offsets, int n_threads,
                        std::optional<Arr<std::int32_t>> inbag) {
  require(X.ndim() == 2 && value.ndim() == 2, "X and value must be 2-D");
  const std::int64_t n = X.shape(0), F = X.shape(1), C = value.shape(1);
  const std::int64_t T = node_offsets.shape(0) - 1;
  require(T >= 1 && leaf_offsets.shape(0) == T + 1, "node_offsets / leaf_offsets length");
  require(F >= 1, "X must have at least one feature");
  require(py::isinstance<py::array_t<std::int32_t>>(feature) && py::isinstance<py::array_t<float>>(threshold) &&
              py::isinstance<py::array_t<std::int32_t>>(child),
          "feature, threshold, child must be int32, float32, int32");
  require(feature.ndim() == 1 && threshold.ndim() == 1 && child.ndim() == 1, "node arrays must be 1-D");
  const std::int64_t n_nodes = feature.shape(0);
  require(threshold.shape(0) == n_nodes && child.shape(0) == n_nodes && node_offsets.data()[T] == n_nodes,
          "node arrays must have one length");
  if (inbag) require(inbag->ndim() == 2 && inbag->shape(0) == T && inbag->shape(1) == n, "inbag must be (n_trees, n)");
  // One 12-byte record per node. kernels.forest keeps (feature, threshold, child) as the fields
  // of one record array: then the nodes are read in place, otherwise packed here.
  const auto* base = static_cast<const char*>(feature.data());
  const bool packed = n_nodes > 0 && feature.strides(0) == sizeof(PackedNode) &&
                      threshold.strides(0) == sizeof(PackedNode) && child.strides(0) == sizeof(PackedNode) &&
                      static_cast<const char*>(threshold.data()) == base + offsetof(PackedNode, threshold) &&
                      static_cast<const char*>(child.data()) == base + offsetof(PackedNode, child);
  std::vector<PackedNode> copy;
  if (!packed && n_nodes > 0) {
    auto fe = feature.unchecked<std::int32_t, 1>();
    auto th = threshold.unchecked<float, 1>();
    auto ch = child.unchecked<std::int32_t, 1>();
    copy.resize(n_nodes);
    for (std::int64_t k = 0; k < n_nodes; ++k) copy[k] = {fe(k), th(k), ch(k)};
  }
  const PackedNode* nodes = packed ? reinterpret_cast<const PackedNode*>(base) : copy.data();
  // Structure checks (a model file is data, not trusted code): children after their parent and
  // inside the tree, leaves inside the tree's leaf rows, features inside X. Trees in parallel.
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t n0 = node_offsets.data()[t], n1 = node_offsets.data()[t + 1];
    require(n0 < n1 && n1 <= n_nodes && leaf_offsets.data()[t] < leaf_offsets.data()[t + 1] &&
                leaf_offsets.data()[t + 1] <= value.shape(0),
            "node_offsets / leaf_offsets must increase and stay inside the arrays");
  }
  std::vector<std::int32_t> tree_max_feature(T, -1);
  std::vector<char> tree_ok(T, 1);
  {
    py::gil_scoped_release release;
    parallel_for(T, n_threads, [&](std::int64_t t) {
      const std::int64_t n0 = node_offsets.data()[t], n1 = node_offsets.data()[t + 1];
      const std::int64_t leaves = leaf_offsets.data()[t + 1] - leaf_offsets.data()[t];
      bool ok = true;
      std::int32_t max_feature = -1;
      for (std::int64_t k = 0; k < n1 - n0; ++k) {
        const PackedNode& nd = nodes[n0 + k];
        max_feature = std::max(max_feature, nd.feature);
        ok &= nd.feature >= 0 ? (nd.child > k && nd.child + 1 < n1 - n0)
                              : (nd.feature == -1 && nd.child >= 0 && nd.child < leaves);
      }
      tree_max_feature[t] = max_feature;
      tree_ok[t] = ok ? 1 : 0;
    });
  }
  for (std::int64_t t = 0; t < T; ++t) {
    if (tree_max_feature[t] >= F) {
      throw py::value_error("X has " + std::to_string(F) + " features, but a node splits on feature " +
                            std::to_string(tree_max_feature[t]));
    }
    require(tree_ok[t] != 0, "node arrays do not describe trees: a child outside its tree or before its parent, "
                             "or a leaf row outside the tree's rows");
  }
  py::array_t<double> proba({n, C});
  py::array_t<std::int64_t> used(n);
  const float* x = X.data();
  const std::int64_t* no = node_offsets.data();
  const std::int64_t* lo = leaf_offsets.data();
  const std::int32_t* ib = inbag ? inbag->data() : nullptr;
  double* out = proba.mutable_data();
  std::int64_t* cnt = used.mutable_data();
  // Inside a block of rows, tree by tree over all its rows. A forest that fits in cache is
  // walked by small blocks (512 rows: the rows stay in cache too); a larger one by two blocks
  // per thread, so each tree's nodes are fetched once per block rather than once per 512 rows.
  constexpr int kLanes = 8;
  constexpr std::int64_t kCachedForestBytes = std::int64_t(4) << 20;
  const int threads = std::max(1, n_threads);
  const std::int64_t large = std::max<std::int64_t>(kLanes, (n + 2 * threads - 1) / (2 * threads));
  const std::int64_t kBlock = n_nodes * static_cast<std::int64_t>(sizeof(PackedNode)) <= kCachedForestBytes
                                  ? std::min<std::int64_t>(512, large)
                                  : large;
  const std::int64_t n_blocks = (n + kBlock - 1) / kBlock;
  {
    py::gil_scoped_release release;
    const float* val = value.data();
    parallel_for(n_blocks, n_threads, [&](std::int64_t blk) {
      const std::int64_t r0 = blk * kBlock, r1 = std::min(n, r0 + kBlock);
      std::fill(out + r0 * C, out + r1 * C, 0.0);
      std::fill(cnt + r0, cnt + r1, 0);
      for (std::int64_t t = 0; t < T; ++t) {
        const PackedNode* tn = nodes + no[t];
        const float* tv = val + lo[t] * C;
        // kLanes rows step down together until a whole step moves none of them. Each step is
        // branch-free (a row at a leaf keeps its node by a select), so independent loads overlap
        // their cache misses and no direction is mispredicted.
        for (std::int64_t g = r0; g < r1; g += kLanes) {
          const int lanes = static_cast<int>(std::min<std::int64_t>(kLanes, r1 - g));
          std::int32_t at[kLanes] = {};
          const float* row[kLanes];
          for (int j = 0; j < kLanes; ++j) row[j] = x + (g + std::min(j, lanes - 1)) * F;
          bool moved = true;
          while (moved) {
            std::int32_t any = 0;
            for (int j = 0; j < kLanes; ++j) {
              const PackedNode& q = tn[at[j]];
              const bool inner = q.feature >= 0;
              const std::int32_t f = inner ? q.feature : 0;
              const std::int32_t step = q.child + (row[j][f] > q.threshold ? 1 : 0);
              const std::int32_t next = inner ? step : at[j];
              any |= next ^ at[j];
              at[j] = next;
            }
            moved = any != 0;
          }
          for (int j = 0; j < lanes; ++j) {
            const std::int64_t r = g + j;
            if (ib && ib[t * n + r] > 0) continue;
            const float* leaf = tv + static_cast<std::int64_t>(tn[at[j]].child) * C;
            double* o = out + r * C;
            for (std::int64_t c = 0; c < C; ++c) o[c] += leaf[c];
            ++cnt[r];
          }
        }
      }
      for (std::int64_t r = r0; r < r1; ++r) {
        if (cnt[r] == 0) continue;
        for (std::int64_t c = 0; c < C; ++c) out[r * C + c] /= static_cast<double>(cnt[r]);
      }
    });
  }
  return py::make_tuple(proba, used);
}

py::tuple best_split_exact(Arr<float> values, Arr<std::int32_t> y, Arr<double> w, int n_classes, int criterion,
                           std::int64_t min_samples_leaf, double min_weight_leaf) {
  const std::int64_t m = values.shape(0);
  require(y.shape(0) == m && w.shape(0) == m, "values, y and w must have one length");
  std::vector<float> vals(values.data(), values.data() + m);
  std::vector<std::int32_t> ids(m);
  std::vector<double> node(n_classes, 0.0), scratch(2 * n_classes);
  double node_w = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    require(y.data()[i] >= 0 && y.data()[i] < n_classes, "y must be in [0, n_classes)");
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
  const std::int64_t m = bins.shape(0);
  const int nb = static_cast<int>(edges.shape(0)) + 1;
  require(y.shape(0) == m && w.shape(0) == m, "bins, y and w must have one length");
  std::vector<double> hist(static_cast<std::size_t>(nb) * n_classes, 0.0), node(n_classes, 0.0),
      scratch(2 * n_classes);
  std::vector<std::int64_t> counts(nb, 0);
  double node_w = 0.0;
  for (std::int64_t i = 0; i < m; ++i) {
    const int b = bins.data()[i], c = y.data()[i];
    require(b < nb && c >= 0 && c < n_classes, "bins must be < len(edges) + 1 and y in [0, n_classes)");
    hist[b * n_classes + c] += w.data()[i];
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
  require(distinct.ndim() == 1 && counts.shape(0) == distinct.shape(0), "distinct and counts must have one length");
  require(max_bins >= 2, "max_bins must be >= 2");
  return to_array(mk::forest::find_splits(distinct.data(), counts.data(), distinct.shape(0), max_bins));
}

}  // namespace

void bind_forest(py::module_& m) {
  bind_hybrid_sort(m);
  m.def("build_forest", &build_forest, py::arg("X_cols"), py::arg("y"), py::arg("sample_weight"), py::arg("counts"),
        py::arg("class_weight"), py::arg("seeds"), py::arg("n_classes"), py::arg("criterion"), py::arg("max_depth"),
        py::arg("min_samples_split"), py::arg("min_samples_leaf"), py::arg("min_weight_fraction_leaf"),
        py::arg("min_impurity_decrease"), py::arg("min_info_gain"), py::arg("max_features"), py::arg("n_threads"),
        py::arg("bins") = py::none(), py::arg("n_bins") = py::none(), py::arg("split_values") = py::none(),
        py::arg("split_offsets") = py::none(), "Build n_trees trees in parallel; returns the packed node arrays.");
  m.def("predict_proba", &predict_proba, py::arg("X"), py::arg("feature"), py::arg("threshold"), py::arg("child"),
        py::arg("value"), py::arg("node_offsets"), py::arg("leaf_offsets"), py::arg("n_threads"),
        py::arg("inbag") = py::none(), "Mean leaf class fractions over trees (out-of-bag with inbag).");
  m.def("best_split_exact", &best_split_exact, py::arg("values"), py::arg("y"), py::arg("w"), py::arg("n_classes"),
        py::arg("criterion"), py::arg("min_samples_leaf"), py::arg("min_weight_leaf"));
  m.def("best_split_hist", &best_split_hist, py::arg("bins"), py::arg("y"), py::arg("w"), py::arg("edges"),
        py::arg("n_classes"), py::arg("criterion"), py::arg("min_samples_leaf"), py::arg("min_weight_leaf"));
  m.def("find_splits", &find_splits, py::arg("distinct"), py::arg("counts"), py::arg("max_bins"));
}
