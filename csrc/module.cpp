// The extension module kernels._native: each domain's bindings register into it.
#include <pybind11/pybind11.h>

namespace py = pybind11;

void bind_sort(py::module_& m);
void bind_forest(py::module_& m);
void bind_forest_level(py::module_& m);

PYBIND11_MODULE(_native, m) {
  m.doc() = "ModelKernels C++ kernels (csrc/)";
  bind_sort(m);
  bind_forest(m);
  bind_forest_level(m);
}
