/* Tests of the C API (msdacore/msdacore_c.h), compiled as C99: outputs on a known
 * problem, status codes and last-error messages, and that nothing is thrown through. */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "msdacore/msdacore_c.h"

static int g_failures = 0;

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                            \
    }                                                                          \
  } while (0)

#define CHECK_STATUS(call, expected)                                                      \
  do {                                                                                    \
    const msdacore_status s_ = (call);                                                    \
    if (s_ != (expected)) {                                                               \
      fprintf(                                                                            \
          stderr, "%s:%d: %s returned %s (%s), expected %s\n", __FILE__, __LINE__, #call, \
          msdacore_status_name(s_), msdacore_last_error(), #expected);                    \
      ++g_failures;                                                                       \
    }                                                                                     \
  } while (0)

#define CHECK_MESSAGE(expected)                                                            \
  do {                                                                                     \
    if (strcmp(msdacore_last_error(), (expected)) != 0) {                                  \
      fprintf(                                                                             \
          stderr, "%s:%d: last error\n  \"%s\"\nexpected\n  \"%s\"\n", __FILE__, __LINE__, \
          msdacore_last_error(), (expected));                                              \
      ++g_failures;                                                                        \
    }                                                                                      \
  } while (0)

/* One 2x3 level, value[0, s, 0, 0] = s, three queries with one point each. */
static double value[6] = {0, 1, 2, 3, 4, 5};
static int64_t shapes[2] = {2, 3};
static int64_t starts[1] = {0};
static double loc[6] = {2.5 / 3, 1.5 / 2, 1.0 / 3, 1.0 / 2, 1.5, 0.5};
static double attn[3] = {2.0, 1.0, 5.0};

/* A contiguous CPU view of `shape` (checked). */
static msdacore_tensor view_of(void* data, int32_t ndim, const int64_t* shape, int32_t dtype) {
  msdacore_tensor t;
  CHECK_STATUS(msdacore_tensor_contiguous(&t, data, ndim, shape, dtype), MSDACORE_OK);
  return t;
}

typedef struct views {
  msdacore_tensor value, shapes, starts, loc, attn;
} views;

static views make_views(void) {
  views v;
  const int64_t value_shape[4] = {1, 6, 1, 1};
  const int64_t shapes_shape[2] = {1, 2};
  const int64_t starts_shape[1] = {1};
  const int64_t loc_shape[6] = {1, 3, 1, 1, 1, 2};
  const int64_t attn_shape[5] = {1, 3, 1, 1, 1};
  v.value = view_of(value, 4, value_shape, MSDACORE_FLOAT64);
  v.shapes = view_of(shapes, 2, shapes_shape, MSDACORE_INT64);
  v.starts = view_of(starts, 1, starts_shape, MSDACORE_INT64);
  v.loc = view_of(loc, 6, loc_shape, MSDACORE_FLOAT64);
  v.attn = view_of(attn, 5, attn_shape, MSDACORE_FLOAT64);
  return v;
}

static void test_forward_backward(void) {
  views v = make_views();
  double out[3] = {-1, -1, -1};
  double grad_out[3] = {1, 0, 0};
  double grad_value[6], grad_loc[6], grad_attn[3];
  msdacore_tensor o, g, gv, gl, ga;
  const int64_t out_shape[3] = {1, 3, 1};
  msdacore_problem problem;
  msdacore_options options;
  int i;

  msdacore_options_init(&options);

  CHECK(v.value.strides[0] == 6 && v.value.strides[1] == 1 && v.value.strides[3] == 1);
  CHECK(v.value.shape[5] == 0 && v.value.strides[7] == 0); /* unused entries zeroed */
  o = view_of(out, 3, out_shape, MSDACORE_FLOAT64);
  g = view_of(grad_out, 3, out_shape, MSDACORE_FLOAT64);
  gv = v.value;
  gv.data = grad_value;
  gl = v.loc;
  gl.data = grad_loc;
  ga = v.attn;
  ga.data = grad_attn;

  CHECK_STATUS(
      msdacore_check_inputs(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &problem),
      MSDACORE_OK);
  CHECK(problem.N == 1 && problem.S == 6 && problem.M == 1 && problem.D == 1);
  CHECK(problem.Lq == 3 && problem.L == 1 && problem.P == 1 && problem.dtype == MSDACORE_FLOAT64);

  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, NULL), MSDACORE_OK);
  CHECK_MESSAGE("");
  CHECK(fabs(out[0] - 10.0) < 1e-12);                  /* 2 * pixel (1, 2) = 2 * 5 */
  CHECK(fabs(out[1] - (0 + 1 + 3 + 4) / 4.0) < 1e-12); /* middle of the 2x2 block */
  CHECK(out[2] == 0.0);                                /* outside: skipped */

  CHECK_STATUS(
      msdacore_backward(
          &v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &g, &gv, &gl, &ga, &options),
      MSDACORE_OK);
  CHECK(fabs(grad_value[5] - 2.0) < 1e-12);
  for (i = 0; i < 5; ++i) CHECK(grad_value[i] == 0.0);
  CHECK(fabs(grad_attn[0] - 5.0) < 1e-12 && grad_attn[1] == 0.0 && grad_attn[2] == 0.0);
  CHECK(fabs(grad_loc[0] - 2.0 * 3.0 * -5.0) < 1e-12);
  CHECK(fabs(grad_loc[1] - 2.0 * 2.0 * -5.0) < 1e-12);

  /* align_corners = 1: x = 1, y = 1 is pixel (H-1, W-1) = (1, 2) exactly. */
  loc[0] = 1.0;
  loc[1] = 1.0;
  options.align_corners = 1;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, &options), MSDACORE_OK);
  CHECK(fabs(out[0] - 10.0) < 1e-12);
  loc[0] = 2.5 / 3;
  loc[1] = 1.5 / 2;
}

