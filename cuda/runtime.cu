// Host-side helpers of the CUDA backend (common.cuh, backend.hpp): errors, device guard,
// scratch memory, pointer checks, the level table, and the memory/stream helpers the
// Python module uses for outputs it allocates itself.
#include <cstdlib>
#include <string>

#include "common.cuh"

namespace msdacore {
namespace cuda {
namespace {

bool sync_after_launch() {
  static const bool on = [] {
    const char* env = std::getenv("MSDACORE_CUDA_SYNC");
    return env != nullptr && env[0] != '\0' && std::string(env) != "0";
  }();
  return on;
}

std::string device_string(int device) { return "cuda:" + std::to_string(device); }

}  // namespace

void throw_cuda_error(cudaError_t err, const char* op, const char* what) {
  (void)cudaGetLastError();  // clear a non-sticky error so later calls can succeed
  throw RuntimeError(std::string("msdacore ") + op + ": " + what + " failed: " +
                     cudaGetErrorName(err) + ": " + cudaGetErrorString(err));
}

void check_launch(const char* op, const char* kernel, cudaStream_t stream) {
  check(cudaGetLastError(), op, (std::string("launching ") + kernel).c_str());
  if (sync_after_launch()) {
    check(cudaStreamSynchronize(stream), op, (std::string("running ") + kernel).c_str());
  }
}

DeviceGuard::DeviceGuard(int device, const char* op) {
  check(cudaGetDevice(&previous_), op, "cudaGetDevice");
  if (previous_ != device) {
    check(cudaSetDevice(device), op, ("cudaSetDevice(" + std::to_string(device) + ")").c_str());
  } else {
    previous_ = -1;  // nothing to restore
  }
}

DeviceGuard::~DeviceGuard() {
  if (previous_ >= 0) (void)cudaSetDevice(previous_);
}

Scratch::Scratch(size_t bytes, int device, cudaStream_t stream, const char* op)
    : stream_(stream) {
  if (bytes == 0) return;
  int pools = 0;
  if (cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    (void)cudaGetLastError();
    pools = 0;
  }
  pooled_ = pools != 0;
  const std::string what = "allocating " + std::to_string(bytes) + " bytes of scratch memory";
  if (pooled_) {
    check(cudaMallocAsync(&ptr_, bytes, stream), op, what.c_str());
  } else {
    check(cudaMalloc(&ptr_, bytes), op, what.c_str());
  }
}

Scratch::~Scratch() {
  if (ptr_ == nullptr) return;
  if (pooled_) {
    (void)cudaFreeAsync(ptr_, stream_);
  } else {
    (void)cudaStreamSynchronize(stream_);
    (void)cudaFree(ptr_);
  }
}

void check_pointer(const char* op, const char* name, const TensorView& t) {
  if (t.numel() == 0) return;
  cudaPointerAttributes attr;
  const cudaError_t err = cudaPointerGetAttributes(&attr, t.data);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw DeviceError(std::string(name) + " is said to be on " + device_name(t.device) +
                      ", but CUDA does not know its data pointer (" + cudaGetErrorString(err) +
                      "), in msdacore " + op);
  }
  if (attr.type == cudaMemoryTypeUnregistered) {
    throw DeviceError(std::string(name) + " is said to be on " + device_name(t.device) +
                      ", but its data pointer is ordinary host memory, not CUDA memory, in "
                      "msdacore " +
                      op);
  }
  if (attr.type == cudaMemoryTypeDevice && attr.device != t.device.index) {
    throw DeviceError(std::string(name) + " is said to be on " + device_name(t.device) +
                      ", but its memory is on " + device_string(attr.device) +
                      ", in msdacore " + op);
  }
}

int multiprocessors() {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) {
    (void)cudaGetLastError();
    return 80;
  }
  return count > 0 ? count : 80;
}

int64_t make_levels(const Problem& p, int device, cudaStream_t stream, const char* op,
                    Levels* levels, std::unique_ptr<Scratch>* storage) {
  std::vector<LevelDesc> table(static_cast<size_t>(p.L));
  int64_t cells = 0;
  for (int64_t l = 0; l < p.L; ++l) {
    LevelDesc& d = table[static_cast<size_t>(l)];
    d.H = p.heights[l];
    d.W = p.widths[l];
    d.start = p.level_starts[l];
    d.cell_start = cells;
    cells += (d.H + 1) * (d.W + 1);
  }
  *levels = Levels{};
  levels->table = nullptr;
  if (p.L <= kInlineLevels) {
    for (int64_t l = 0; l < p.L; ++l) levels->inline_levels[l] = table[static_cast<size_t>(l)];
  } else {
    const size_t bytes = table.size() * sizeof(LevelDesc);
    *storage = std::make_unique<Scratch>(bytes, device, stream, op);
    // From pageable memory: the copy is staged before cudaMemcpyAsync returns, so `table`
    // may go out of scope afterwards.
    check(cudaMemcpyAsync((*storage)->get(), table.data(), bytes, cudaMemcpyHostToDevice, stream),
          op, "copying the level table to the device");
    levels->table = (*storage)->as<LevelDesc>();
  }
  return cells;
}

void* device_alloc(int device, size_t bytes, const char* what) {
  DeviceGuard guard(device, what);
  void* ptr = nullptr;
  if (bytes == 0) bytes = 1;  // a valid, unique pointer for empty outputs
  check(cudaMalloc(&ptr, bytes), what,
        ("allocating " + std::to_string(bytes) + " bytes on " + device_string(device)).c_str());
  return ptr;
}

void device_free(int device, void* ptr) noexcept {
  if (ptr == nullptr) return;
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  if (previous != device) (void)cudaSetDevice(device);
  (void)cudaFree(ptr);
  if (previous >= 0 && previous != device) (void)cudaSetDevice(previous);
  (void)cudaGetLastError();
}

void synchronize(int device, void* stream, const char* op) {
  DeviceGuard guard(device, op);
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), op, "cudaStreamSynchronize");
}

void stream_wait(int device, void* waiting, void* producer, const char* op) {
  if (waiting == producer) return;
  DeviceGuard guard(device, op);
  cudaEvent_t event;
  check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), op, "cudaEventCreate");
  cudaError_t err = cudaEventRecord(event, static_cast<cudaStream_t>(producer));
  if (err == cudaSuccess) err = cudaStreamWaitEvent(static_cast<cudaStream_t>(waiting), event, 0);
  (void)cudaEventDestroy(event);  // released once the wait has been satisfied
  check(err, op, "making one stream wait for another");
}

}  // namespace cuda
}  // namespace msdacore
