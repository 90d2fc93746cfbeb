// Host-side helpers of the CUDA backend (common.cuh, backend.hpp): errors, device guard,
// pointer checks, the level table, the widening of mixed-precision inputs, the default
// allocator's stream-ordered pool, and the stream services of runtime.hpp.
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

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
  throw RuntimeError(
      std::string("msdacore ") + op + ": " + what + " failed: " + cudaGetErrorName(err) + ": " +
      cudaGetErrorString(err));
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

void check_pointer(const char* op, const char* name, const TensorView& t) {
  if (t.numel() == 0) return;
  cudaPointerAttributes attr;
  const cudaError_t err = cudaPointerGetAttributes(&attr, t.data);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();
    throw DeviceError(
        std::string(name) + " is said to be on " + device_name(t.device) +
        ", but CUDA does not know its data pointer (" + cudaGetErrorString(err) +
        "), in msdacore " + op);
  }
  if (attr.type == cudaMemoryTypeUnregistered) {
    throw DeviceError(
        std::string(name) + " is said to be on " + device_name(t.device) +
        ", but its data pointer is ordinary host memory, not CUDA memory, in "
        "msdacore " +
        op);
  }
  if (attr.type == cudaMemoryTypeDevice && attr.device != t.device.index) {
    throw DeviceError(
        std::string(name) + " is said to be on " + device_name(t.device) +
        ", but its memory is on " + device_string(attr.device) + ", in msdacore " + op);
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

int64_t make_levels(
    const Problem& p, const Strides<6>* ls, const Strides<5>* as, cudaStream_t stream,
    const char* op, Levels* levels, Workspace& workspace) {
  std::vector<LevelDesc> table(static_cast<size_t>(p.L));
  int64_t cells = 0;
  for (int64_t l = 0; l < p.L; ++l) {
    LevelDesc& d = table[static_cast<size_t>(l)];
    d.H = p.heights[l];
    d.W = p.widths[l];
    d.start = p.level_starts[l];
    d.cell_start = cells;
    cells += (d.H + 1) * (d.W + 1);
    d.first_point = p.point_starts[l];
    d.points = p.points[l];
    // As the CPU's level_geometry, the level's first point is at l * stride[3] (uniform
    // layout) or point_starts[l] * stride[4] (flattened); the kernels address point
    // `point` = point_starts[l] + pt of a head as base + point * stride[4] (so the base is 0
    // in the flattened layout).
    const auto base = [&](const int64_t* s) {
      const int64_t first = p.flattened ? p.point_starts[l] * s[4] : l * s[3];
      return first - p.point_starts[l] * s[4];
    };
    if (ls != nullptr) d.loc_base = base(ls->s);
    if (as != nullptr) d.attn_base = base(as->s);
  }
  *levels = Levels{};
  levels->table = nullptr;
  if (p.L <= kInlineLevels) {
    for (int64_t l = 0; l < p.L; ++l) levels->inline_levels[l] = table[static_cast<size_t>(l)];
  } else {
    LevelDesc* device_table = workspace.take<LevelDesc>(p.L, "the level table");
    if (!workspace.counting_only()) {
      // From pageable memory: the copy is staged before cudaMemcpyAsync returns, so `table`
      // may go out of scope afterwards.
      check(
          cudaMemcpyAsync(
              device_table, table.data(), table.size() * sizeof(LevelDesc), cudaMemcpyHostToDevice,
              stream),
          op, "copying the level table to the device");
    }
    levels->table = device_table;
  }
  return cells;
}

// ---- mixed precision --------------------------------------------------------------------

namespace {

// A strided view of up to kWidenDims dimensions (sampling_locations has the most), for
// widen_kernel: the shape padded in front with dimensions of size 1 (stride 0).
constexpr int kWidenDims = 6;
struct WidenSource {
  int64_t shape[kWidenDims];
  int64_t strides[kWidenDims];
};

// dst[i] = src[element i in row-major order over src's shape] as float32, i < count.
template <typename T>
__global__ void widen_kernel(
    const T* __restrict__ src, const WidenSource shape, float* __restrict__ dst, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    int64_t offset = 0, rest = i;
#pragma unroll
    for (int d = kWidenDims - 1; d >= 0; --d) {
      offset += (rest % shape.shape[d]) * shape.strides[d];
      rest /= shape.shape[d];
    }
    dst[i] = to_acc(src[offset]);
  }
}

// The float32 copy of `t` (value's half dtype) for widen_companions.
TensorView widen(
    const TensorView& t, cudaStream_t stream, const char* op, Workspace& workspace,
    const char* what) {
  const int64_t count = t.numel();
  float* copy = workspace.take<float>(count, what);
  if (workspace.counting_only() || count == 0) return dense_like(t, copy, DType::Float32);
  if (t.ndim > kWidenDims) {
    throw RuntimeError(std::string("msdacore ") + op + ": unexpected rank of " + what);
  }
  WidenSource shape{};
  const int pad = kWidenDims - t.ndim;
  for (int d = 0; d < kWidenDims; ++d) {
    shape.shape[d] = d < pad ? 1 : t.shape[d - pad];
    shape.strides[d] = d < pad ? 0 : t.strides[d - pad];
  }
  const int64_t blocks = (count + kBlockThreads - 1) / kBlockThreads;
  const int64_t cap = static_cast<int64_t>(multiprocessors()) * 32;
  const unsigned int grid = grid_for(blocks < cap ? blocks : cap);
  if (t.dtype == DType::Float16) {
    widen_kernel<__half><<<grid, kBlockThreads, 0, stream>>>(
        static_cast<const __half*>(t.data), shape, copy, count);
  } else if (t.dtype == DType::BFloat16) {
    widen_kernel<__nv_bfloat16><<<grid, kBlockThreads, 0, stream>>>(
        static_cast<const __nv_bfloat16*>(t.data), shape, copy, count);
  } else {
    throw DTypeError(
        std::string("msdacore ") + op + ": unexpected dtype " + dtype_name(t.dtype) + " to widen");
  }
  check_launch(op, "widen_kernel", stream);
  return dense_like(t, copy, DType::Float32);
}

}  // namespace

