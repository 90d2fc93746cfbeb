/* msdacore/msdacore_c.h: the C API, for hosts that cannot take C++ exceptions (C
 * programs, other languages' FFI). Plain structs and status codes over the C++ API of
 * ops.hpp, in the same library (link msdacore::msdacore). C99 and C++ compatible.
 *
 *   msdacore_tensor                 a view: data, ndim, shape[8], strides[8] (in elements),
 *                                   dtype (MSDACORE_FLOAT32, ...), device type and index
 *   msdacore_tensor_contiguous()    fills a row-major view of a shape
 *   msdacore_options                how a call runs: struct_size, align_corners, mode, points
 *                                   per level, deterministic, stream, workspace (NULL:
 *                                   defaults); msdacore_options_init() fills the defaults
 *   msdacore_mode_from_name()       MSDACORE_MODE_* of "bilinear" / "discrete"
 *   msdacore_forward()              output (N, Lq, M*D) of multi-scale deformable attention
 *   msdacore_backward()             grad_value, grad_sampling_locations, grad_attention_weights
 *   msdacore_check_inputs()         validates the five inputs and reports their sizes
 *   msdacore_check_shapes()         the same from shapes, dtypes and devices alone (no data
 *                                   read but the index arrays', where given): for tracers
 *   msdacore_forward_workspace_size() / msdacore_backward_workspace_size()
 *                                   bytes of caller-owned scratch (msdacore_options.workspace)
 *   msdacore_c_api()                a table of these functions (for plugins that reach the
 *                                   library through a pointer, e.g. msdacore's XLA handlers)
 *   msdacore_last_error()           the message of this thread's last call ("" after success)
 *   msdacore_status_name()          "MSDACORE_ERROR_SHAPE", ...
 *   msdacore_version()              "0.1.0" (the library's; MSDACORE_VERSION_* are the headers')
 *   msdacore_set_num_threads() / msdacore_get_num_threads()   CPU threads of later calls
 *
 * Shapes and dtypes are those of ops.hpp (docs/conventions.md): N batch, S = sum_l H_l*W_l tokens,
 * M heads, D channels per head, Lq queries, L levels, P points per level.
 *   value               (N, S, M, D)          float32 | float64 | float16 | bfloat16 (T)
 *   spatial_shapes      (L, 2) rows (H_l, W_l) int32 | int64, on the CPU
 *   level_start_index   (L,) prefix sums       int32 | int64, on the CPU
 *   sampling_locations  (N, Lq, M, L, P, 2)   T (or float32 with a half T), last axis (x, y),
 *                                             normalized; any strides
 *   attention_weights   (N, Lq, M, L, P)      T (or float32 with a half T), any strides
 *   output              (N, Lq, M*D)          T, contiguous, written by msdacore_forward
 *   grad_output         (N, Lq, M*D)          T, any strides
 *   grad_value          (N, S, M, D)          T, contiguous, written by msdacore_backward
 *   grad_sampling_locations (N, Lq, M, L, P, 2), grad_attention_weights (N, Lq, M, L, P)
 *                                             T, contiguous, written by msdacore_backward
 * Outputs are caller-provided and fully overwritten; inputs are never modified. Outputs
 * that share memory with an input or with each other are refused
 * (MSDACORE_ERROR_INVALID_ARGUMENT, naming both).
 *
 * Every function that returns msdacore_status catches every C++ exception: none ever
 * crosses this API. On failure nothing has been written to the outputs when the status
 * is a SHAPE, DTYPE, DEVICE or INVALID_ARGUMENT error (arguments are validated first),
 * and msdacore_last_error() says what was wrong, naming the argument, the expected and
 * the received shape or dtype, exactly as the C++ exceptions and the Python errors do.
 * Calls from several threads at once are safe; each thread has its own last error.
 */
#ifndef MSDACORE_MSDACORE_C_H_
#define MSDACORE_MSDACORE_C_H_

#include <stdint.h>

#include "msdacore/version.hpp" /* MSDACORE_VERSION_* macros (plain preprocessor) */

