// Split search, tree building and Spark's findSplits (see forest.hpp for the formulas).
#include "forest.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "hybrid_sort.hpp"

namespace mk::forest {

namespace {

constexpr double kEpsilon = std::numeric_limits<double>::epsilon();
constexpr double kNoSplit = -std::numeric_limits<double>::infinity();

// A float32 threshold t with a <= t < b (a < b): the midpoint, rounded; a when rounding reaches b.
inline float threshold_between(float a, float b) {
  const double mid = static_cast<double>(a) / 2.0 + static_cast<double>(b) / 2.0;
  const float t = static_cast<float>(mid);
  return t >= b ? a : t;
}

}  // namespace

double impurity(const double* counts, int n_classes, double w, int criterion) {
  if (criterion == kGini) {
    double sq = 0.0;
    for (int c = 0; c < n_classes; ++c) sq += counts[c] * counts[c];
    return 1.0 - sq / (w * w);
  }
  double h = 0.0;
  for (int c = 0; c < n_classes; ++c) {
    if (counts[c] > 0.0) {
      const double q = counts[c] / w;
      h -= q * std::log2(q);
    }
  }
  return h;
}

double proxy_gain(const double* left, const double* right, int n_classes, double wl, double wr, int criterion) {
  if (criterion == kGini) {
    double sl = 0.0, sr = 0.0;
    for (int c = 0; c < n_classes; ++c) {
      sl += left[c] * left[c];
      sr += right[c] * right[c];
    }
    return sl / wl + sr / wr;
  }
  return -(wl * impurity(left, n_classes, wl, criterion) + wr * impurity(right, n_classes, wr, criterion));
}

bool exact_feature_split(float* vals, std::int32_t* ids, std::int64_t m, const std::int32_t* y, const double* w,
                         const TreeParams& p, const double* node_counts, double node_w, double min_weight_leaf,
                         double* scratch, Candidate& best) {
  if (m < 2) return false;
  float lo = vals[0], hi = vals[0];
  for (std::int64_t i = 1; i < m; ++i) {
    lo = std::min(lo, vals[i]);
    hi = std::max(hi, vals[i]);
  }
  if (static_cast<double>(hi) <= static_cast<double>(lo) + kFeatureThreshold) return false;
  thread_local HybridSorter sorter;
  sorter.sort(vals, ids, m);
  const int C = p.n_classes;
  double* left = scratch;
  double* right = scratch + C;
  std::fill(left, left + C, 0.0);
  double wl = 0.0;
  std::int64_t nl = 0;
  if (p.criterion == kGini) {
    // Gini's proxy from running sums of squares: moving weight ws of class c from right to left
    // changes sum L^2 by ws (2 L_c + ws) and sum R^2 by ws (ws - 2 R_c), O(1) per sample.
    double sl = 0.0, sr = 0.0;
    for (int c = 0; c < C; ++c) {
      right[c] = node_counts[c];
      sr += right[c] * right[c];
    }
    for (std::int64_t i = 1; i < m; ++i) {
      const std::int32_t s = ids[i - 1];
      const int c = y[s];
      const double ws = w[s];
      sl += ws * (2.0 * left[c] + ws);
      sr += ws * (ws - 2.0 * right[c]);
      left[c] += ws;
      right[c] -= ws;
      wl += ws;
      ++nl;
      if (static_cast<double>(vals[i]) <= static_cast<double>(vals[i - 1]) + kFeatureThreshold) continue;
      if (nl < p.min_samples_leaf) continue;
      if (m - nl < p.min_samples_leaf) break;
      const double wr = node_w - wl;
      if (wl < min_weight_leaf || wr < min_weight_leaf) continue;
      const double pr = sl / wl + sr / wr;
      if (pr > best.proxy) {
        best.proxy = pr;
        best.threshold = threshold_between(vals[i - 1], vals[i]);
        best.n_left = nl;
        best.bin = -1;
      }
    }
    return true;
  }
  for (std::int64_t i = 1; i < m; ++i) {
    const std::int32_t s = ids[i - 1];
    left[y[s]] += w[s];
    wl += w[s];
    ++nl;
    if (static_cast<double>(vals[i]) <= static_cast<double>(vals[i - 1]) + kFeatureThreshold) continue;
    if (nl < p.min_samples_leaf) continue;
    if (m - nl < p.min_samples_leaf) break;
    const double wr = node_w - wl;
    if (wl < min_weight_leaf || wr < min_weight_leaf) continue;
    for (int c = 0; c < C; ++c) right[c] = node_counts[c] - left[c];
    const double pr = proxy_gain(left, right, C, wl, wr, p.criterion);
    if (pr > best.proxy) {
      best.proxy = pr;
      best.threshold = threshold_between(vals[i - 1], vals[i]);
      best.n_left = nl;
      best.bin = -1;
    }
  }
  return true;
}

bool histogram_feature_split(const double* hist, const std::int64_t* counts, int n_bins, std::int64_t m,
                             const TreeParams& p, const double* node_counts, double node_w, double min_weight_leaf,
                             const float* edges, double* scratch, Candidate& best) {
  int occupied = 0;
  for (int b = 0; b < n_bins; ++b) occupied += counts[b] > 0 ? 1 : 0;
  if (occupied <= 1) return false;
  const int C = p.n_classes;
  double* left = scratch;
  double* right = scratch + C;
  std::fill(left, left + C, 0.0);
  double wl = 0.0;
  std::int64_t nl = 0;
  for (int b = 0; b + 1 < n_bins; ++b) {
    if (counts[b] == 0) continue;  // the same partition as the previous occupied bin
    for (int c = 0; c < C; ++c) {
      left[c] += hist[b * C + c];
      wl += hist[b * C + c];
    }
    nl += counts[b];
    if (nl == m) break;
    if (nl < p.min_samples_leaf) continue;
    if (m - nl < p.min_samples_leaf) break;
    const double wr = node_w - wl;
    if (wl < min_weight_leaf || wr < min_weight_leaf) continue;
    for (int c = 0; c < C; ++c) right[c] = node_counts[c] - left[c];
    const double pr = proxy_gain(left, right, C, wl, wr, p.criterion);
    if (pr > best.proxy) {
      best.proxy = pr;
      best.threshold = edges[b];
      best.n_left = nl;
      best.bin = b;
    }
  }
  return true;
}

namespace {

struct StackEntry {
  std::int64_t start, end;
  std::int32_t node, depth;
  std::int64_t sib_start, sib_end;  // the smaller sibling's samples when this is the larger child
  bool after_parent;                // popped right after its parent: the parent's histograms are cached
};

// Class histograms of the features evaluated at one node, indexed by feature.
struct HistCache {
  std::vector<double> hist;           // n_features x max_bins x n_classes
  std::vector<std::int64_t> counts;   // n_features x max_bins
  std::vector<char> has;              // n_features
};

class TreeBuilder {
 public:
  TreeBuilder(const ForestData& d, const TreeParams& p) : d_(d), p_(p) {}

