// Python bindings of the insertion sort: dtype dispatch over float32/64 and int32/64 values and
// int32/64 indices, any stride, GIL released while sorting. Argument checks mirror
// pyimpl.sort.check_sort_args, which the Python wrapper runs first; these guard direct calls.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "sort.hpp"

namespace py = pybind11;

namespace {

template <class T, class I>
void run_sort(py::array& values, std::optional<py::array>& indices, std::ptrdiff_t first, std::ptrdiff_t last) {
  T* v = static_cast<T*>(values.mutable_data());
  const std::ptrdiff_t vs = values.strides(0) / static_cast<std::ptrdiff_t>(sizeof(T));
  I* idx = nullptr;
  std::ptrdiff_t is = 1;
  if (indices) {
    idx = static_cast<I*>(indices->mutable_data());
    is = indices->strides(0) / static_cast<std::ptrdiff_t>(sizeof(I));
  }
  py::gil_scoped_release release;
  mk::insertion_sort<T, I>(v, vs, idx, is, first, last);
}

template <class T>
void dispatch_index(py::array& values, std::optional<py::array>& indices, std::ptrdiff_t first, std::ptrdiff_t last) {
  if (!indices || py::isinstance<py::array_t<std::int64_t>>(*indices)) {
    run_sort<T, std::int64_t>(values, indices, first, last);
  } else if (py::isinstance<py::array_t<std::int32_t>>(*indices)) {
    run_sort<T, std::int32_t>(values, indices, first, last);
  } else {
    throw py::type_error("indices.dtype: supported int32, int64");
  }
}

void insertion_sort(py::array values, std::ptrdiff_t first, std::ptrdiff_t last, std::optional<py::array> indices) {
  if (values.ndim() != 1) throw py::value_error("values must be 1-D");
  const std::ptrdiff_t n = values.shape(0);
  if (first < 0 || first > n) throw py::index_error("first=" + std::to_string(first) + " is out of range");
  if (last < 0 || last > n) throw py::index_error("last=" + std::to_string(last) + " is out of range");
  if (first > last) throw py::value_error("first > last: the range [first, last) is reversed");
  if (indices && (indices->ndim() != 1 || indices->shape(0) != n))
    throw py::value_error("indices must be 1-D of the same length as values");
  const auto itemsize = values.itemsize();
  if (values.strides(0) % itemsize != 0) throw py::value_error("values has a stride that is not a multiple of its item size");
  if (indices && indices->strides(0) % indices->itemsize() != 0)
    throw py::value_error("indices has a stride that is not a multiple of its item size");
  if (py::isinstance<py::array_t<float>>(values)) {
    dispatch_index<float>(values, indices, first, last);
  } else if (py::isinstance<py::array_t<double>>(values)) {
    dispatch_index<double>(values, indices, first, last);
  } else if (py::isinstance<py::array_t<std::int32_t>>(values)) {
    dispatch_index<std::int32_t>(values, indices, first, last);
  } else if (py::isinstance<py::array_t<std::int64_t>>(values)) {
    dispatch_index<std::int64_t>(values, indices, first, last);
  } else {
    throw py::type_error("values.dtype: supported float32, float64, int32, int64");
  }
}

}  // namespace

void bind_sort(py::module_& m) {
  m.def("insertion_sort", &insertion_sort, py::arg("values"), py::arg("first"), py::arg("last"),
        py::arg("indices") = py::none(),
        "Sort values[first:last) in place (stable, NaN last), permuting indices alongside.");
}