#ifdef __cplusplus
extern "C" {
#endif

/* Result of every call. The values are stable (part of the ABI). */
typedef enum msdacore_status {
  MSDACORE_OK = 0,
  MSDACORE_ERROR_SHAPE = 1,            /* wrong rank or shape, inconsistent index arrays
                                          (C++ ShapeError, Python ValueError) */
  MSDACORE_ERROR_DTYPE = 2,            /* unsupported or mixed dtypes (C++ DTypeError) */
  MSDACORE_ERROR_DEVICE = 3,           /* different devices, or one this build cannot run on
                                          (C++ DeviceError) */
  MSDACORE_ERROR_INVALID_ARGUMENT = 4, /* any other bad argument: a NULL pointer, a thread
                                          count < 1 (C++ Error) */
  MSDACORE_ERROR_RUNTIME = 5,          /* the device runtime failed: launch, allocation
                                          (C++ RuntimeError) */
  MSDACORE_ERROR_OTHER = 6             /* anything else, e.g. out of host memory */
} msdacore_status;

/* Element types (the values of C++ msdacore::DType). */
enum {
  MSDACORE_FLOAT16 = 0,
  MSDACORE_BFLOAT16 = 1,
  MSDACORE_FLOAT32 = 2,
  MSDACORE_FLOAT64 = 3,
  MSDACORE_INT32 = 4,
  MSDACORE_INT64 = 5
};

/* Device types (the values of C++ msdacore::DeviceType). */
enum { MSDACORE_DEVICE_CPU = 0, MSDACORE_DEVICE_CUDA = 1 };

#define MSDACORE_MAX_DIMS 8

/* A non-owning view of a strided array; the caller owns the memory. */
typedef struct msdacore_tensor {
  void* data;                         /* address of element (0, ..., 0) */
  int32_t ndim;                       /* number of dimensions, 0..MSDACORE_MAX_DIMS */
  int64_t shape[MSDACORE_MAX_DIMS];   /* extent of each dimension (first ndim used) */
  int64_t strides[MSDACORE_MAX_DIMS]; /* in elements, not bytes; 0 or negative allowed
                                         for inputs; outputs must be contiguous */
  int32_t dtype;                      /* MSDACORE_FLOAT32, ... */
  int32_t device_type;                /* MSDACORE_DEVICE_CPU or MSDACORE_DEVICE_CUDA */
  int32_t device_index;               /* CUDA device ordinal; 0 for the CPU */
} msdacore_tensor;

/* Sampling modes (msdacore_options.mode; the values of C++ msdacore::SamplingMode, named
 * "bilinear" and "discrete" everywhere: msdacore_mode_from_name). */
enum { MSDACORE_MODE_BILINEAR = 0, MSDACORE_MODE_DISCRETE = 1 };

/* Options of forward and backward; pass NULL for the defaults. Start from
 * msdacore_options_init() (or MSDACORE_OPTIONS_INIT), which sets struct_size and zeroes
 * the rest, then set fields. struct_size is the size of the struct the caller was compiled
 * with: the library reads only the fields that lie below it (later versions add fields at
 * the end, and a caller built against this header keeps working with them), and refuses
 * a struct_size below that of the first versioned struct (an unset or garbage size). */
typedef struct msdacore_options {
  int64_t struct_size;   /* sizeof(msdacore_options); set by msdacore_options_init() */
  int32_t align_corners; /* 0: h = y*H - 0.5 (Deformable DETR); 1: h = y*(H - 1) */
  void* stream;          /* device stream (cudaStream_t) for device backends; unused on CPU */
  int32_t deterministic; /* CUDA backward: bitwise-reproducible grad_value (no atomics) */
  int32_t mode;          /* MSDACORE_MODE_BILINEAR or MSDACORE_MODE_DISCRETE */
  /* The flattened layout: num_levels counts, one per level (NULL / 0: the uniform
   * layout). sampling_locations (N, Lq, M, P_total, 2), attention_weights
   * (N, Lq, M, P_total), level l's points at offsets sum_{j<l} P_j. */
  const int64_t* points_per_level;
  int64_t num_levels;
  /* Scratch memory owned by the caller: at least msdacore_{forward,backward}_workspace_size()
   * bytes on the problem's device, usable by work on `stream`, 256-byte aligned. NULL / 0:
   * the call takes what it needs from msdacore's default allocator (added in 0.1.0). */
  void* workspace;
  int64_t workspace_bytes;
} msdacore_options;

/* An initializer with the defaults: msdacore_options o = MSDACORE_OPTIONS_INIT; */
#define MSDACORE_OPTIONS_INIT {(int64_t)sizeof(msdacore_options), 0, 0, 0, 0, 0, 0, 0, 0}

/* Fills *options with the defaults and struct_size = sizeof(msdacore_options) of this
 * header (MSDACORE_ERROR_INVALID_ARGUMENT for NULL). */
msdacore_status msdacore_options_init(msdacore_options* options);

/* *mode = MSDACORE_MODE_* of `name` ("bilinear" or "discrete", as in every front end and
 * the ONNX attribute); MSDACORE_ERROR_INVALID_ARGUMENT for any other name. */
msdacore_status msdacore_mode_from_name(const char* name, int32_t* mode);

/* Sizes of a validated call (msdacore_check_inputs). */
typedef struct msdacore_problem {
  int64_t N, S, M, D, Lq, L;
  int64_t P;       /* points per level of the uniform layout (0 in the flattened one) */
  int32_t dtype;   /* dtype of value (and of the output, grad_output and grad_value) */
  int64_t P_total; /* points per (query, head): L*P, or the sum of points_per_level */
  int32_t loc_dtype, attn_dtype; /* of sampling_locations, attention_weights: dtype, or
                                  * MSDACORE_FLOAT32 with a half value */
} msdacore_problem;

/* Fills *t with a row-major contiguous CPU view of `shape` (ndim entries) and zeroes the
 * unused entries. MSDACORE_ERROR_SHAPE when ndim is not in 0..MSDACORE_MAX_DIMS. */
msdacore_status msdacore_tensor_contiguous(
    msdacore_tensor* t, void* data, int32_t ndim, const int64_t* shape, int32_t dtype);

/* The functions of a call take the five inputs first, in this order (the shapes above):
 * value, spatial_shapes, level_start_index, sampling_locations, attention_weights. Their
 * signatures are named once as function types (msdacore_*_fn), which declare the functions
 * below and type the members of msdacore_c_api_table. */

/* Validates the five inputs against each other in the layout and mode of `options`
 * (NULL: the defaults), as forward and backward do; on success writes their sizes to
 * *problem when it is not NULL. */
typedef msdacore_status msdacore_check_inputs_fn(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_options* options,
    msdacore_problem* problem);
msdacore_check_inputs_fn msdacore_check_inputs;

/* The check that needs no data: validates a call from its tensors' ndim, shape, dtype and
 * device with the checks and messages of msdacore_check_inputs, without reading the float
 * arrays (their data may be NULL). The index arrays' values are checked too (against each
 * other and S) when both have data; with NULL data they are left to the call.
 * grad_output (NULL: none) is checked as the backward checks it. On success writes the
 * sizes to *problem (NULL: not written); the output is (N, Lq, M*D) and the gradients
 * have their inputs' shapes. */
typedef msdacore_status msdacore_check_shapes_fn(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_tensor* grad_output,
    const msdacore_options* options, msdacore_problem* problem);
msdacore_check_shapes_fn msdacore_check_shapes;

/* Bytes of scratch a forward / backward call with these inputs and options needs (its
 * msdacore_options.workspace): on the CPU 0 except for half types, on CUDA the buffers of
 * half types, mixed precision, many levels and the deterministic backward. Validates the
 * inputs as the op does; writes *bytes on success. */
typedef msdacore_status msdacore_workspace_size_fn(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_options* options, int64_t* bytes);
msdacore_workspace_size_fn msdacore_forward_workspace_size;
msdacore_workspace_size_fn msdacore_backward_workspace_size;

/* output (N, Lq, M*D) = sum_l sum_p A * bilinear(value_l, location). */
typedef msdacore_status msdacore_forward_fn(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_tensor* output,
    const msdacore_options* options);
msdacore_forward_fn msdacore_forward;

/* Gradients of the forward's output for grad_output; see the shapes above. On the CPU
 * the result is bitwise identical for any thread count. */
typedef msdacore_status msdacore_backward_fn(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_tensor* grad_output,
    const msdacore_tensor* grad_value, const msdacore_tensor* grad_sampling_locations,
    const msdacore_tensor* grad_attention_weights, const msdacore_options* options);
msdacore_backward_fn msdacore_backward;

/* The message of the calling thread's last msdacore_* call that returns a status: empty
 * ("") after a success. Valid until that thread's next such call; never NULL. */
const char* msdacore_last_error(void);

/* "MSDACORE_OK", "MSDACORE_ERROR_SHAPE", ... ("MSDACORE_UNKNOWN_STATUS" otherwise). */
const char* msdacore_status_name(msdacore_status status);

/* The version of the library linked in, e.g. "0.1.0". */
const char* msdacore_version(void);

/* Threads the CPU kernels of later calls use (process-wide). n >= 1, else
 * MSDACORE_ERROR_INVALID_ARGUMENT. Results do not depend on it. */
msdacore_status msdacore_set_num_threads(int n);
int msdacore_get_num_threads(void);

/* The functions above as a table of pointers, for a plugin that is handed the library at
 * run time instead of linking it (msdacore's Python module exports this table as the
 * PyCapsule `msdacore._core.c_api`, named "msdacore.c_api"). struct_size is
 * sizeof(msdacore_c_api_table) of the library: members are only ever added at the end, so
 * a plugin may use every member that lies below struct_size. */
typedef struct msdacore_c_api_table {
  int64_t struct_size;
  const char* (*version)(void);
  msdacore_check_inputs_fn* check_inputs;
  msdacore_workspace_size_fn* forward_workspace_size;
  msdacore_workspace_size_fn* backward_workspace_size;
  msdacore_forward_fn* forward;
  msdacore_backward_fn* backward;
  const char* (*last_error)(void);
  const char* (*status_name)(msdacore_status);
  /* Added with msdacore_options.struct_size: */
  msdacore_check_shapes_fn* check_shapes;
  msdacore_status (*options_init)(msdacore_options*);
  msdacore_status (*mode_from_name)(const char*, int32_t*);
  msdacore_status (*tensor_contiguous)(msdacore_tensor*, void*, int32_t, const int64_t*, int32_t);
} msdacore_c_api_table;

/* The library's table (static storage, never NULL). */
const msdacore_c_api_table* msdacore_c_api(void);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* MSDACORE_MSDACORE_C_H_ */
