/* msdacore from C (or any language with a C FFI): no exceptions, a status code for every
 * call and a thread-local message for the last one. Computes a forward pass on a small
 * problem, checks it against a plain double reference, then shows how an error is
 * reported. Exits 1 on a mismatch. */
#include <math.h>
#include <msdacore/msdacore_c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Two levels (4 x 6 and 2 x 3), 2 heads of 5 channels, 3 points per level, 7 queries. */
#define N 1
#define LQ 7
#define M 2
#define D 5
#define L 2
#define P 3
static const int64_t kShapes[L][2] = {{4, 6}, {2, 3}};
#define S (4 * 6 + 2 * 3)

static double frand(unsigned* state) { /* a small LCG: the same numbers everywhere */
  *state = *state * 1103515245u + 12345u;
  return (double)((*state >> 8) & 0xFFFF) / 65536.0;
}

int main(void) {
  static double value[N * S * M * D], loc[N * LQ * M * L * P * 2], attn[N * LQ * M * L * P];
  static double out[N * LQ * M * D], ref[N * LQ * M * D];
  int64_t shapes[L * 2], starts[L];
  const int64_t value_shape[4] = {N, S, M, D}, shapes_shape[2] = {L, 2}, starts_shape[1] = {L};
  const int64_t loc_shape[6] = {N, LQ, M, L, P, 2}, attn_shape[5] = {N, LQ, M, L, P};
  const int64_t out_shape[3] = {N, LQ, M * D}, bad_shape[3] = {N, LQ, D};
  msdacore_tensor v, ss, lsi, l, a, o, bad;
  msdacore_options options;
  msdacore_options_init(&options); /* align_corners = 0, no stream, bilinear, uniform */
  msdacore_status status;
  unsigned seed = 7;
  int64_t i, q, m, lv, p, d, start = 0;
  double err = 0, scale = 0;
  int ok = 1;

  printf(
      "msdacore %s through the C API, %d threads\n", msdacore_version(),
      msdacore_get_num_threads());
  for (lv = 0; lv < L; ++lv) {
    shapes[2 * lv] = kShapes[lv][0];
    shapes[2 * lv + 1] = kShapes[lv][1];
    starts[lv] = start;
    start += kShapes[lv][0] * kShapes[lv][1];
  }
  for (i = 0; i < N * S * M * D; ++i) value[i] = 2 * frand(&seed) - 1;
  for (i = 0; i < N * LQ * M * L * P * 2; ++i) loc[i] = 1.2 * frand(&seed) - 0.1;
  for (i = 0; i < N * LQ * M * L * P; ++i) attn[i] = frand(&seed);

  /* Contiguous CPU views; any strides may be set by hand instead (in elements). */
  msdacore_tensor_contiguous(&v, value, 4, value_shape, MSDACORE_FLOAT64);
  msdacore_tensor_contiguous(&ss, shapes, 2, shapes_shape, MSDACORE_INT64);
  msdacore_tensor_contiguous(&lsi, starts, 1, starts_shape, MSDACORE_INT64);
  msdacore_tensor_contiguous(&l, loc, 6, loc_shape, MSDACORE_FLOAT64);
  msdacore_tensor_contiguous(&a, attn, 5, attn_shape, MSDACORE_FLOAT64);
  msdacore_tensor_contiguous(&o, out, 3, out_shape, MSDACORE_FLOAT64);

  status = msdacore_forward(&v, &ss, &lsi, &l, &a, &o, &options);
  if (status != MSDACORE_OK) {
    fprintf(
        stderr, "msdacore_forward: %s: %s\n", msdacore_status_name(status), msdacore_last_error());
    return 1;
  }

  /* The reference: bilinear samples with zero padding (docs/conventions.md, align_corners = 0). */
  for (q = 0; q < LQ; ++q)
    for (m = 0; m < M; ++m)
      for (lv = 0; lv < L; ++lv)
        for (p = 0; p < P; ++p) {
          const int64_t H = kShapes[lv][0], W = kShapes[lv][1];
          const int64_t k = ((q * M + m) * L + lv) * P + p;
          const double h = loc[2 * k + 1] * H - 0.5, w = loc[2 * k] * W - 0.5;
          double h0, w0;
          int c;
          if (!(h > -1 && h < H && w > -1 && w < W)) continue;
          h0 = floor(h);
          w0 = floor(w);
          for (c = 0; c < 4; ++c) {
            const int64_t y = (int64_t)h0 + c / 2, x = (int64_t)w0 + c % 2;
            const double wy = c / 2 ? h - h0 : 1 - (h - h0), wx = c % 2 ? w - w0 : 1 - (w - w0);
            if (y < 0 || y >= H || x < 0 || x >= W) continue;
            for (d = 0; d < D; ++d) {
              ref[(q * M + m) * D + d] +=
                  attn[k] * wy * wx * value[((starts[lv] + y * W + x) * M + m) * D + d];
            }
          }
        }
  for (i = 0; i < N * LQ * M * D; ++i) {
    err = fmax(err, fabs(out[i] - ref[i]));
    scale = fmax(scale, fabs(ref[i]));
  }
  printf("forward: max relative error %.2e against the double reference\n", err / scale);
  if (!(err <= 1e-12 * scale)) ok = 0;

  /* Errors come back as a status and a message naming the argument and both shapes. */
  msdacore_tensor_contiguous(&bad, out, 3, bad_shape, MSDACORE_FLOAT64);
  status = msdacore_forward(&v, &ss, &lsi, &l, &a, &bad, NULL);
  printf(
      "an output of the wrong shape: %s: %s\n", msdacore_status_name(status),
      msdacore_last_error());
  if (status != MSDACORE_ERROR_SHAPE) ok = 0;

  printf(ok ? "c_api_example: OK\n" : "c_api_example: FAILED\n");
  return ok ? 0 : 1;
}
