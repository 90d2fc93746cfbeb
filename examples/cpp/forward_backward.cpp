// Multi-scale deformable attention from a C++ application, with no Python anywhere:
// forward and backward on a small Deformable-DETR-like configuration in float32, checked
// against a plain double reference of the formulas in docs/conventions.md. Exits 1 on a mismatch.
#include <cmath>
#include <cstdio>
#include <msdacore/msdacore.hpp>
#include <random>
#include <vector>

namespace {

// Two feature levels, 3 heads of 12 channels (D need not be a power of two), 4 points
// per level, 2 images of 40 queries each.
constexpr int64_t N = 2, Lq = 40, M = 3, D = 12, L = 2, P = 4;
const int64_t kLevels[L][2] = {{10, 14}, {5, 7}};  // (H_l, W_l)

struct Reference {
  std::vector<double> out, grad_value, grad_loc, grad_attn;
};

// The formulas of docs/conventions.md, written plainly in double.
Reference reference(
    const std::vector<float>& value, const std::vector<float>& loc, const std::vector<float>& attn,
    const std::vector<float>& grad_out, int64_t S, const std::vector<int64_t>& starts) {
  Reference r;
  r.out.assign(N * Lq * M * D, 0.0);
  r.grad_value.assign(N * S * M * D, 0.0);
  r.grad_loc.assign(N * Lq * M * L * P * 2, 0.0);
  r.grad_attn.assign(N * Lq * M * L * P, 0.0);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t q = 0; q < Lq; ++q)
      for (int64_t m = 0; m < M; ++m)
        for (int64_t l = 0; l < L; ++l)
          for (int64_t p = 0; p < P; ++p) {
            const int64_t H = kLevels[l][0], W = kLevels[l][1];
            const int64_t i = (((n * Lq + q) * M + m) * L + l) * P + p;  // sample index
            const double A = attn[i];
            const double h = double(loc[2 * i + 1]) * H - 0.5;  // align_corners = false
            const double w = double(loc[2 * i]) * W - 0.5;
            if (!(h > -1 && h < H && w > -1 && w < W)) continue;  // skipped sample
            const double h0 = std::floor(h), w0 = std::floor(w);
            const double lh = h - h0, lw = w - w0, hh = 1 - lh, hw = 1 - lw;
            const double corner_w[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
            const double d_dw[4] = {-hh, hh, -lh, lh}, d_dh[4] = {-hw, -lw, hw, lw};
            double g_attn = 0, g_x = 0, g_y = 0;
            for (int64_t d = 0; d < D; ++d) {
              const double g = grad_out[(n * Lq + q) * M * D + m * D + d];
              double b = 0, bw = 0, bh = 0;
              for (int k = 0; k < 4; ++k) {
                const int64_t y = int64_t(h0) + k / 2, x = int64_t(w0) + k % 2;
                if (y < 0 || y >= H || x < 0 || x >= W) continue;  // zero padding
                const int64_t at = ((n * S + starts[l] + y * W + x) * M + m) * D + d;
                b += corner_w[k] * value[at];
                bw += d_dw[k] * value[at];
                bh += d_dh[k] * value[at];
                r.grad_value[at] += A * corner_w[k] * g;
              }
              r.out[(n * Lq + q) * M * D + m * D + d] += A * b;
              g_attn += g * b;
              g_x += g * bw;
              g_y += g * bh;
            }
            r.grad_attn[i] = g_attn;
            r.grad_loc[2 * i] = A * W * g_x;
            r.grad_loc[2 * i + 1] = A * H * g_y;
          }
  return r;
}

// max|got - ref| / max|ref|, printed; false above the float32 tolerance of docs/conventions.md.
bool close(const char* name, const std::vector<float>& got, const std::vector<double>& ref) {
  double err = 0, scale = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    const double diff = std::fabs(got[i] - ref[i]);
    err = std::isnan(diff) ? INFINITY : std::fmax(err, diff);
    scale = std::fmax(scale, std::fabs(ref[i]));
  }
  const double rel = err / scale;
  const bool ok = rel <= 5e-5;
  std::printf("  %-24s max relative error %.2e %s\n", name, rel, ok ? "ok" : "MISMATCH");
  return ok;
}

}  // namespace