  Tree build(const std::int32_t* counts, const double* class_weight, std::uint64_t seed) {
    const std::int64_t n = d_.n;
    const int C = p_.n_classes, F = d_.n_features;
    w_.assign(n, 0.0);
    samples_.clear();
    for (std::int64_t i = 0; i < n; ++i) {
      const double wi = static_cast<double>(counts[i]) * d_.sample_weight[i] * class_weight[d_.y[i]];
      w_[i] = wi;
      if (counts[i] > 0 && wi > 0.0) samples_.push_back(static_cast<std::int32_t>(i));
    }
    double w_root = 0.0;
    for (std::int32_t s : samples_) w_root += w_[s];
    const double min_weight_leaf = p_.min_weight_fraction_leaf * w_root;
    buffer_.resize(samples_.size());
    vals_.resize(samples_.size());
    ids_.resize(samples_.size());
    node_counts_.resize(C);
    split_counts_.resize(2 * C);
    scratch_.resize(2 * C);
    feats_.resize(F);
    const bool hist_mode = d_.bins != nullptr;
    if (hist_mode) {
      max_bins_ = *std::max_element(d_.n_bins, d_.n_bins + F);
      for (HistCache* hc : {&cache_, &next_}) {
        hc->hist.assign(static_cast<std::size_t>(F) * max_bins_ * C, 0.0);
        hc->counts.assign(static_cast<std::size_t>(F) * max_bins_, 0);
        hc->has.assign(F, 0);
      }
      sib_hist_.resize(static_cast<std::size_t>(max_bins_) * C);
      sib_counts_.resize(max_bins_);
    }
    Tree t;
    t.importance.assign(F, 0.0);
    t.feature.push_back(-1);
    t.threshold.push_back(0.0f);
    t.child.push_back(0);
    std::uint64_t rng = seed;
    std::vector<StackEntry> stack;
    stack.push_back({0, static_cast<std::int64_t>(samples_.size()), 0, 0, 0, 0, false});
    while (!stack.empty()) {
      const StackEntry e = stack.back();
      stack.pop_back();
      const std::int64_t m = e.end - e.start;
      std::fill(node_counts_.begin(), node_counts_.end(), 0.0);
      double w_node = 0.0;
      for (std::int64_t i = e.start; i < e.end; ++i) {
        const std::int32_t s = samples_[i];
        node_counts_[d_.y[s]] += w_[s];
        w_node += w_[s];
      }
      const double imp = m > 0 ? impurity(node_counts_.data(), C, w_node, p_.criterion) : 0.0;
      bool leaf = (p_.max_depth >= 0 && e.depth >= p_.max_depth) || m < p_.min_samples_split ||
                  m < 2 * p_.min_samples_leaf || w_node < 2.0 * min_weight_leaf || imp <= kEpsilon;
      int best_f = -1;
      Candidate best{kNoSplit, 0.0f, 0, -1};
      if (!leaf) {
        if (hist_mode) std::fill(next_.has.begin(), next_.has.end(), 0);
        std::iota(feats_.begin(), feats_.end(), 0);
        int visited = 0;
        bool found = false;
        for (int j = 0; j < F; ++j) {
          if (visited >= p_.max_features && found) break;
          const int r = j + static_cast<int>(splitmix64(rng) % static_cast<std::uint64_t>(F - j));
          std::swap(feats_[j], feats_[r]);
          const int f = feats_[j];
          ++visited;
          Candidate cand{kNoSplit, 0.0f, 0, -1};
          bool varies;
          if (hist_mode) {
            varies = eval_histogram(e, f, m, w_node, min_weight_leaf, cand);
          } else {
            varies = eval_exact(e, f, m, w_node, min_weight_leaf, cand);
          }
          found = found || varies;
          if (varies && cand.proxy > best.proxy) {
            best = cand;
            best_f = f;
          }
        }
        if (hist_mode) std::swap(cache_, next_);
      }
      if (best_f >= 0) {
        // Stable partition: the left samples keep their order, then the right ones.
        std::int64_t nl = 0, nr = 0;
        const std::int64_t col = static_cast<std::int64_t>(best_f) * d_.n;
        double* cl = split_counts_.data();
        double* cr = split_counts_.data() + C;
        std::fill(cl, cl + 2 * C, 0.0);
        double wl = 0.0, wr = 0.0;
        for (std::int64_t i = e.start; i < e.end; ++i) {
          const std::int32_t s = samples_[i];
          const bool goes_left = hist_mode ? d_.bins[col + s] <= best.bin : d_.X[col + s] <= best.threshold;
          if (goes_left) {
            samples_[e.start + nl++] = s;
            cl[d_.y[s]] += w_[s];
            wl += w_[s];
          } else {
            buffer_[nr++] = s;
            cr[d_.y[s]] += w_[s];
            wr += w_[s];
          }
        }
        std::copy(buffer_.begin(), buffer_.begin() + nr, samples_.begin() + e.start + nl);
        const double imp_l = impurity(cl, C, wl, p_.criterion);
        const double imp_r = impurity(cr, C, wr, p_.criterion);
        const double gain = imp - (wl / w_node) * imp_l - (wr / w_node) * imp_r;
        const double improvement = (w_node / w_root) * gain;
        if ((p_.min_info_gain > 0.0 && gain < p_.min_info_gain) ||
            improvement + kEpsilon < p_.min_impurity_decrease) {
          best_f = -1;
        } else {
          t.importance[best_f] += w_node * imp - wl * imp_l - wr * imp_r;
          const std::int32_t left = static_cast<std::int32_t>(t.feature.size());
          t.feature[e.node] = best_f;
          t.threshold[e.node] = best.threshold;
          t.child[e.node] = left;
          for (int k = 0; k < 2; ++k) {
            t.feature.push_back(-1);
            t.threshold.push_back(0.0f);
            t.child.push_back(0);
          }
          const StackEntry le{e.start, e.start + nl, left, e.depth + 1, 0, 0, false};
          const StackEntry re{e.start + nl, e.end, left + 1, e.depth + 1, 0, 0, false};
          // The larger child goes on top, so it is built next, while this node's histograms are cached.
          if (nl >= nr) {
            stack.push_back(re);
            stack.push_back({le.start, le.end, le.node, le.depth, re.start, re.end, true});
          } else {
            stack.push_back(le);
            stack.push_back({re.start, re.end, re.node, re.depth, le.start, le.end, true});
          }
        }
      }
      if (best_f < 0) {
        t.feature[e.node] = -1;
        t.child[e.node] = static_cast<std::int32_t>(t.value.size() / C);
        for (int c = 0; c < C; ++c) {
          t.value.push_back(w_node > 0.0 ? static_cast<float>(node_counts_[c] / w_node) : 0.0f);
        }
      }
    }
    breadth_first(t);
    return t;
  }

