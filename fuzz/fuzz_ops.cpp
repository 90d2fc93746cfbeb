// libFuzzer harness over the C++ API: check_inputs, ms_deform_attn_forward and
// ms_deform_attn_backward on inputs decoded from the fuzzer's bytes.
//
// The bytes choose the sizes (N, L, levels, M, D, Lq, P), the dtypes, the ranks and
// shapes (mutated now and then), the strides of every input (contiguous, zero,
// negative, padded), the values (ordinary ones, NaN, +-Inf, +-1e30, huge, denormal),
// and corruptions of the index arrays (negative, zero or huge H/W such as 2^40, level
// starts that do not match). Each input lives in its own heap buffer of exactly the
// bytes its view can reach, so AddressSanitizer reports any read outside it; outputs are
// exact-size buffers too.
//
// A run passes when every call either returns or throws msdacore::Error, and:
//   - forward and backward throw exactly when check_inputs throws (same validation);
//   - inputs are never modified;
//   - two identical calls give bitwise identical outputs (no uninitialised reads).
// Anything else (another exception, a sanitizer report, a crash, a hang) is a finding.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <limits>
#include <vector>

#include "msdacore/msdacore.hpp"

namespace {

using msdacore::DType;
using msdacore::TensorView;

constexpr int64_t kMaxElements = 1 << 14;  // per input buffer
constexpr int64_t kMaxOutput = 1 << 16;    // per output buffer (elements)
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "fuzz_ops: %s\n", what);
  std::abort();
}

