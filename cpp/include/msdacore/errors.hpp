// msdacore/errors.hpp: the exceptions the core throws.
//
// Every bad input raises an Error (derived from std::invalid_argument) whose message
// names the argument, what was expected and what was received:
//   ShapeError  - wrong rank or shape, sizes out of range, index arrays inconsistent
//                 with each other or with value (Python: ValueError)
//   DTypeError  - unsupported or mixed dtypes (Python: TypeError)
//   DeviceError - inputs on different devices, or on a device this build cannot run on
//                 (Python: ValueError)
// A failure of the device runtime itself (a kernel launch, an allocation) raises
// RuntimeError (derived from std::runtime_error).
#pragma once

#include <stdexcept>
#include <string>

namespace msdacore {

class Error : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

class ShapeError : public Error {
 public:
  using Error::Error;
};

class DTypeError : public Error {
 public:
  using Error::Error;
};

class DeviceError : public Error {
 public:
  using Error::Error;
};

class RuntimeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace msdacore