 private:
  // Renumber the nodes level by level (children stay adjacent and after their parent): the top
  // levels, which every prediction visits, then share a few cache lines.
  static void breadth_first(Tree& t) {
    const std::size_t n = t.feature.size();
    std::vector<std::int32_t> order;  // old ids in breadth-first order
    order.reserve(n);
    order.push_back(0);
    std::vector<std::int32_t> renum(n, 0);
    for (std::size_t head = 0; head < order.size(); ++head) {
      const std::int32_t k = order[head];
      renum[k] = static_cast<std::int32_t>(head);
      if (t.feature[k] >= 0) {
        order.push_back(t.child[k]);
        order.push_back(t.child[k] + 1);
      }
    }
    std::vector<std::int32_t> feature(n), child(n);
    std::vector<float> threshold(n);
    for (std::size_t i = 0; i < n; ++i) {
      const std::int32_t k = order[i];
      feature[i] = t.feature[k];
      threshold[i] = t.threshold[k];
      child[i] = t.feature[k] >= 0 ? renum[t.child[k]] : t.child[k];
    }
    t.feature.swap(feature);
    t.threshold.swap(threshold);
    t.child.swap(child);
  }

  bool eval_exact(const StackEntry& e, int f, std::int64_t m, double w_node, double mwl, Candidate& cand) {
    const float* col = d_.X + static_cast<std::int64_t>(f) * d_.n;
    for (std::int64_t i = 0; i < m; ++i) {
      const std::int32_t s = samples_[e.start + i];
      vals_[i] = col[s];
      ids_[i] = s;
    }
    return exact_feature_split(vals_.data(), ids_.data(), m, d_.y, w_.data(), p_, node_counts_.data(), w_node, mwl,
                               scratch_.data(), cand);
  }