static void test_errors(void) {
  views v = make_views();
  double out[3] = {-1, -1, -1};
  float out32[3];
  msdacore_tensor o, bad;
  const int64_t out_shape[3] = {1, 3, 1};
  const int64_t wrong_shape[3] = {1, 3, 2};
  const int64_t nine[9] = {1, 1, 1, 1, 1, 1, 1, 1, 1};

  o = view_of(out, 3, out_shape, MSDACORE_FLOAT64);

  /* Wrong output shape: a shape error naming the argument, expected and received shape. */
  bad = view_of(out, 3, wrong_shape, MSDACORE_FLOAT64);
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &bad, NULL),
      MSDACORE_ERROR_SHAPE);
  CHECK_MESSAGE("output must have shape (N, Lq, M*D) = (1, 3, 1), got (1, 3, 2)");
  CHECK(out[0] == -1 && out[1] == -1 && out[2] == -1); /* nothing written */

  /* Wrong rank of sampling_locations. */
  bad = v.loc;
  bad.ndim = 5;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &bad, &v.attn, &o, NULL),
      MSDACORE_ERROR_SHAPE);
  CHECK_MESSAGE(
      "sampling_locations must have shape (N, Lq, M, L, P, 2) = (1, 3, 1, 1, 1, 2), "
      "got (1, 3, 1, 1, 1)");

  /* A float32 output for float64 inputs. */
  bad = view_of(out32, 3, out_shape, MSDACORE_FLOAT32);
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &bad, NULL),
      MSDACORE_ERROR_DTYPE);
  CHECK_MESSAGE("output must have the dtype of value (float64), got float32");

  /* An unknown dtype code. */
  bad = v.attn;
  bad.dtype = 42;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &bad, &o, NULL),
      MSDACORE_ERROR_DTYPE);
  CHECK_MESSAGE(
      "attention_weights has an unknown dtype code 42 (expected one of "
      "MSDACORE_FLOAT16 .. MSDACORE_INT64, 0..5)");

  /* Mixed devices, an unknown device type. */
  bad = v.loc;
  bad.device_type = MSDACORE_DEVICE_CUDA;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &bad, &v.attn, &o, NULL),
      MSDACORE_ERROR_DEVICE);
  CHECK_MESSAGE(
      "sampling_locations is on cuda:0 but value is on cpu: all inputs must be on "
      "the same device");
  bad.device_type = 7;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &bad, &v.attn, &o, NULL),
      MSDACORE_ERROR_DEVICE);
  CHECK_MESSAGE(
      "sampling_locations has an unknown device type 7 (expected MSDACORE_DEVICE_CPU "
      "or MSDACORE_DEVICE_CUDA)");

  /* NULL pointers, too many dimensions, a bad thread count. */
  CHECK_STATUS(
      msdacore_forward(&v.value, NULL, &v.starts, &v.loc, &v.attn, &o, NULL),
      MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK_MESSAGE("spatial_shapes is a NULL msdacore_tensor pointer");
  CHECK_STATUS(
      msdacore_tensor_contiguous(&bad, out, 9, nine, MSDACORE_FLOAT64), MSDACORE_ERROR_SHAPE);
  CHECK_MESSAGE("ndim = 9, but msdacore_tensor holds 0 to 8 dimensions");
  bad = v.value;
  bad.ndim = -1;
  CHECK_STATUS(
      msdacore_forward(&bad, &v.shapes, &v.starts, &v.loc, &v.attn, &o, NULL),
      MSDACORE_ERROR_SHAPE);
  CHECK_MESSAGE("value has ndim = -1, but msdacore_tensor holds 0 to 8 dimensions");
  CHECK_STATUS(msdacore_set_num_threads(0), MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK_MESSAGE("num_threads must be between 1 and 1024, got 0");

  /* A success clears the message. */
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, NULL), MSDACORE_OK);
  CHECK_MESSAGE("");
}

