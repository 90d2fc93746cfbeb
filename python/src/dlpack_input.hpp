// DLPackInput: consumes one DLPack capsule (versioned or legacy) and exposes it as a
// msdacore::TensorView, calling the producer's deleter exactly once when destroyed.
// Construct and destroy it with the GIL held (deleters may touch Python objects).
#pragma once

#include <pybind11/pybind11.h>

#include <string>

#include "dlpack_abi.h"
#include "msdacore/tensor.hpp"

namespace msdacore {
namespace python {

class DLPackInput {
 public:
  // Takes ownership of the tensor in `capsule` (renaming the capsule "used_..."). `name`
  // is the argument's name, for error messages. Throws TypeError for a non-capsule.
  DLPackInput(pybind11::handle capsule, std::string name);
  ~DLPackInput();
  DLPackInput(const DLPackInput&) = delete;
  DLPackInput& operator=(const DLPackInput&) = delete;

  // The tensor as a view; throws msdacore errors for what a view cannot describe
  // (unsupported dtype or device, too many dimensions).
  TensorView view() const;

 private:
  std::string name_;
  DLManagedTensor* legacy_ = nullptr;
  DLManagedTensorVersioned* versioned_ = nullptr;
};

}  // namespace python
}  // namespace msdacore
