// Random-forest training and prediction: split search (exact on sorted values, or on class
// histograms of pre-binned features), tree building with an explicit node stack, trees built in
// parallel std::threads, batch prediction in parallel. pyimpl/forest.py is the executable spec:
// the same node order, the same random draws (splitmix64 below) and the same float operations in
// the same order, so a tree built here equals the reference's tree node for node.
//
// Impurity (sklearn's criteria, Breiman et al. 1984): Gini 1 - sum_c p_c^2, entropy
// -sum_c p_c log2 p_c, with p_c the weighted class fraction of the node. Candidate splits are
// ranked by sklearn's proxy (Gini: sum_c L_c^2 / W_L + sum_c R_c^2 / W_R; entropy:
// -(W_L H_L + W_R H_R)), the first maximum wins. Gain (Spark's minInfoGain):
// H - W_L/W H_L - W_R/W H_R; sklearn's min_impurity_decrease uses W/W_root times the gain.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mk::forest {

constexpr double kFeatureThreshold = 1e-7;  // values closer than this are one value (sklearn)

enum Criterion : int { kGini = 0, kEntropy = 1 };

// splitmix64 (Steele, Lea, Flood 2014): the per-tree generator of feature draws. Python's
// reference computes the same sequence with 64-bit masked integers.
inline std::uint64_t splitmix64(std::uint64_t& state) {
  state += 0x9E3779B97F4A7C15ULL;
  std::uint64_t z = state;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

double impurity(const double* counts, int n_classes, double w, int criterion);
double proxy_gain(const double* left, const double* right, int n_classes, double wl, double wr, int criterion);

// The best split of one node on one feature.
struct Candidate {
  double proxy;          // the ranking value; -inf when none
  float threshold;       // go left when x <= threshold
  std::int64_t n_left;   // samples (not weights) going left
  int bin;               // histogram mode: the last bin going left
};

struct TreeParams {
  int n_classes = 2;
  int criterion = kGini;
  int max_depth = -1;                 // -1: unlimited
  std::int64_t min_samples_split = 2;
  std::int64_t min_samples_leaf = 1;
  double min_weight_fraction_leaf = 0.0;
  double min_impurity_decrease = 0.0; // sklearn
  double min_info_gain = 0.0;         // Spark
  int max_features = 1;
};

// Inputs shared by every tree. X is column-major: X[f * n + i].
struct ForestData {
  std::int64_t n = 0;
  int n_features = 0;
  const float* X = nullptr;
  const std::int32_t* y = nullptr;
  const double* sample_weight = nullptr;
  // Histogram mode (bins != nullptr): bins[f * n + i] in [0, n_bins[f]); split_values[offsets[f] + b]
  // is the upper edge of bin b (x <= edge goes to bins <= b).
  const std::uint8_t* bins = nullptr;
  const std::int32_t* n_bins = nullptr;
  const float* split_values = nullptr;
  const std::int64_t* split_offsets = nullptr;
};

struct Tree {
  std::vector<std::int32_t> feature;  // -1 for a leaf
  std::vector<float> threshold;
  std::vector<std::int32_t> child;    // internal: left child (right = left + 1); leaf: leaf number
  std::vector<float> value;           // n_leaves x n_classes class fractions
  std::vector<double> importance;     // n_features: sum of W H - W_L H_L - W_R H_R
};

// Exact split search on one feature: sorts vals[0:m) with ids and scans the boundaries between
// distinct values. Returns false when the feature is constant on these samples.
bool exact_feature_split(float* vals, std::int32_t* ids, std::int64_t m, const std::int32_t* y, const double* w,
                         const TreeParams& p, const double* node_counts, double node_w, double min_weight_leaf,
                         double* scratch, Candidate& best);

// Histogram split search on one feature from hist[b * C + c] (weights) and counts[b] (samples).
// Returns false when at most one bin is occupied.
bool histogram_feature_split(const double* hist, const std::int64_t* counts, int n_bins, std::int64_t m,
                             const TreeParams& p, const double* node_counts, double node_w, double min_weight_leaf,
                             const float* edges, double* scratch, Candidate& best);

// One tree from in-bag counts (sample i used counts[i] times) and per-class weights.
Tree build_tree(const ForestData& d, const TreeParams& p, const std::int32_t* counts, const double* class_weight,
                std::uint64_t seed);

// Spark's findSplits for one continuous feature, from its (sorted) distinct values and their
// counts; returns the float32 split thresholds (at most max_bins - 1).
std::vector<float> find_splits(const float* distinct, const double* counts, std::int64_t n_distinct, int max_bins);

}  // namespace mk::forest
