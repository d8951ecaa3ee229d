// Hybrid sort of (value, index) pairs, the tree splitter's workload: the values of one feature
// over the samples of a node, carried with their sample indices.
//
// Layers, by range length n (thresholds measured on the splitter's workload, random and
// 5-distinct float32 columns, on a 2-core AMD EPYC):
//  * n >= 64: LSD radix sort on order-preserving unsigned keys (8-bit digits below 4096
//    elements, 11-bit above). A pass whose digit is the same for every key is skipped, so a
//    column with few distinct values costs one or two passes. O(n) per pass.
//  * 16 < n < 64: introsort with a 3-way partition (< pivot, == pivot, > pivot, done as two
//    branch-free Lomuto passes): a run of equal values is finished in one partition and never
//    recursed into, which keeps low-cardinality columns at O(n log k) for k distinct values.
//    Pivot: median of three (Tukey's ninther above 128). Depth limit 2 floor(log2 n), then
//    heapsort (Musser's introsort): O(n log n) worst case.
//  * n <= 16: the insertion sort of sort.hpp.
// NaN sorts after every number (numpy's order): NaNs are moved to the end first. Not stable
// overall (the introsort layer is not): the order of indices among equal values is unspecified.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include "sort.hpp"

namespace mk {

namespace hybrid_detail {

constexpr std::ptrdiff_t kInsertionMax = 16;
constexpr std::ptrdiff_t kNintherMin = 128;

template <class T, class I>
inline void swap_pair(T* v, I* idx, std::ptrdiff_t a, std::ptrdiff_t b) {
  std::swap(v[a], v[b]);
  std::swap(idx[a], idx[b]);
}

template <class T>
inline T median3(T a, T b, T c) {
  if (a < b) {
    if (b < c) return b;
    return a < c ? c : a;
  }
  if (a < c) return a;
  return b < c ? c : b;
}

template <class T, class I>
void sift_down(T* v, I* idx, std::ptrdiff_t root, std::ptrdiff_t n) {
  while (true) {
    std::ptrdiff_t child = 2 * root + 1;
    if (child >= n) return;
    if (child + 1 < n && v[child] < v[child + 1]) ++child;
    if (!(v[root] < v[child])) return;
    swap_pair(v, idx, root, child);
    root = child;
  }
}

template <class T, class I>
void heap_sort(T* v, I* idx, std::ptrdiff_t n) {
  for (std::ptrdiff_t i = n / 2 - 1; i >= 0; --i) sift_down(v, idx, i, n);
  for (std::ptrdiff_t end = n - 1; end > 0; --end) {
    swap_pair(v, idx, 0, end);
    sift_down(v, idx, 0, end);
  }
}

// Moves the elements of [lo, hi) that satisfy pred to the front (order not kept); returns the end
// of that part. Branch-free: every step writes both slots and advances the split by pred(x).
template <class T, class I, class Pred>
inline std::ptrdiff_t partition_before(T* v, I* idx, std::ptrdiff_t lo, std::ptrdiff_t hi, Pred pred) {
  std::ptrdiff_t j = lo;
  for (std::ptrdiff_t i = lo; i < hi; ++i) {
    const T x = v[i];
    const I xi = idx[i];
    v[i] = v[j];
    idx[i] = idx[j];
    v[j] = x;
    idx[j] = xi;
    j += pred(x) ? 1 : 0;
  }
  return j;
}

template <class T, class I>
void introsort(T* v, I* idx, std::ptrdiff_t lo, std::ptrdiff_t hi, int depth) {
  while (hi - lo > kInsertionMax) {
    if (depth-- == 0) {
      heap_sort(v + lo, idx + lo, hi - lo);
      return;
    }
    const std::ptrdiff_t n = hi - lo;
    const std::ptrdiff_t mid = lo + n / 2;
    T pivot;
    if (n > kNintherMin) {
      const std::ptrdiff_t s = n / 8;
      pivot = median3(median3(v[lo], v[lo + s], v[lo + 2 * s]), median3(v[mid - s], v[mid], v[mid + s]),
                      median3(v[hi - 1 - 2 * s], v[hi - 1 - s], v[hi - 1]));
    } else {
      pivot = median3(v[lo], v[mid], v[hi - 1]);
    }
    // Two branch-free Lomuto passes (the comparison outcome moves an index instead of steering a
    // branch, so random data costs no mispredictions): first < pivot to the front, then == pivot
    // to the front of the rest. Result: [lo, lt) < pivot, [lt, gt) == pivot, [gt, hi) > pivot.
    const std::ptrdiff_t lt = partition_before(v, idx, lo, hi, [pivot](T x) { return x < pivot; });
    const std::ptrdiff_t gt = partition_before(v, idx, lt, hi, [pivot](T x) { return !(pivot < x); });
    // Recurse into the smaller side, loop on the larger: O(log n) stack.
    if (lt - lo < hi - gt) {
      introsort(v, idx, lo, lt, depth);
      lo = gt;
    } else {
      introsort(v, idx, gt, hi, depth);
      hi = lt;
    }
  }
  insertion_sort<T, I>(v, 1, idx, 1, lo, hi);
}

inline int depth_limit(std::ptrdiff_t n) {
  int d = 0;
  while (n > 1) {
    n >>= 1;
    ++d;
  }
  return 2 * d;
}

}  // namespace hybrid_detail

// Order-preserving map of a value to an unsigned key (floats: flip all bits of negatives, the
// sign bit of positives; signed ints: flip the sign bit), and back.
template <class T>
struct RadixKey {
  using U = std::conditional_t<sizeof(T) == 4, std::uint32_t, std::uint64_t>;
  static constexpr U kSign = U(1) << (8 * sizeof(T) - 1);
  static U encode(T x) {
    U u;
    std::memcpy(&u, &x, sizeof(T));
    if constexpr (std::is_floating_point_v<T>) {
      return (u & kSign) ? ~u : (u | kSign);
    } else {
      return u ^ kSign;
    }
  }
  static T decode(U u) {
    if constexpr (std::is_floating_point_v<T>) {
      u = (u & kSign) ? (u & ~kSign) : ~u;
    } else {
      u ^= kSign;
    }
    T x;
    std::memcpy(&x, &u, sizeof(T));
    return x;
  }
};

// Sorts (value, index) pairs; owns the scratch buffers of the radix passes so that a splitter
// sorting many columns allocates once. Ranges of at least kRadixMin elements go through an LSD
// radix sort on 11-bit digits (passes whose digit is the same for every key are skipped, so a
// column with few distinct values costs one or two passes); shorter ranges through the 3-way
// introsort above, which ends in the insertion sort of sort.hpp.
class HybridSorter {
 public:
  static constexpr std::ptrdiff_t kRadixMin = 64;
  static constexpr std::ptrdiff_t kWideDigitsMin = 4096;

