// Insertion sort of a strided range, optionally carrying an index array (key-value sort).
//
// Sorts v[first:last) ascending, stable, NaN after every number (numpy.sort's order); only the
// range moves (the seed's loop bounded j by 0 instead of first). O(n^2) compares: the base case
// of hybrid sorts for short ranges. Strides are in elements.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace mk {

template <class T>
inline bool sorts_after(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    return a > b || (a != a && b == b);  // NaN sorts after numbers; NaN vs NaN keeps order
  } else {
    return a > b;
  }
}

template <class T, class I, bool Unit>
void insertion_sort_impl(T* v, std::ptrdiff_t vs, I* idx, std::ptrdiff_t is, std::ptrdiff_t first,
                         std::ptrdiff_t last) {
  const std::ptrdiff_t sv = Unit ? 1 : vs;
  const std::ptrdiff_t si = Unit ? 1 : is;
  for (std::ptrdiff_t i = first + 1; i < last; ++i) {
    const T key = v[i * sv];
    if (!sorts_after(v[(i - 1) * sv], key)) continue;
    const I carried = idx ? idx[i * si] : I(0);
    std::ptrdiff_t j = i - 1;
    while (j >= first && sorts_after(v[j * sv], key)) {
      v[(j + 1) * sv] = v[j * sv];
      if (idx) idx[(j + 1) * si] = idx[j * si];
      --j;
    }
    v[(j + 1) * sv] = key;
    if (idx) idx[(j + 1) * si] = carried;
  }
}

// idx may be null; then is is ignored.
template <class T, class I>
void insertion_sort(T* v, std::ptrdiff_t vs, I* idx, std::ptrdiff_t is, std::ptrdiff_t first,
                    std::ptrdiff_t last) {
  if (vs == 1 && (idx == nullptr || is == 1)) {
    insertion_sort_impl<T, I, true>(v, 1, idx, 1, first, last);
  } else {
    insertion_sort_impl<T, I, false>(v, vs, idx, is, first, last);
  }
}

}  // namespace mk