static void test_misc(void) {
  CHECK(strcmp(msdacore_version(), MSDACORE_VERSION_STRING) == 0);
  CHECK(MSDACORE_VERSION >= 100);
  CHECK(strcmp(msdacore_status_name(MSDACORE_ERROR_DTYPE), "MSDACORE_ERROR_DTYPE") == 0);
  CHECK(strcmp(msdacore_status_name((msdacore_status)99), "MSDACORE_UNKNOWN_STATUS") == 0);
  CHECK(msdacore_get_num_threads() >= 1);
  CHECK_STATUS(msdacore_set_num_threads(1), MSDACORE_OK);
  CHECK(msdacore_get_num_threads() == 1);
}

/* Outputs sharing memory with an input, or with each other, are refused. */
static void test_overlap(void) {
  views v = make_views();
  double scratch[16];
  msdacore_tensor o, g, gv, gl, ga;
  const int64_t out_shape[3] = {1, 3, 1};
  double grad_out[3] = {1, 0, 0};
  o = view_of(value, 3, out_shape, MSDACORE_FLOAT64);
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, NULL),
      MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(msdacore_last_error(), "output overlaps value in memory") != NULL);
  CHECK(value[5] == 5.0); /* nothing written */
  g = view_of(grad_out, 3, out_shape, MSDACORE_FLOAT64);
  gv = v.value;
  gv.data = scratch;
  gl = v.loc;
  gl.data = scratch + 2; /* inside grad_value */
  ga = v.attn;
  ga.data = scratch + 12;
  CHECK_STATUS(
      msdacore_backward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &g, &gv, &gl, &ga, NULL),
      MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(msdacore_last_error(), "grad_sampling_locations overlaps grad_value") != NULL);
}

/* The flattened layout with one point per level equals the uniform layout; discrete mode
 * reads the nearest pixel; a bad mode and discrete with align_corners are refused. */