// Reads choices from the fuzzer's bytes; past the end every read gives 0, which always
// means "the ordinary choice" (no mutation).
class Bytes {
 public:
  Bytes(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  // 0 .. n-1
  int64_t below(int64_t n) { return static_cast<int64_t>(byte() % n); }
  // True about once in n reads (never on zero bytes).
  bool rare(int n) { return byte() % n == 1; }
  template <typename T, size_t K>
  T pick(const T (&table)[K]) {
    return table[byte() % K];
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

const int64_t kOddSizes[] = {
    0,
    -1,
    -7,
    1,
    2,
    3,
    4,
    5,
    64,
    65,
    1000,
    int64_t(1) << 31,
    (int64_t(1) << 31) - 1,
    int64_t(1) << 32,
    int64_t(1) << 40,
    3037000500LL,
    kI64Max / 2,
    kI64Max,
    kI64Min};

const double kSpecialFloats[] = {
    std::numeric_limits<double>::quiet_NaN(),
    -std::numeric_limits<double>::quiet_NaN(),
    std::numeric_limits<double>::infinity(),
    -std::numeric_limits<double>::infinity(),
    1e30,
    -1e30,
    1e300,
    -1e300,
    3.4e38,
    -3.4e38,
    2147483648.0,
    -2147483649.0,
    9.3e18,
    -9.3e18,
    1e-310,
    -1e-45,
    0.0,
    -0.0,
    1.0,
    0.5,
    -1.0,
    2.0,
    0.9999999,
    1.0000001,
    -0.0000001};

int64_t dtype_bytes(DType t) { return msdacore::dtype_size(t); }

// A tensor with its own exact-size storage.
struct Tensor {
  std::vector<unsigned char> storage;
  TensorView view;
  std::vector<int64_t> offsets;  // element offset (from view.data) of each logical element
};

// Saturating helpers for sizes chosen by the fuzzer.
int64_t sat_mul(int64_t a, int64_t b) {
  int64_t r;
  if (__builtin_mul_overflow(a, b, &r)) return kI64Max;
  return r;
}

// Builds a view of `dims` (possibly mutated in rank and shape) with fuzzed strides over
// an exact-size buffer. Large dimensions get a zero stride so that the buffer stays small.
Tensor make_tensor(Bytes& in, std::vector<int64_t> dims, DType dtype) {
  if (in.rare(16)) {  // rank mutation
    if (!dims.empty() && in.byte() % 2) {
      dims.pop_back();
    } else {
      dims.push_back(in.pick(kOddSizes));
    }
  }
  if (!dims.empty() && in.rare(12)) {  // one dimension mutated
    dims[static_cast<size_t>(in.below(static_cast<int64_t>(dims.size())))] = in.pick(kOddSizes);
  }
  if (in.rare(24)) dtype = static_cast<DType>(in.below(6));
  if (dims.size() > static_cast<size_t>(TensorView::kMaxDims)) dims.resize(TensorView::kMaxDims);
  const int nd = static_cast<int>(dims.size());

  bool empty = false;
  for (int64_t s : dims) empty = empty || s <= 0;
  // Row-major strides (saturated), each scaled by 1 (mostly), 0, -1 or 2 (padded).
  std::vector<int64_t> strides(dims.size(), 0);
  int64_t inner = 1;
  for (int d = nd - 1; d >= 0; --d) {
    const int64_t factors[] = {1, 1, 1, 1, 1, 0, -1, 2};
    strides[d] = inner > kMaxElements ? 0 : inner * in.pick(factors);
    if (dims[d] > 1) inner = sat_mul(inner, dims[d]);
  }
  // The reachable element offsets: [lo, hi] over all indices (nothing when empty).
  int64_t lo = 0, hi = 0;
  if (!empty) {
    for (int d = 0; d < nd; ++d) {
      if (dims[d] > kMaxElements ||
          (dims[d] - 1) * (strides[d] < 0 ? -strides[d] : strides[d]) > kMaxElements) {
        strides[d] = 0;
      }
      const int64_t reach = (dims[d] - 1) * strides[d];
      if (reach < 0)
        lo += reach;
      else
        hi += reach;
    }
    if (hi - lo + 1 > kMaxElements) {
      for (int d = 0; d < nd; ++d) strides[d] = 0;
      lo = hi = 0;
    }
  }
  const int64_t count = empty ? 0 : hi - lo + 1;

  Tensor t;
  t.storage.resize(static_cast<size_t>(count * dtype_bytes(dtype)));
  unsigned char* base = t.storage.empty() ? nullptr : t.storage.data() - lo * dtype_bytes(dtype);
  if (!empty && in.rare(40)) base = nullptr;  // a null pointer with elements
  t.view = TensorView(base, nd, dims.data(), strides.data(), dtype);

  // Offsets of the logical elements in row-major order (bounded: sizes are small here,
  // and a huge axis has stride 0, so only the first few indices along it are listed).
  if (!empty && base != nullptr) {
    std::vector<int64_t> idx(dims.size(), 0);
    for (int64_t k = 0; k < kMaxElements; ++k) {
      int64_t off = 0;
      for (int d = 0; d < nd; ++d) off += idx[d] * strides[d];
      t.offsets.push_back(off);
      int d = nd - 1;
      for (; d >= 0; --d) {
        const int64_t limit = dims[d] > 4 * kMaxElements ? 2 : dims[d];
        if (++idx[d] < limit) break;
        idx[d] = 0;
      }
      if (d < 0) break;
    }
  }
  return t;
}

void store(Tensor& t, int64_t offset, double x) {
  unsigned char* p = static_cast<unsigned char*>(t.view.data) + offset * dtype_bytes(t.view.dtype);
  switch (t.view.dtype) {
    case DType::Float32: {
      const float f = static_cast<float>(x);
      std::memcpy(p, &f, 4);
      break;
    }
    case DType::Float64: std::memcpy(p, &x, 8); break;
    case DType::Int32: {
      const int32_t i = x != x ? 0
                               : static_cast<int32_t>(static_cast<int64_t>(
                                     x > 9e18 ? 9e18 : (x < -9e18 ? -9e18 : x)));
      std::memcpy(p, &i, 4);
      break;
    }
    case DType::Int64: {
      const int64_t i =
          x != x ? 0 : static_cast<int64_t>(x > 9e18 ? 9e18 : (x < -9e18 ? -9e18 : x));
      std::memcpy(p, &i, 8);
      break;
    }
    default: {  // 16-bit floats: any bit pattern
      const uint16_t bits = static_cast<uint16_t>(static_cast<uint64_t>(offset) * 40503u);
      std::memcpy(p, &bits, 2);
      break;
    }
  }
}

void store_int(Tensor& t, int64_t offset, int64_t v) {
  unsigned char* p = static_cast<unsigned char*>(t.view.data) + offset * dtype_bytes(t.view.dtype);
  if (t.view.dtype == DType::Int64) {
    std::memcpy(p, &v, 8);
  } else if (t.view.dtype == DType::Int32) {
    const int32_t i = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint64_t>(v)));
    std::memcpy(p, &i, 4);
  } else {
    store(t, offset, static_cast<double>(v));
  }
}

// Fills float data: mostly values in [lo, lo + span), sometimes special values.
void fill_floats(Bytes& in, Tensor& t, double lo, double span) {
  if (t.view.data == nullptr) return;
  for (int64_t off : t.offsets) {
    const uint8_t b = in.byte();
    const double x =
        b < 224 ? lo + span * (b / 224.0)
                : kSpecialFloats[(b - 224) % (sizeof kSpecialFloats / sizeof kSpecialFloats[0])];
    store(t, off, x);
  }
}

// Fills an index array with `values` in logical order (cycled), corrupting some.
void fill_index(Bytes& in, Tensor& t, const std::vector<int64_t>& values) {
  if (t.view.data == nullptr) return;
  for (size_t k = 0; k < t.offsets.size(); ++k) {
    int64_t v = values.empty() ? 0 : values[k % values.size()];
    if (in.rare(20)) v = in.pick(kOddSizes);
    if (in.rare(30))
      v = static_cast<int64_t>(static_cast<uint64_t>(v) + (in.byte() % 2 ? 1u : ~uint64_t(0)));
    store_int(t, t.offsets[k], v);
  }
}

// True when every dimension is >= 0 and the product of the non-zero ones is at most
// `limit` (so that no product of sizes overflows, even for an empty tensor).
bool size_ok(std::initializer_list<int64_t> dims, int64_t limit) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0) return false;
    if (d == 0) continue;
    if (__builtin_mul_overflow(n, d, &n) || n > limit) return false;
  }
  return true;
}