  void accumulate(int f, std::int64_t start, std::int64_t end, double* hist, std::int64_t* counts) {
    const int C = p_.n_classes;
    const int nb = d_.n_bins[f];
    std::fill(hist, hist + static_cast<std::size_t>(nb) * C, 0.0);
    std::fill(counts, counts + nb, 0);
    const std::uint8_t* col = d_.bins + static_cast<std::int64_t>(f) * d_.n;
    for (std::int64_t i = start; i < end; ++i) {
      const std::int32_t s = samples_[i];
      const int b = col[s];
      hist[b * C + d_.y[s]] += w_[s];
      ++counts[b];
    }
  }

  bool eval_histogram(const StackEntry& e, int f, std::int64_t m, double w_node, double mwl, Candidate& cand) {
    const int C = p_.n_classes;
    const int nb = d_.n_bins[f];
    const std::size_t hoff = static_cast<std::size_t>(f) * max_bins_ * C;
    const std::size_t coff = static_cast<std::size_t>(f) * max_bins_;
    double* hist = next_.hist.data() + hoff;
    std::int64_t* counts = next_.counts.data() + coff;
    if (e.after_parent && cache_.has[f]) {
      // Histogram subtraction: this node = parent - smaller sibling, built over the sibling only.
      accumulate(f, e.sib_start, e.sib_end, sib_hist_.data(), sib_counts_.data());
      const double* ph = cache_.hist.data() + hoff;
      const std::int64_t* pc = cache_.counts.data() + coff;
      for (int k = 0; k < nb * C; ++k) hist[k] = ph[k] - sib_hist_[k];
      for (int b = 0; b < nb; ++b) counts[b] = pc[b] - sib_counts_[b];
    } else {
      accumulate(f, e.start, e.end, hist, counts);
    }
    next_.has[f] = 1;
    return histogram_feature_split(hist, counts, nb, m, p_, node_counts_.data(), w_node, mwl,
                                   d_.split_values + d_.split_offsets[f], scratch_.data(), cand);
  }

