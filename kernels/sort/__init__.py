"""Sorting kernels: the seed's insertion sort (C++), the base case of the forest splitter's hybrid sort."""

from modelkernels.kernels.sort.ops import hybrid_sort, insertion_sort

__all__ = ["hybrid_sort", "insertion_sort"]
