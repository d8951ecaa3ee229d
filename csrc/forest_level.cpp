// Level-wise forest growth (Spark ML's RandomForest.findBestSplits, Meng et al. 2016): the two
// halves of one level. level_histograms is the partition side: each row descends every tree to
// the open node it reaches and adds (bag count x sample weight) to that node's class histogram of
// each feature sampled for the node, plus its bag count to the bin's raw count; the arrays are
// accumulated in place, so a partition sums all its batches into one pair. level_best_splits is
// the driver side: for every open node it runs the library's histogram split search
// (histogram_feature_split, forest.hpp) on each sampled feature, keeps the first best proxy, and
// reports Spark's gain H - W_L/W H_L - W_R/W H_R with the children's statistics.
// pyimpl/forest_level.py is the executable spec. Every index is checked before it is used.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "forest.hpp"

namespace py = pybind11;

namespace {

template <class T>
using In = py::array_t<T, py::array::c_style | py::array::forcecast>;
template <class T>
using Out = py::array_t<T, py::array::c_style>;

[[noreturn]] void fail(const std::string& what) { throw py::value_error(what); }

void require(bool ok, const char* what) {
  if (!ok) fail(what);
}

void require(bool ok, const std::string& what) {
  if (!ok) fail(what);
}

// An output accumulated in place: it must already be a writable C-contiguous array of T (a
// converted copy would take the sums and drop them).
template <class T>
T* in_place(py::array& a, const char* what) {
  require(a.dtype().is(py::dtype::of<T>()) && (a.flags() & py::array::c_style) && a.writeable(), what);
  return static_cast<T*>(a.mutable_data());
}

std::int64_t dim(const py::array& a, int k) { return static_cast<std::int64_t>(a.shape(k)); }

// n_bins per feature, each in [1, max_bins]; returns F.
std::int64_t check_n_bins(const In<std::int32_t>& n_bins, std::int64_t max_bins) {
  require(n_bins.ndim() == 1, "n_bins must be 1-D (one entry per feature)");
  const std::int64_t F = dim(n_bins, 0);
  for (std::int64_t f = 0; f < F; ++f) {
    const std::int64_t nb = n_bins.data()[f];
    if (nb < 1 || nb > max_bins) {
      fail("n_bins[" + std::to_string(f) + "]=" + std::to_string(nb) + ": must be in [1, max_bins=" +
           std::to_string(max_bins) + "]");
    }
  }
  return F;
}

// slot_features (S, k): every entry a feature in [0, F).
void check_slot_features(const In<std::int32_t>& sf, std::int64_t S, std::int64_t F) {
  require(sf.ndim() == 2 && dim(sf, 0) == S && dim(sf, 1) >= 1,
          "slot_features must have shape (n_slots=" + std::to_string(S) + ", k >= 1)");
  const std::int64_t total = S * dim(sf, 1);
  for (std::int64_t i = 0; i < total; ++i) {
    const std::int64_t f = sf.data()[i];
    if (f < 0 || f >= F) {
      fail("slot_features holds feature " + std::to_string(f) + "; features are [0, " + std::to_string(F) + ")");
    }
  }
}

void level_histograms(In<std::uint8_t> bins, In<std::int32_t> y, In<double> sample_weight, In<std::uint8_t> bag,
                      In<std::int32_t> feature, In<std::int32_t> split_bin, In<std::int32_t> left,
                      In<std::int32_t> slot, In<std::int64_t> node_offsets, In<std::int32_t> slot_features,
                      In<std::int32_t> n_bins, py::array hist, py::array counts) {
  require(bins.ndim() == 2, "bins must be 2-D (n_rows, n_features)");
  const std::int64_t n = dim(bins, 0), F = dim(bins, 1);
  require(y.ndim() == 1 && dim(y, 0) == n, "y must have shape (" + std::to_string(n) + ",) like the rows of bins");
  require(sample_weight.ndim() == 1 && dim(sample_weight, 0) == n,
          "sample_weight must have shape (" + std::to_string(n) + ",)");
  require(bag.ndim() == 2 && dim(bag, 0) == n, "bag must have shape (n_rows=" + std::to_string(n) + ", n_trees)");
  const std::int64_t T = dim(bag, 1);
  require(node_offsets.ndim() == 1 && dim(node_offsets, 0) == T + 1,
          "node_offsets must have n_trees + 1 = " + std::to_string(T + 1) + " entries");
  const std::int64_t N = dim(feature, 0);
  require(feature.ndim() == 1 && split_bin.ndim() == 1 && left.ndim() == 1 && slot.ndim() == 1 &&
              dim(split_bin, 0) == N && dim(left, 0) == N && dim(slot, 0) == N,
          "feature, split_bin, left and slot must be 1-D of one length (the nodes)");
  double* H = in_place<double>(hist, "hist must be a writable C-contiguous float64 array");
  std::int64_t* Cn = in_place<std::int64_t>(counts, "counts must be a writable C-contiguous int64 array");
  require(hist.ndim() == 4, "hist must have shape (n_slots, k, max_bins, n_classes)");
  const std::int64_t S = dim(hist, 0), K = dim(hist, 1), B = dim(hist, 2), C = dim(hist, 3);
  require(counts.ndim() == 3 && dim(counts, 0) == S && dim(counts, 1) == K &&
              dim(counts, 2) == B,
          "counts must be a writable int64 array of shape hist.shape[:3]");
  require(C >= 1 && B >= 1, "hist needs at least one bin and one class");
  require(check_n_bins(n_bins, B) == F, "n_bins must have one entry per column of bins (" + std::to_string(F) + ")");
  check_slot_features(slot_features, S, F);
  require(dim(slot_features, 1) == K, "slot_features must have k = hist.shape[1] = " + std::to_string(K) + " columns");
  const std::int64_t* no = node_offsets.data();
  require(no[0] == 0 && no[T] == N, "node_offsets must start at 0 and end at the number of nodes");
  for (std::int64_t t = 0; t < T; ++t) {
    require(no[t + 1] > no[t], "node_offsets must increase (every tree has a root)");
    const std::int64_t size = no[t + 1] - no[t];
    for (std::int64_t j = 0; j < size; ++j) {
      const std::int64_t g = no[t] + j, f = feature.data()[g], l = left.data()[g], s = slot.data()[g];
      if (f >= F) {
        fail("node " + std::to_string(g) + " splits on feature " + std::to_string(f) + "; features are [0, " +
             std::to_string(F) + ")");
      }
      // Children after their parent and inside the tree: the descent below always ends.
      if (f >= 0 && !(l > j && l + 1 < size)) fail("node " + std::to_string(g) + " has its children outside its tree");
      if (s < -1 || s >= S) {
        fail("slot[" + std::to_string(g) + "]=" + std::to_string(s) + ": must be in [-1, " + std::to_string(S) + ")");
      }
    }
  }
  const std::uint8_t* X = bins.data();
  const std::int32_t *yv = y.data(), *fe = feature.data(), *sb = split_bin.data(), *lc = left.data(),
                     *sl = slot.data(), *sf = slot_features.data(), *nb = n_bins.data();
  const double* sw = sample_weight.data();
  const std::uint8_t* bg = bag.data();
  for (std::int64_t i = 0; i < n; ++i) {
    if (yv[i] < 0 || yv[i] >= C) {
      fail("y[" + std::to_string(i) + "]=" + std::to_string(yv[i]) + ": labels must be in [0, n_classes=" +
           std::to_string(C) + ")");
    }
    if (!(sw[i] >= 0.0 && sw[i] <= std::numeric_limits<double>::max())) {
      fail("sample_weight[" + std::to_string(i) + "] must be finite and >= 0");
    }
    for (std::int64_t f = 0; f < F; ++f) {
      if (X[i * F + f] >= nb[f]) {
        fail("bins[" + std::to_string(i) + ", " + std::to_string(f) + "]=" + std::to_string(X[i * F + f]) +
             ": must be < n_bins[" + std::to_string(f) + "]=" + std::to_string(nb[f]));
      }
    }
  }
  py::gil_scoped_release release;
  for (std::int64_t t = 0; t < T; ++t) {
    const std::int64_t base = no[t];
    for (std::int64_t i = 0; i < n; ++i) {
      const std::uint8_t c = bg[i * T + t];
      if (c == 0) continue;
      const std::uint8_t* row = X + i * F;
      std::int64_t k = 0;
      while (fe[base + k] >= 0) k = lc[base + k] + (row[fe[base + k]] > sb[base + k] ? 1 : 0);
      const std::int64_t s = sl[base + k];
      if (s < 0) continue;
      const double wc = static_cast<double>(c) * sw[i];
      for (std::int64_t j = 0; j < K; ++j) {
        const std::int64_t cell = (s * K + j) * B + row[sf[s * K + j]];
        H[cell * C + yv[i]] += wc;
        Cn[cell] += c;
      }
    }
  }
}

py::dict level_best_splits(In<double> hist, In<std::int64_t> counts, In<std::int32_t> slot_features,
                           In<std::int32_t> n_bins, In<float> split_values, In<std::int64_t> split_offsets,
                           int criterion, std::int64_t min_instances, double min_weight) {
  require(hist.ndim() == 4, "hist must be 4-D (n_slots, k, max_bins, n_classes)");
  const std::int64_t S = dim(hist, 0), K = dim(hist, 1), B = dim(hist, 2), C = dim(hist, 3);
  require(C >= 1 && C <= std::numeric_limits<int>::max(), "hist needs at least one class");
  require(counts.ndim() == 3 && dim(counts, 0) == S && dim(counts, 1) == K && dim(counts, 2) == B,
          "counts must have shape hist.shape[:3]");
  require(criterion == mk::forest::kGini || criterion == mk::forest::kEntropy,
          "criterion=" + std::to_string(criterion) + ": 0 (gini) or 1 (entropy)");
  require(min_instances >= 1, "min_instances must be >= 1");
  const std::int64_t F = check_n_bins(n_bins, B);
  check_slot_features(slot_features, S, F);
  require(dim(slot_features, 1) == K, "slot_features must have k = hist.shape[1] columns");
  require(split_offsets.ndim() == 1 && dim(split_offsets, 0) == F + 1,
          "split_offsets must have n_features + 1 = " + std::to_string(F + 1) + " entries");
  const std::int64_t* so = split_offsets.data();
  require(so[0] == 0 && so[F] == dim(split_values, 0), "split_offsets must run from 0 to len(split_values)");
  for (std::int64_t f = 0; f < F; ++f) {
    if (so[f + 1] - so[f] != n_bins.data()[f] - 1) {
      fail("split_offsets give feature " + std::to_string(f) + " " + std::to_string(so[f + 1] - so[f]) +
           " split values; it needs n_bins - 1 = " + std::to_string(n_bins.data()[f] - 1));
    }
  }
  const int nc = static_cast<int>(C);
  mk::forest::TreeParams p;
  p.n_classes = nc;
  p.criterion = criterion;
  p.min_samples_leaf = min_instances;
  Out<std::int32_t> best_feature(S), best_bin(S);
  Out<float> threshold(S);
  Out<double> gain(S), node_impurity(S), node_stats({S, C}), left_stats({S, C});
  Out<std::int64_t> node_count(S), left_count(S);
  std::vector<double> scratch(2 * C), right(C);
  const double* H = hist.data();
  const std::int64_t* Cn = counts.data();
  for (std::int64_t s = 0; s < S; ++s) {
    double* ns = node_stats.mutable_data() + s * C;
    double* ls = left_stats.mutable_data() + s * C;
    std::fill(ns, ns + C, 0.0);
    std::fill(ls, ls + C, 0.0);
    std::int64_t m = 0;
    double w = 0.0;
    for (std::int64_t b = 0; b < B; ++b) {  // every sampled feature's histogram sums to the node
      for (std::int64_t c = 0; c < C; ++c) ns[c] += H[(s * K * B + b) * C + c];
      m += Cn[s * K * B + b];
    }
    for (std::int64_t c = 0; c < C; ++c) w += ns[c];
    node_count.mutable_data()[s] = m;
    node_impurity.mutable_data()[s] = w > 0.0 ? mk::forest::impurity(ns, nc, w, criterion) : 0.0;
    mk::forest::Candidate best{-std::numeric_limits<double>::infinity(), std::numeric_limits<float>::quiet_NaN(), 0,
                               -1};
    std::int32_t bf = -1;
    for (std::int64_t j = 0; j < K && w > 0.0; ++j) {
      const std::int32_t f = slot_features.data()[s * K + j];
      const double before = best.proxy;
      mk::forest::histogram_feature_split(H + (s * K + j) * B * C, Cn + (s * K + j) * B, n_bins.data()[f], m, p, ns,
                                          w, min_weight, split_values.data() + so[f], scratch.data(), best);
      if (best.proxy > before) bf = f;
    }
    best_feature.mutable_data()[s] = bf;
    best_bin.mutable_data()[s] = bf >= 0 ? best.bin : -1;
    threshold.mutable_data()[s] = best.threshold;
    left_count.mutable_data()[s] = bf >= 0 ? best.n_left : 0;
    double g = 0.0;
    if (bf >= 0) {
      std::int64_t j = 0;
      while (slot_features.data()[s * K + j] != bf) ++j;
      double wl = 0.0;
      for (std::int64_t b = 0; b <= best.bin; ++b) {
        for (std::int64_t c = 0; c < C; ++c) ls[c] += H[((s * K + j) * B + b) * C + c];
      }
      for (std::int64_t c = 0; c < C; ++c) {
        wl += ls[c];
        right[c] = ns[c] - ls[c];
      }
      const double wr = w - wl;
      g = node_impurity.data()[s] - wl / w * mk::forest::impurity(ls, nc, wl, criterion) -
          wr / w * mk::forest::impurity(right.data(), nc, wr, criterion);
    }
    gain.mutable_data()[s] = g;
  }
  py::dict out;
  out["feature"] = best_feature;
  out["bin"] = best_bin;
  out["threshold"] = threshold;
  out["gain"] = gain;
  out["impurity"] = node_impurity;
  out["node_stats"] = node_stats;
  out["node_count"] = node_count;
  out["left_stats"] = left_stats;
  out["left_count"] = left_count;
  return out;
}

}  // namespace

void bind_forest_level(py::module_& m) {
  m.def("level_histograms", &level_histograms, py::arg("bins"), py::arg("y"), py::arg("sample_weight"),
        py::arg("bag"), py::arg("feature"), py::arg("split_bin"), py::arg("left"), py::arg("slot"),
        py::arg("node_offsets"), py::arg("slot_features"), py::arg("n_bins"), py::arg("hist"), py::arg("counts"));
  m.def("level_best_splits", &level_best_splits, py::arg("hist"), py::arg("counts"), py::arg("slot_features"),
        py::arg("n_bins"), py::arg("split_values"), py::arg("split_offsets"), py::arg("criterion"),
        py::arg("min_instances"), py::arg("min_weight"));
}