static void test_layouts_and_modes(void) {
  views v = make_views();
  double uniform[3], flat[3], discrete[3];
  const int64_t out_shape[3] = {1, 3, 1}, flat_loc[5] = {1, 3, 1, 1, 2},
                flat_attn[4] = {1, 3, 1, 1};
  const int64_t counts[1] = {1};
  msdacore_tensor o, fl, fa;
  msdacore_options options;
  msdacore_options_init(&options);
  o = view_of(uniform, 3, out_shape, MSDACORE_FLOAT64);
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, &options), MSDACORE_OK);
  options.points_per_level = counts;
  options.num_levels = 1;
  fl = view_of(loc, 5, flat_loc, MSDACORE_FLOAT64);
  fa = view_of(attn, 4, flat_attn, MSDACORE_FLOAT64);
  o.data = flat;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &fl, &fa, &o, &options), MSDACORE_OK);
  CHECK(memcmp(uniform, flat, sizeof flat) == 0);
  {
    msdacore_problem problem;
    CHECK_STATUS(
        msdacore_check_inputs(&v.value, &v.shapes, &v.starts, &fl, &fa, &options, &problem),
        MSDACORE_OK);
    CHECK(problem.P_total == 1 && problem.P == 0 && problem.L == 1);
    CHECK(problem.loc_dtype == MSDACORE_FLOAT64 && problem.attn_dtype == MSDACORE_FLOAT64);
    CHECK_STATUS(
        msdacore_check_inputs(&v.value, &v.shapes, &v.starts, &fl, &fa, NULL, &problem),
        MSDACORE_ERROR_SHAPE); /* the uniform layout wants rank 6 */
  }
  options.mode = MSDACORE_MODE_DISCRETE;
  o.data = discrete;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &fl, &fa, &o, &options), MSDACORE_OK);
  /* query 0 at (x, y) = (2.5/3, 1.5/2) on the 2x3 level: pixel (floor(2), floor(3)) ->
   * clamped (1, 2), value 5, times A = 2 */
  CHECK(discrete[0] == 10.0);
  options.align_corners = 1;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &fl, &fa, &o, &options),
      MSDACORE_ERROR_INVALID_ARGUMENT);
  options.align_corners = 0;
  options.mode = 7;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &fl, &fa, &o, &options),
      MSDACORE_ERROR_INVALID_ARGUMENT);
}

/* Workspace sizes, a caller-provided workspace (float16 value with float32 locations and
 * weights: the CPU widens them into the workspace), and the function table. */