// A contiguous output buffer of exactly `dims` (no mutation: the harness tests the
// library's reading, and its writing into correct buffers).
struct Output {
  std::vector<unsigned char> storage;
  TensorView view;
  Output(std::vector<int64_t> dims, DType dtype) {
    int64_t n = 1;
    for (int64_t d : dims) n *= d;
    storage.assign(static_cast<size_t>(n * dtype_bytes(dtype)), 0xA5);
    std::vector<int64_t> strides(dims.size());
    int64_t s = 1;
    for (size_t d = dims.size(); d-- > 0;) {
      strides[d] = s;
      s *= dims[d];
    }
    view = TensorView(
        storage.empty() ? nullptr : storage.data(), static_cast<int32_t>(dims.size()), dims.data(),
        strides.data(), dtype);
  }
};

template <typename F>
bool throws_error(F&& f) {
  try {
    f();
    return false;
  } catch (const msdacore::Error&) {
    return true;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fuzz_ops: unexpected exception: %s\n", e.what());
    std::abort();
  } catch (...) {
    fail("unexpected non-standard exception");
  }
}

void run_one(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  const DType float_types[] = {DType::Float32, DType::Float64};
  const DType index_types[] = {DType::Int64, DType::Int32};
  const DType T = in.pick(float_types);
  const bool align_corners = in.byte() % 2;

  int64_t N = in.below(3), L = 1 + in.below(3), M = 1 + in.below(3), D = 1 + in.below(9);
  int64_t Lq = in.below(5), P = 1 + in.below(3);
  if (in.rare(20)) L = in.below(2) ? 0 : 9;
  std::vector<int64_t> H(L), W(L);
  for (int64_t l = 0; l < L; ++l) {
    H[l] = 1 + in.below(5);
    W[l] = 1 + in.below(5);
    if (in.rare(10)) H[l] = in.pick(kOddSizes);
    if (in.rare(10)) W[l] = in.pick(kOddSizes);
  }
  // S and the level starts as an overflowing computation would give them (wrapping),
  // sometimes saturated, sometimes off by one.
  std::vector<int64_t> starts(L);
  uint64_t total = 0;
  bool saturate = in.rare(6);
  for (int64_t l = 0; l < L; ++l) {
    starts[l] = static_cast<int64_t>(total);
    int64_t hw;
    if (__builtin_mul_overflow(H[l], W[l], &hw))
      hw = saturate
               ? kI64Max
               : static_cast<int64_t>(static_cast<uint64_t>(H[l]) * static_cast<uint64_t>(W[l]));
    uint64_t next = total + static_cast<uint64_t>(hw);
    if (saturate && hw > 0 && (next > static_cast<uint64_t>(kI64Max)))
      next = static_cast<uint64_t>(kI64Max);
    total = next;
  }
  int64_t S = static_cast<int64_t>(total);
  if (in.rare(12))
    S = static_cast<int64_t>(static_cast<uint64_t>(S) + (in.byte() % 2 ? 1u : ~uint64_t(0)));
  if (in.rare(20)) S = in.pick(kOddSizes);

  Tensor value = make_tensor(in, {N, S, M, D}, T);
  Tensor shapes = make_tensor(in, {L, 2}, in.pick(index_types));
  Tensor level_start = make_tensor(in, {L}, in.pick(index_types));
  Tensor loc = make_tensor(in, {N, Lq, M, L, P, 2}, T);
  Tensor attn = make_tensor(in, {N, Lq, M, L, P}, T);
  int64_t MD;
  if (__builtin_mul_overflow(M, D, &MD)) MD = kI64Max;
  Tensor grad_out = make_tensor(in, {N, Lq, MD}, T);

  fill_floats(in, value, -2.0, 4.0);
  std::vector<int64_t> hw;
  for (int64_t l = 0; l < L; ++l) {
    hw.push_back(H[l]);
    hw.push_back(W[l]);
  }
  fill_index(in, shapes, hw);
  fill_index(in, level_start, starts);
  fill_floats(in, loc, -0.3, 1.6);
  fill_floats(in, attn, -0.5, 1.5);
  fill_floats(in, grad_out, -1.0, 2.0);

  const std::vector<unsigned char> saved[] = {value.storage, shapes.storage, level_start.storage,
                                              loc.storage,   attn.storage,   grad_out.storage};
  msdacore::Options options;
  options.align_corners = align_corners;

  msdacore::Problem p;
  const bool invalid = throws_error([&] {
    p = msdacore::check_inputs(value.view, shapes.view, level_start.view, loc.view, attn.view);
  });

  if (!invalid) {
    if (p.N < 0 || p.Lq < 0) fail("check_inputs accepted a negative size");
    int64_t md;
    if (__builtin_mul_overflow(p.M, p.D, &md)) {
      // The output (N, Lq, M*D) has no representable shape: the ops must refuse.
      const int64_t wrapped =
          static_cast<int64_t>(static_cast<uint64_t>(p.M) * static_cast<uint64_t>(p.D));
      const int64_t dims[] = {p.N, p.Lq, wrapped}, strides[] = {0, 0, 1};
      const TensorView out(nullptr, 3, dims, strides, p.dtype);
      if (!throws_error([&] {
            msdacore::ms_deform_attn_forward(
                value.view, shapes.view, level_start.view, loc.view, attn.view, out, options);
          })) {
        fail("forward accepted M*D that overflows int64");
      }
    }
    // Forward, twice, into exact-size buffers.
    if (size_ok({p.N, p.Lq, p.M, p.D}, kMaxOutput)) {
      Output out1({p.N, p.Lq, p.M * p.D}, p.dtype), out2({p.N, p.Lq, p.M * p.D}, p.dtype);
      const bool e1 = throws_error([&] {
        msdacore::ms_deform_attn_forward(
            value.view, shapes.view, level_start.view, loc.view, attn.view, out1.view, options);
      });
      const bool e2 = throws_error([&] {
        msdacore::ms_deform_attn_forward(
            value.view, shapes.view, level_start.view, loc.view, attn.view, out2.view, options);
      });
      if (e1 || e2) fail("forward threw on inputs check_inputs accepted");
      if (out1.storage != out2.storage) fail("forward is not deterministic");
    }
    // Backward, twice.
    if (size_ok({p.N, p.S, p.M, p.D}, kMaxOutput) &&
        size_ok({p.N, p.Lq, p.M, p.L, p.P, 2}, kMaxOutput)) {
      Output gv1({p.N, p.S, p.M, p.D}, p.dtype), gv2({p.N, p.S, p.M, p.D}, p.dtype);
      Output gl1({p.N, p.Lq, p.M, p.L, p.P, 2}, p.dtype),
          gl2({p.N, p.Lq, p.M, p.L, p.P, 2}, p.dtype);
      Output ga1({p.N, p.Lq, p.M, p.L, p.P}, p.dtype), ga2({p.N, p.Lq, p.M, p.L, p.P}, p.dtype);
      const bool e1 = throws_error([&] {
        msdacore::ms_deform_attn_backward(
            value.view, shapes.view, level_start.view, loc.view, attn.view, grad_out.view, gv1.view,
            gl1.view, ga1.view, options);
      });
      const bool e2 = throws_error([&] {
        msdacore::ms_deform_attn_backward(
            value.view, shapes.view, level_start.view, loc.view, attn.view, grad_out.view, gv2.view,
            gl2.view, ga2.view, options);
      });
      if (e1 != e2) fail("backward threw on one of two identical calls");
      if (!e1 && (gv1.storage != gv2.storage || gl1.storage != gl2.storage ||
                  ga1.storage != ga2.storage)) {
        fail("backward is not deterministic");
      }
    }
  } else {
    // Every op must reject what check_inputs rejects, before touching the outputs.
    Output out({1, 1, 1}, T);
    const bool e = throws_error([&] {
      msdacore::ms_deform_attn_forward(
          value.view, shapes.view, level_start.view, loc.view, attn.view, out.view, options);
    });
    if (!e) fail("forward accepted inputs check_inputs rejected");
    const bool eb = throws_error([&] {
      msdacore::ms_deform_attn_backward(
          value.view, shapes.view, level_start.view, loc.view, attn.view, grad_out.view, out.view,
          out.view, out.view, options);
    });
    if (!eb) fail("backward accepted inputs check_inputs rejected");
  }

  const std::vector<unsigned char>* now[] = {&value.storage, &shapes.storage, &level_start.storage,
                                             &loc.storage,   &attn.storage,   &grad_out.storage};
  for (int k = 0; k < 6; ++k) {
    if (*now[k] != saved[k]) fail("an input was modified");
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  msdacore::set_num_threads(1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  run_one(data, size);
  return 0;
}