int main() {
  const msdacore::BuildInfo info = msdacore::build_info();
  std::printf(
      "msdacore %s (headers %s): CPU kernels %s, %d threads, CUDA compiled %d\n",
      info.version.c_str(), MSDACORE_VERSION_STRING, info.cpu_isa.c_str(), info.num_threads,
      info.cuda_compiled ? 1 : 0);

  // The index arrays: level shapes and the prefix sums of H_l*W_l.
  std::vector<int64_t> shapes, starts;
  int64_t S = 0;
  for (const auto& hw : kLevels) {
    shapes.insert(shapes.end(), {hw[0], hw[1]});
    starts.push_back(S);
    S += hw[0] * hw[1];
  }

  // Realistic inputs: reference points plus per-head offsets of up to ~2 pixels (some
  // samples land outside the levels), attention weights softmax-normalised per head.
  std::mt19937 rng(2024);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  std::vector<float> value(N * S * M * D), loc(N * Lq * M * L * P * 2), attn(N * Lq * M * L * P);
  std::vector<float> grad_out(N * Lq * M * D);
  for (float& v : value) v = normal(rng);
  for (float& g : grad_out) g = normal(rng);
  for (int64_t nq = 0; nq < N * Lq; ++nq) {
    const float ref_x = unit(rng), ref_y = unit(rng);
    for (int64_t m = 0; m < M; ++m) {
      float total = 0;
      for (int64_t l = 0; l < L; ++l)
        for (int64_t p = 0; p < P; ++p) {
          const int64_t i = ((nq * M + m) * L + l) * P + p;
          loc[2 * i] = ref_x + (2.0f * unit(rng) - 1.0f) * 2.0f / kLevels[l][1];
          loc[2 * i + 1] = ref_y + (2.0f * unit(rng) - 1.0f) * 2.0f / kLevels[l][0];
          attn[i] = std::exp(normal(rng));
          total += attn[i];
        }
      for (int64_t j = 0; j < L * P; ++j) attn[(nq * M + m) * L * P + j] /= total;
    }
  }

  // Views: pointer, shape, dtype (contiguous here; strided views work for the inputs).
  using msdacore::DType;
  using msdacore::TensorView;
  const TensorView v(value.data(), {N, S, M, D}, DType::Float32);
  const TensorView ss(shapes.data(), {L, 2}, DType::Int64);
  const TensorView lsi(starts.data(), {L}, DType::Int64);
  const TensorView l(loc.data(), {N, Lq, M, L, P, 2}, DType::Float32);
  const TensorView a(attn.data(), {N, Lq, M, L, P}, DType::Float32);
  const TensorView g(grad_out.data(), {N, Lq, M * D}, DType::Float32);

  // Outputs are allocated by the caller, contiguous, and fully overwritten.
  std::vector<float> out(N * Lq * M * D), grad_value(N * S * M * D);
  std::vector<float> grad_loc(loc.size()), grad_attn(attn.size());
  try {
    msdacore::Options options;  // align_corners = false, no stream (CPU)
    msdacore::ms_deform_attn_forward(
        v, ss, lsi, l, a, TensorView(out.data(), {N, Lq, M * D}, DType::Float32), options);
    msdacore::ms_deform_attn_backward(
        v, ss, lsi, l, a, g, TensorView(grad_value.data(), {N, S, M, D}, DType::Float32),
        TensorView(grad_loc.data(), {N, Lq, M, L, P, 2}, DType::Float32),
        TensorView(grad_attn.data(), {N, Lq, M, L, P}, DType::Float32), options);
  } catch (const msdacore::Error& e) {  // bad arguments: ShapeError, DTypeError, DeviceError
    std::fprintf(stderr, "invalid arguments: %s\n", e.what());
    return 1;
  }

  const Reference ref = reference(value, loc, attn, grad_out, S, starts);
  std::printf(
      "N=%lld Lq=%lld M=%lld D=%lld L=%lld P=%lld S=%lld, float32 against a double "
      "reference:\n",
      (long long)N, (long long)Lq, (long long)M, (long long)D, (long long)L, (long long)P,
      (long long)S);
  bool ok = close("output", out, ref.out);
  ok = close("grad_value", grad_value, ref.grad_value) && ok;
  ok = close("grad_sampling_locations", grad_loc, ref.grad_loc) && ok;
  ok = close("grad_attention_weights", grad_attn, ref.grad_attn) && ok;

  // A mistake is reported, not crashed on: an output of the wrong shape.
  try {
    msdacore::ms_deform_attn_forward(
        v, ss, lsi, l, a, TensorView(out.data(), {N, Lq, D}, DType::Float32));
    std::printf("expected a ShapeError\n");
    ok = false;
  } catch (const msdacore::ShapeError& e) {
    std::printf("a wrong output shape raises msdacore::ShapeError: %s\n", e.what());
  }

  std::printf(ok ? "forward_backward: OK\n" : "forward_backward: FAILED\n");
  return ok ? 0 : 1;
}