static void test_workspace(void) {
  views v = make_views();
  /* value 0..5 and the expected outputs 10, 2, 0 as float16 bit patterns */
  static uint16_t value16[6] = {0x0000, 0x3C00, 0x4000, 0x4200, 0x4400, 0x4500};
  float loc32[6], attn32[3];
  uint16_t out16[3] = {0xFFFF, 0xFFFF, 0xFFFF};
  uint16_t out16_default[3] = {0xFFFF, 0xFFFF, 0xFFFF};
  uint16_t grad_out16[3] = {0x3C00, 0, 0};
  uint16_t grad_value16[6];
  float grad_loc32[6], grad_attn32[3];
  double workspace_storage[4096]; /* 32 KiB, aligned below to 256 bytes */
  unsigned char* aligned = (unsigned char*)workspace_storage;
  const int64_t value_shape[4] = {1, 6, 1, 1};
  const int64_t loc_shape[6] = {1, 3, 1, 1, 1, 2};
  const int64_t attn_shape[5] = {1, 3, 1, 1, 1};
  const int64_t out_shape[3] = {1, 3, 1};
  msdacore_tensor o, o_default, g, gv, gl, ga;
  msdacore_options options;
  int64_t bytes = -1, backward_bytes = -1;
  const msdacore_c_api_table* table = msdacore_c_api();
  int i;

  /* float64 on the CPU: no scratch. */
  CHECK_STATUS(
      msdacore_forward_workspace_size(
          &v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &bytes),
      MSDACORE_OK);
  CHECK(bytes == 0);

  for (i = 0; i < 6; ++i) loc32[i] = (float)loc[i];
  for (i = 0; i < 3; ++i) attn32[i] = (float)attn[i];
  v.value = view_of(value16, 4, value_shape, MSDACORE_FLOAT16);
  v.loc = view_of(loc32, 6, loc_shape, MSDACORE_FLOAT32);
  v.attn = view_of(attn32, 5, attn_shape, MSDACORE_FLOAT32);
  o = view_of(out16, 3, out_shape, MSDACORE_FLOAT16);
  o_default = view_of(out16_default, 3, out_shape, MSDACORE_FLOAT16);
  g = view_of(grad_out16, 3, out_shape, MSDACORE_FLOAT16);
  gv = view_of(grad_value16, 4, value_shape, MSDACORE_FLOAT16);
  gl = view_of(grad_loc32, 6, loc_shape, MSDACORE_FLOAT32);
  ga = view_of(grad_attn32, 5, attn_shape, MSDACORE_FLOAT32);

  CHECK_STATUS(
      msdacore_forward_workspace_size(
          &v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &bytes),
      MSDACORE_OK);
  CHECK(bytes > 0 && bytes <= 16384);
  CHECK_STATUS(
      msdacore_backward_workspace_size(
          &v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &backward_bytes),
      MSDACORE_OK);
  CHECK(backward_bytes > 0 && backward_bytes <= 16384);
  CHECK_STATUS(
      msdacore_forward_workspace_size(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, NULL),
      MSDACORE_ERROR_INVALID_ARGUMENT);

  while (((uintptr_t)aligned) % 256 != 0) ++aligned;
  msdacore_options_init(&options);
  options.workspace = aligned;
  options.workspace_bytes = 16384;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, &options), MSDACORE_OK);
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o_default, NULL),
      MSDACORE_OK);
  CHECK(out16[0] == 0x4900 && out16[1] == 0x4000 && out16[2] == 0x0000); /* 10, 2, 0 */
  CHECK(memcmp(out16, out16_default, sizeof out16) == 0);
  CHECK_STATUS(
      msdacore_backward(
          &v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &g, &gv, &gl, &ga, &options),
      MSDACORE_OK);
  CHECK(grad_value16[5] == 0x4000); /* 2 */
  CHECK(grad_attn32[0] == 5.0f);

  /* Too small, and a size without an address. */
  options.workspace_bytes = bytes - 1;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, &options),
      MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(msdacore_last_error(), "workspace") != NULL);
  options.workspace = NULL;
  options.workspace_bytes = 64;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, &options),
      MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK(strstr(msdacore_last_error(), "options.workspace_bytes") != NULL);

  /* A workspace over an input's or an output's memory is refused before anything is
   * written (it would overwrite value with its float32 copy: a wrong result, status OK). */
  {
    uint16_t* inside = (uint16_t*)aligned; /* value16 copied to the workspace's start */
    msdacore_tensor value_inside, out_inside;
    uint16_t saved[6];
    memcpy(inside, value16, sizeof value16);
    memcpy(saved, inside, sizeof saved);
    value_inside = view_of(inside, 4, value_shape, MSDACORE_FLOAT16);
    options.workspace = aligned;
    options.workspace_bytes = 16384;
    memset(out16, 0xFF, sizeof out16);
    CHECK_STATUS(
        msdacore_forward(&value_inside, &v.shapes, &v.starts, &v.loc, &v.attn, &o, &options),
        MSDACORE_ERROR_INVALID_ARGUMENT);
    CHECK_MESSAGE(
        "workspace overlaps value in memory: the workspace must not share memory with the "
        "inputs or the outputs");
    CHECK(memcmp(inside, saved, sizeof saved) == 0 && out16[0] == 0xFFFF);
    out_inside = view_of(aligned + 256, 3, out_shape, MSDACORE_FLOAT16); /* within `bytes` */
    CHECK_STATUS(
        msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &out_inside, &options),
        MSDACORE_ERROR_INVALID_ARGUMENT);
    CHECK_MESSAGE(
        "workspace overlaps output in memory: the workspace must not share memory with the "
        "inputs or the outputs");
    CHECK_STATUS(
        msdacore_backward(
            &value_inside, &v.shapes, &v.starts, &v.loc, &v.attn, &g, &gv, &gl, &ga, &options),
        MSDACORE_ERROR_INVALID_ARGUMENT);
    CHECK(memcmp(inside, saved, sizeof saved) == 0);
  }

  /* The table holds the functions themselves. */
  CHECK(table != NULL && table->struct_size == (int64_t)sizeof(msdacore_c_api_table));
  CHECK(table->forward == msdacore_forward && table->backward == msdacore_backward);
  CHECK(table->check_inputs == msdacore_check_inputs);
  CHECK(table->forward_workspace_size == msdacore_forward_workspace_size);
  CHECK(table->backward_workspace_size == msdacore_backward_workspace_size);
  CHECK(table->last_error == msdacore_last_error && table->version == msdacore_version);
  CHECK(table->status_name == msdacore_status_name);
}