Companions widen_companions(
    const Problem& p, const TensorView& loc, const TensorView& attn, cudaStream_t stream,
    const char* op, Workspace& workspace) {
  Companions c{loc, attn};
  if (companion_is_float(p)) {
    if (p.loc_dtype != DType::Float32) {
      c.loc = widen(loc, stream, op, workspace, "the float32 sampling_locations");
    }
    if (p.attn_dtype != DType::Float32) {
      c.attn = widen(attn, stream, op, workspace, "the float32 attention_weights");
    }
  }
  return c;
}

Companions companion_shapes(const Problem& p) {
  Companions c;
  if (p.flattened) {
    c.loc = TensorView(nullptr, {p.N, p.Lq, p.M, p.P_total, 2}, p.loc_dtype, p.device);
    c.attn = TensorView(nullptr, {p.N, p.Lq, p.M, p.P_total}, p.attn_dtype, p.device);
  } else {
    c.loc = TensorView(nullptr, {p.N, p.Lq, p.M, p.L, p.P, 2}, p.loc_dtype, p.device);
    c.attn = TensorView(nullptr, {p.N, p.Lq, p.M, p.L, p.P}, p.attn_dtype, p.device);
  }
  return c;
}

// ---- the default allocator's pool (memory.hpp) ------------------------------------------

namespace {

constexpr uint64_t kDefaultReleaseThreshold = uint64_t{1} << 30;  // 1 GiB

uint64_t release_threshold() {
  const char* env = std::getenv("MSDACORE_CUDA_POOL_RELEASE_THRESHOLD");
  if (env == nullptr || env[0] == '\0') return kDefaultReleaseThreshold;
  char* end = nullptr;
  const unsigned long long v = std::strtoull(env, &end, 10);
  return (end != nullptr && *end == '\0') ? static_cast<uint64_t>(v) : kDefaultReleaseThreshold;
}

// msdacore's pool on `device`, created on first use; null where the device has no memory
// pools (then plain cudaMalloc / cudaFree).
cudaMemPool_t pool_of(int device) {
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> pools;
  std::lock_guard<std::mutex> lock(mutex);
  const auto found = pools.find(device);
  if (found != pools.end()) return found->second;
  int supported = 0;
  if (cudaDeviceGetAttribute(&supported, cudaDevAttrMemoryPoolsSupported, device) != cudaSuccess) {
    (void)cudaGetLastError();
    supported = 0;
  }
  cudaMemPool_t pool = nullptr;
  if (supported != 0) {
    cudaMemPoolProps props{};
    props.allocType = cudaMemAllocationTypePinned;
    props.location.type = cudaMemLocationTypeDevice;
    props.location.id = device;
    check(cudaMemPoolCreate(&pool, &props), "allocate", "creating the memory pool");
    uint64_t threshold = release_threshold();
    check(
        cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &threshold), "allocate",
        "setting the memory pool's release threshold");
  }
  pools[device] = pool;
  return pool;
}

}  // namespace

void* pool_allocate(int device, int64_t bytes, void* stream) {
  DeviceGuard guard(device, "allocate");
  const size_t size = bytes > 0 ? static_cast<size_t>(bytes) : 1;  // a unique pointer for 0
  const std::string what =
      "allocating " + std::to_string(bytes) + " bytes on " + device_string(device);
  void* ptr = nullptr;
  if (cudaMemPool_t pool = pool_of(device)) {
    check(
        cudaMallocFromPoolAsync(&ptr, size, pool, static_cast<cudaStream_t>(stream)), "allocate",
        what.c_str());
  } else {
    check(cudaMalloc(&ptr, size), "allocate", what.c_str());
  }
  return ptr;
}

void pool_free(int device, void* ptr, void* stream) noexcept {
  if (ptr == nullptr) return;
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  if (previous != device) (void)cudaSetDevice(device);
  cudaMemPool_t pool = nullptr;
  try {
    pool = pool_of(device);
  } catch (...) {
    pool = nullptr;
  }
  if (pool != nullptr) {
    (void)cudaFreeAsync(ptr, static_cast<cudaStream_t>(stream));
  } else {
    (void)cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
    (void)cudaFree(ptr);
  }
  if (previous >= 0 && previous != device) (void)cudaSetDevice(previous);
  (void)cudaGetLastError();
}

void synchronize(int device, void* stream) {
  DeviceGuard guard(device, "cuda_synchronize");
  check(
      cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "cuda_synchronize",
      "cudaStreamSynchronize");
}

void stream_wait(int device, void* waiting, void* producer) {
  if (waiting == producer) return;
  const char* op = "cuda_stream_wait";
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
