// Python binding of batch prediction: rows in parallel blocks, every tree per block. The node
// arrays are data (a model file, or arrays a caller edited), so every index prediction follows is
// checked first, in 64-bit arithmetic, O(nodes): offsets, child indices, leaf rows and features.
// The messages are pyimpl.forest.check_trees's, which the reference backend runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "check.hpp"
#include "parallel.hpp"

namespace py = pybind11;
using mk::require;

template <class T>
using Arr = py::array_t<T, py::array::c_style | py::array::forcecast>;

namespace {

struct PackedNode {
  std::int32_t feature;
  float threshold;
  std::int32_t child;
};

std::string join(const std::string& a, std::int64_t i, const std::string& b) { return a + std::to_string(i) + b; }

// node_offsets from 0 to n_nodes and leaf_offsets from 0 to at most n_rows, both strictly
// increasing (every tree has a node and a leaf).
void check_offsets(const std::int64_t* no, const std::int64_t* lo, std::int64_t T, std::int64_t n_nodes,
                   std::int64_t n_rows) {
  const std::string head = "node_offsets / leaf_offsets must increase and stay inside the arrays: ";
  for (const auto& [name, off, end, exact] : {std::tuple{"node_offsets", no, n_nodes, true},
                                              std::tuple{"leaf_offsets", lo, n_rows, false}}) {
    const std::string nm = name;
    if (off[0] != 0) throw py::value_error(head + nm + "[0] = " + std::to_string(off[0]) + ", expected 0");
    for (std::int64_t t = 0; t < T; ++t) {
      if (off[t + 1] <= off[t]) {
        throw py::value_error(head + join(nm + "[", t + 1, "] = ") + std::to_string(off[t + 1]) + " is not above " +
                              join(nm + "[", t, "] = ") + std::to_string(off[t]));
      }
    }
    if (exact ? off[T] != end : off[T] > end) {
      throw py::value_error(head + join(nm + "[", T, "] = ") + std::to_string(off[T]) + ", expected " +
                            (exact ? "the number of nodes, " : "at most the number of value rows, ") +
                            std::to_string(end));
    }
  }
}

// The first node of tree t (local index) that prediction could not follow safely, or -1.
std::int64_t first_bad_node(const PackedNode* tn, std::int64_t size, std::int64_t leaves, std::int64_t F) {
  for (std::int64_t k = 0; k < size; ++k) {
    const std::int64_t f = tn[k].feature, c = tn[k].child;
    const bool ok = f >= 0 ? (f < F && c > k && c + 1 < size) : (f == -1 && c >= 0 && c < leaves);
    if (!ok) return k;
  }
  return -1;
}

[[noreturn]] void report_bad_node(const PackedNode& nd, std::int64_t i, std::int64_t t, std::int64_t k,
                                  std::int64_t size, std::int64_t leaves, std::int64_t F) {
  const std::string at = "[" + std::to_string(i) + "] = ";
  if (nd.feature < -1) {
    throw py::value_error("node arrays do not describe trees: feature" + at + std::to_string(nd.feature) +
                          ": must be -1 at a leaf or a feature index in [0, " + std::to_string(F) + ")");
  }
  if (nd.feature >= F) {
    throw py::value_error("X has " + std::to_string(F) + " features, but a node splits on feature " +
                          std::to_string(nd.feature) + " (feature[" + std::to_string(i) + "])");
  }
  if (nd.feature >= 0) {
    throw py::value_error("node arrays do not describe trees: child" + at + std::to_string(nd.child) +
                          ": the children of split node " + std::to_string(k) + " of tree " + std::to_string(t) +
                          " must be local nodes in (" + std::to_string(k) + ", " + std::to_string(size - 1) +
                          ") (a child outside its tree or before its parent)");
  }
  throw py::value_error("node arrays do not describe trees: child" + at + std::to_string(nd.child) + ": leaf " +
                        std::to_string(k) + " of tree " + std::to_string(t) + " must name a value row in [0, " +
                        std::to_string(leaves) + ") (a leaf row outside the tree's rows)");
}

// Mean over trees of the leaf class fractions. With inbag (n_trees, n_samples), tree t is
// skipped for sample i where inbag[t, i] > 0 (the out-of-bag estimate); the second result
// counts the trees used per row.
py::tuple predict_proba(Arr<float> X, py::array feature, py::array threshold, py::array child, Arr<float> value,
                        Arr<std::int64_t> node_offsets, Arr<std::int64_t> leaf_offsets, std::int64_t n_threads,
                        std::optional<Arr<std::int32_t>> inbag) {
  require(X.ndim() == 2 && value.ndim() == 2, "X and value must be 2-D");
  require(node_offsets.ndim() == 1 && leaf_offsets.ndim() == 1, "node_offsets and leaf_offsets must be 1-D");
  const std::int64_t n = X.shape(0), F = X.shape(1), C = value.shape(1);
  const std::int64_t T = node_offsets.shape(0) - 1;
  require(T >= 1 && leaf_offsets.shape(0) == T + 1,
          "node_offsets and leaf_offsets must have n_trees + 1 entries, n_trees >= 1");
  require(F >= 1, "X must have at least one feature");
  require(py::isinstance<py::array_t<std::int32_t>>(feature) && py::isinstance<py::array_t<float>>(threshold) &&
              py::isinstance<py::array_t<std::int32_t>>(child),
          "feature, threshold, child must be int32, float32, int32");
  require(feature.ndim() == 1 && threshold.ndim() == 1 && child.ndim() == 1, "node arrays must be 1-D");
  const std::int64_t n_nodes = feature.shape(0);
  require(threshold.shape(0) == n_nodes && child.shape(0) == n_nodes, "node arrays must have one length");
  if (inbag) require(inbag->ndim() == 2 && inbag->shape(0) == T && inbag->shape(1) == n, "inbag must be (n_trees, n)");
  const std::int64_t* no = node_offsets.data();
  const std::int64_t* lo = leaf_offsets.data();
  check_offsets(no, lo, T, n_nodes, value.shape(0));
  // One 12-byte record per node. kernels.forest keeps (feature, threshold, child) as the fields
  // of one record array: then the nodes are read in place, otherwise packed here.
  const auto* base = static_cast<const char*>(feature.data());
  const bool packed = feature.strides(0) == sizeof(PackedNode) && threshold.strides(0) == sizeof(PackedNode) &&
                      child.strides(0) == sizeof(PackedNode) &&
                      static_cast<const char*>(threshold.data()) == base + offsetof(PackedNode, threshold) &&
                      static_cast<const char*>(child.data()) == base + offsetof(PackedNode, child);
  std::vector<PackedNode> copy;
  if (!packed) {
    auto fe = feature.unchecked<std::int32_t, 1>();
    auto th = threshold.unchecked<float, 1>();
    auto ch = child.unchecked<std::int32_t, 1>();
    copy.resize(n_nodes);
    for (std::int64_t k = 0; k < n_nodes; ++k) copy[k] = {fe(k), th(k), ch(k)};
  }
  const PackedNode* nodes = packed ? reinterpret_cast<const PackedNode*>(base) : copy.data();
  std::vector<std::int64_t> bad(T, -1);
  {
    py::gil_scoped_release release;
    mk::parallel_for(T, n_threads, [&](std::int64_t t) {
      bad[t] = first_bad_node(nodes + no[t], no[t + 1] - no[t], lo[t + 1] - lo[t], F);
    });
  }
  for (std::int64_t t = 0; t < T; ++t) {
    if (bad[t] >= 0) {
      report_bad_node(nodes[no[t] + bad[t]], no[t] + bad[t], t, bad[t], no[t + 1] - no[t], lo[t + 1] - lo[t], F);
    }
  }
  py::array_t<double> proba({n, C});
  py::array_t<std::int64_t> used(n);
  const float* x = X.data();
  const std::int32_t* ib = inbag ? inbag->data() : nullptr;
  double* out = proba.mutable_data();
  std::int64_t* cnt = used.mutable_data();
  // Inside a block of rows, tree by tree over all its rows. A forest that fits in cache is
  // walked by small blocks (512 rows: the rows stay in cache too); a larger one by two blocks
  // per thread, so each tree's nodes are fetched once per block rather than once per 512 rows.
  // The thread count is clamped first, so a large request cannot shrink the blocks.
  constexpr int kLanes = 8;
  constexpr std::int64_t kCachedForestBytes = std::int64_t(4) << 20;
  const int threads = mk::usable_threads(n_threads, (n + kLanes - 1) / kLanes);
  const std::int64_t large = std::max<std::int64_t>(kLanes, (n + 2 * threads - 1) / (2 * threads));
  const std::int64_t kBlock = n_nodes * static_cast<std::int64_t>(sizeof(PackedNode)) <= kCachedForestBytes
                                  ? std::min<std::int64_t>(512, large)
                                  : large;
  const std::int64_t n_blocks = (n + kBlock - 1) / kBlock;
  {
    py::gil_scoped_release release;
    const float* val = value.data();
    mk::parallel_for(n_blocks, threads, [&](std::int64_t blk) {
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
              // The checks above bound child + 1 by the tree's size at a split and child by its
              // leaf rows at a leaf, so the sum cannot overflow.
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

}  // namespace

void bind_forest_predict(py::module_& m) {
  m.def("predict_proba", &predict_proba, py::arg("X"), py::arg("feature"), py::arg("threshold"), py::arg("child"),
        py::arg("value"), py::arg("node_offsets"), py::arg("leaf_offsets"), py::arg("n_threads"),
        py::arg("inbag") = py::none(), "Mean leaf class fractions over trees (out-of-bag with inbag).");
}