/* msdacore_options.struct_size, msdacore_check_shapes (no float data read) and the mode
 * names. */
static void test_options_and_shapes(void) {
  views v = make_views();
  msdacore_options options = MSDACORE_OPTIONS_INIT, unset;
  msdacore_problem p;
  int32_t mode = -1;
  const int64_t bad_loc_shape[5] = {1, 3, 1, 1, 2};
  const int64_t counts[2] = {1, 1};
  double out[3];
  char expected[256];
  msdacore_tensor o;
  const int64_t out_shape[3] = {1, 3, 1};

  CHECK(options.struct_size == (int64_t)sizeof(msdacore_options));
  memset(&unset, 0, sizeof unset); /* struct_size 0: refused, nothing written */
  msdacore_tensor_contiguous(&o, out, 3, out_shape, MSDACORE_FLOAT64);
  out[0] = -7;
  CHECK_STATUS(
      msdacore_forward(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, &o, &unset),
      MSDACORE_ERROR_INVALID_ARGUMENT);
  snprintf(
      expected, sizeof expected,
      "options.struct_size is 0, expected %d or more (sizeof(msdacore_options)): start "
      "from msdacore_options_init() or MSDACORE_OPTIONS_INIT",
      (int)sizeof(msdacore_options));
  CHECK_MESSAGE(expected);
  CHECK(out[0] == -7);
  CHECK_STATUS(msdacore_options_init(NULL), MSDACORE_ERROR_INVALID_ARGUMENT);

  /* No data: the float arrays are never read. */
  v.value.data = NULL;
  v.loc.data = NULL;
  v.attn.data = NULL;
  CHECK_STATUS(
      msdacore_check_shapes(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &options, &p),
      MSDACORE_OK);
  CHECK(p.N == 1 && p.S == 6 && p.M == 1 && p.D == 1 && p.Lq == 3 && p.L == 1 && p.P == 1);
  CHECK(p.dtype == MSDACORE_FLOAT64 && p.P_total == 1);
  msdacore_tensor_contiguous(&v.loc, NULL, 5, bad_loc_shape, MSDACORE_FLOAT64);
  CHECK_STATUS(
      msdacore_check_shapes(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &options, &p),
      MSDACORE_ERROR_SHAPE);
  CHECK_MESSAGE(
      "sampling_locations must have shape (N, Lq, M, L, P, 2) = (1, 3, 1, 1, 1, 2), "
      "got (1, 3, 1, 1, 2)");
  /* Index values are read where given: an inconsistent table fails here too. */
  v = make_views();
  starts[0] = 1;
  CHECK_STATUS(
      msdacore_check_shapes(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &options, &p),
      MSDACORE_ERROR_SHAPE);
  starts[0] = 0;
  /* A num_levels that disagrees with spatial_shapes is refused before its counts are read. */
  options.points_per_level = counts;
  options.num_levels = 2;
  CHECK_STATUS(
      msdacore_check_shapes(&v.value, &v.shapes, &v.starts, &v.loc, &v.attn, NULL, &options, &p),
      MSDACORE_ERROR_SHAPE);
  CHECK_MESSAGE(
      "points_per_level must have one count per level, L = 1 (from spatial_shapes), "
      "got options.num_levels = 2");

  CHECK_STATUS(msdacore_mode_from_name("discrete", &mode), MSDACORE_OK);
  CHECK(mode == MSDACORE_MODE_DISCRETE);
  CHECK_STATUS(msdacore_mode_from_name("nearest", &mode), MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK_MESSAGE("mode must be \"bilinear\" or \"discrete\", got \"nearest\"");
  CHECK(msdacore_c_api()->check_shapes == &msdacore_check_shapes);
}

int main(void) {
  test_forward_backward();
  test_options_and_shapes();
  test_workspace();
  test_layouts_and_modes();
  test_overlap();
  test_errors();
  test_misc();
  if (g_failures) {
    fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  printf("all C API checks passed (msdacore %s)\n", msdacore_version());
  return 0;
}
