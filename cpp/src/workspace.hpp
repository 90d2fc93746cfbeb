// Internal: Workspace, the scratch memory of one call, handed out in aligned pieces.
//
// A backend asks for its buffers in a fixed order with take<T>(count). The same code
// sizes the workspace: run it on a Workspace::counting() instance (no memory; the
// pointers it hands out are never dereferenced) and read used(). Then ops.cpp gives a real
// Workspace of that many bytes (the caller's Options::workspace or the default allocator)
// and the backend takes the same pieces again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "msdacore/errors.hpp"

namespace msdacore {

class Workspace {
 public:
  static constexpr int64_t kAlign = 256;  // CUDA allocation alignment; enough for any type

  // Memory [data, data + bytes).
  Workspace(void* data, int64_t bytes)
      : base_(reinterpret_cast<uintptr_t>(data)), bytes_(bytes), counting_(false) {}
  // Sizes only: take() succeeds for any size and used() tells the total.
  static Workspace counting() { return Workspace(); }

  // Room for `count` elements of T, kAlign-aligned; RuntimeError past the end.
  template <typename T>
  T* take(int64_t count, const char* what) {
    constexpr int64_t size = static_cast<int64_t>(sizeof(T));
    if (count > (kLimit - kAlign) / size) too_large(what);
    return static_cast<T*>(take_bytes(count * size, what));
  }
  void* take_bytes(int64_t bytes, const char* what) {
    const int64_t start = (used_ + kAlign - 1) / kAlign * kAlign;
    if (bytes > kLimit - start) too_large(what);
    const int64_t end = start + (bytes > 0 ? bytes : 0);
    if (!counting_ && end > bytes_) {
      throw RuntimeError(
          "msdacore: the workspace is too small for " + std::string(what) + " (" +
          std::to_string(end) + " bytes needed, " + std::to_string(bytes_) + " given)");
    }
    used_ = end;
    return reinterpret_cast<void*>(base_ + static_cast<uintptr_t>(start));
  }
  int64_t used() const { return used_; }

  // No workspace is larger than this (far below INT64_MAX, so sums cannot overflow).
  static constexpr int64_t kLimit = int64_t{1} << 62;
  bool counting_only() const { return counting_; }

 private:
  Workspace() : base_(0), bytes_(0), counting_(true) {}
  [[noreturn]] static void too_large(const char* what) {
    throw RuntimeError(std::string("msdacore: ") + what + " would need more than 2^62 bytes");
  }
  uintptr_t base_;
  int64_t bytes_;
  bool counting_;
  int64_t used_ = 0;
};

}  // namespace msdacore