  const ForestData& d_;
  const TreeParams& p_;
  std::vector<double> w_;
  std::vector<std::int32_t> samples_, buffer_, ids_;
  std::vector<float> vals_;
  std::vector<double> node_counts_, split_counts_, scratch_;
  std::vector<int> feats_;
  int max_bins_ = 0;
  HistCache cache_, next_;
  std::vector<double> sib_hist_;
  std::vector<std::int64_t> sib_counts_;
};

}  // namespace

Tree build_tree(const ForestData& d, const TreeParams& p, const std::int32_t* counts, const double* class_weight,
                std::uint64_t seed) {
  TreeBuilder builder(d, p);
  return builder.build(counts, class_weight, seed);
}

std::vector<float> find_splits(const float* distinct, const double* counts, std::int64_t n_distinct, int max_bins) {
  std::vector<float> out;
  if (n_distinct < 2) return out;
  const std::int64_t n_splits = max_bins - 1;
  if (n_distinct - 1 <= n_splits) {
    for (std::int64_t i = 1; i < n_distinct; ++i) out.push_back(threshold_between(distinct[i - 1], distinct[i]));
    return out;
  }
  double total = 0.0;
  for (std::int64_t i = 0; i < n_distinct; ++i) total += counts[i];
  const double stride = total / static_cast<double>(n_splits + 1);
  double current = counts[0];
  double target = stride;
  for (std::int64_t i = 1; i < n_distinct; ++i) {
    const double previous = current;
    current += counts[i];
    if (std::abs(previous - target) < std::abs(current - target)) {
      out.push_back(threshold_between(distinct[i - 1], distinct[i]));
      target += stride;
    }
  }
  return out;
}

}  // namespace mk::forest