  template <class T, class I>
  void sort(T* v, I* idx, std::ptrdiff_t n) {
    std::ptrdiff_t m = n;
    if constexpr (std::is_floating_point_v<T>) {
      std::ptrdiff_t i = 0;
      while (i < m) {
        if (v[i] != v[i]) {
          --m;
          hybrid_detail::swap_pair(v, idx, i, m);
        } else {
          ++i;
        }
      }
    }
    if (m > static_cast<std::ptrdiff_t>(UINT32_MAX)) {  // past 32-bit bucket offsets
      hybrid_detail::introsort(v, idx, 0, m, hybrid_detail::depth_limit(m));
    } else if (m >= kWideDigitsMin) {
      radix_sort<11>(v, idx, m);
    } else if (m >= kRadixMin) {
      radix_sort<8>(v, idx, m);
    } else {
      hybrid_detail::introsort(v, idx, 0, m, hybrid_detail::depth_limit(m));
    }
  }

 private:
  // LSD radix sort, kBits-bit digits. Each pass counts and scatters the two halves of the array
  // as two interleaved streams with their own bucket offsets (the first half's elements of a
  // bucket go before the second half's, which keeps the pass stable): runs of one bucket, the
  // common case with few distinct values, then form two short dependency chains instead of one.
  template <int kBits, class T, class I>
  void radix_sort(T* v, I* idx, std::ptrdiff_t n) {
    constexpr std::size_t kBuckets = std::size_t(1) << kBits;
    constexpr std::size_t kMask = kBuckets - 1;
    using K = RadixKey<T>;
    using U = typename K::U;
    constexpr int kPasses = (8 * sizeof(U) + kBits - 1) / kBits;
    const std::size_t bytes_keys = sizeof(U) * static_cast<std::size_t>(n);
    const std::size_t bytes_idx = sizeof(I) * static_cast<std::size_t>(n);
    if (buffer_.size() < 2 * bytes_keys + 2 * bytes_idx) buffer_.resize(2 * bytes_keys + 2 * bytes_idx);
    U* keys = reinterpret_cast<U*>(buffer_.data());
    U* keys_alt = reinterpret_cast<U*>(buffer_.data() + bytes_keys);
    I* ids = reinterpret_cast<I*>(buffer_.data() + 2 * bytes_keys);
    I* ids_alt = reinterpret_cast<I*>(buffer_.data() + 2 * bytes_keys + bytes_idx);
    U all_or = 0, all_and = ~U(0);
    for (std::ptrdiff_t i = 0; i < n; ++i) {
      const U k = K::encode(v[i]);
      keys[i] = k;
      ids[i] = idx[i];
      all_or |= k;
      all_and &= k;
    }
    const U varying = all_or ^ all_and;  // bits that differ between some keys
    int last = -1;                       // the last pass that moves anything writes into v, idx
    for (int p = 0; p < kPasses; ++p) {
      if ((varying >> (p * kBits)) & kMask) last = p;
    }
    if (last < 0) return;  // all keys equal: already sorted
    const std::ptrdiff_t half = n / 2;
    offsets_.resize(2 * kBuckets);
    std::uint32_t* off_a = offsets_.data();
    std::uint32_t* off_b = offsets_.data() + kBuckets;
    for (int p = 0; p <= last; ++p) {
      const int shift = p * kBits;
      if (!((varying >> shift) & kMask)) continue;
      std::fill(off_a, off_a + 2 * kBuckets, 0u);
      for (std::ptrdiff_t i = 0; i < half; ++i) {
        ++off_a[(keys[i] >> shift) & kMask];
        ++off_b[(keys[half + i] >> shift) & kMask];
      }
      if (n & 1) ++off_b[(keys[n - 1] >> shift) & kMask];
      std::uint32_t sum = 0;
      for (std::size_t b = 0; b < kBuckets; ++b) {
        const std::uint32_t ca = off_a[b], cb = off_b[b];
        off_a[b] = sum;
        off_b[b] = sum + ca;
        sum += ca + cb;
      }
      if (p == last) {
        for (std::ptrdiff_t i = 0; i < half; ++i) {
          const U ka = keys[i], kb = keys[half + i];
          const std::uint32_t da = off_a[(ka >> shift) & kMask]++;
          const std::uint32_t db = off_b[(kb >> shift) & kMask]++;
          v[da] = K::decode(ka);
          idx[da] = ids[i];
          v[db] = K::decode(kb);
          idx[db] = ids[half + i];
        }
        if (n & 1) {
          const U k = keys[n - 1];
          const std::uint32_t d = off_b[(k >> shift) & kMask]++;
          v[d] = K::decode(k);
          idx[d] = ids[n - 1];
        }
        return;
      }
      for (std::ptrdiff_t i = 0; i < half; ++i) {
        const U ka = keys[i], kb = keys[half + i];
        const std::uint32_t da = off_a[(ka >> shift) & kMask]++;
        const std::uint32_t db = off_b[(kb >> shift) & kMask]++;
        keys_alt[da] = ka;
        ids_alt[da] = ids[i];
        keys_alt[db] = kb;
        ids_alt[db] = ids[half + i];
      }
      if (n & 1) {
        const U k = keys[n - 1];
        const std::uint32_t d = off_b[(k >> shift) & kMask]++;
        keys_alt[d] = k;
        ids_alt[d] = ids[n - 1];
      }
      std::swap(keys, keys_alt);
      std::swap(ids, ids_alt);
    }
  }

  std::vector<unsigned char> buffer_;
  std::vector<std::uint32_t> offsets_;
};
// Sort v[0:n) ascending with idx[0:n) carried alongside; NaN last. Contiguous arrays.
template <class T, class I>
void hybrid_sort(T* v, I* idx, std::ptrdiff_t n) {
  HybridSorter sorter;
  sorter.sort(v, idx, n);
}

}  // namespace mk
