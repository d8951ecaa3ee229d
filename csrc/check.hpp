// Argument checks of the bindings: a failed check raises ValueError with the message.
#pragma once

#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

namespace mk {

// Message as a C string: building a std::string on every call would cost an allocation even
// when the check passes.
inline void require(bool ok, const char* what) {
  if (!ok) throw pybind11::value_error(what);
}

// "name[i] = value: what is allowed" as a ValueError.
[[noreturn]] inline void bad_entry(const char* name, std::int64_t i, std::int64_t value, const std::string& allowed) {
  throw pybind11::value_error(std::string(name) + "[" + std::to_string(i) + "] = " + std::to_string(value) + ": " +
                              allowed);
}

}  // namespace mk
