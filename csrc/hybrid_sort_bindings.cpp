// Python binding of the hybrid sort (hybrid_sort.hpp): contiguous 1-D values of float32/64 or
// int32/64 with int32/64 indices, sorted in place (the GIL released from 4096 elements). The
// Python wrapper (kernels/sort/ops.py) validates arguments and handles strided ranges; these
// checks guard direct calls.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>

#include "hybrid_sort.hpp"

namespace py = pybind11;

namespace {

template <class T, class I>
void run(py::array& values, py::array& indices) {
  T* v = static_cast<T*>(values.mutable_data());
  I* idx = static_cast<I*>(indices.mutable_data());
  const std::ptrdiff_t n = values.shape(0);
  thread_local mk::HybridSorter sorter;  // keeps its radix buffers between calls
  if (n < 4096) {  // releasing and retaking the GIL would cost more than the sort
    sorter.sort<T, I>(v, idx, n);
    return;
  }
  py::gil_scoped_release release;
  sorter.sort<T, I>(v, idx, n);
}

template <class T>
void dispatch_index(py::array& values, py::array& indices) {
  const char kind = indices.dtype().kind();
  if (kind == 'i' && indices.itemsize() == 8) {
    run<T, std::int64_t>(values, indices);
  } else if (kind == 'i' && indices.itemsize() == 4) {
    run<T, std::int32_t>(values, indices);
  } else {
    throw py::type_error("indices.dtype: supported int32, int64");
  }
}

void hybrid_sort(py::array values, py::array indices) {
  if (values.ndim() != 1 || indices.ndim() != 1 || values.shape(0) != indices.shape(0))
    throw py::value_error("values and indices must be 1-D of one length");
  if (values.shape(0) > 1 && (values.strides(0) != values.itemsize() || indices.strides(0) != indices.itemsize()))
    throw py::value_error("values and indices must be contiguous");
  if (!values.writeable() || !indices.writeable()) throw py::value_error("values and indices must be writeable");
  // dtype by kind and size: cheaper than isinstance checks, which build dtype objects per call
  const char kind = values.dtype().kind();
  const auto size = values.itemsize();
  if (kind == 'f' && size == 4) {
    dispatch_index<float>(values, indices);
  } else if (kind == 'f' && size == 8) {
    dispatch_index<double>(values, indices);
  } else if (kind == 'i' && size == 4) {
    dispatch_index<std::int32_t>(values, indices);
  } else if (kind == 'i' && size == 8) {
    dispatch_index<std::int64_t>(values, indices);
  } else {
    throw py::type_error("values.dtype: supported float32, float64, int32, int64");
  }
}

}  // namespace

void bind_hybrid_sort(py::module_& m) {
  m.def("hybrid_sort", &hybrid_sort, py::arg("values"), py::arg("indices"),
        "Sort contiguous values in place (NaN last, not stable), permuting indices alongside.");
}
