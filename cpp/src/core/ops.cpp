// core/ops.cpp — the public entry points: validate, then either hand GPU tensors to the CUDA
// backend (cuda/backend.hpp) or split the work over the thread pool and run the selected CPU
// kernel set (core/dispatch.hpp) on each slice.
#include "nybble/ops.hpp"

#include <algorithm>
#include <cmath>
#include <mutex>
#include <vector>

#include "core/dispatch.hpp"
#include "core/thread_pool.hpp"
#include "core/validate.hpp"

namespace nybble {
namespace {

using core::Arg;
using core::backend_for;
using core::check_dtype;
using core::check_float;
using core::check_numel;
using core::check_tensor;
using core::describe;
using core::fail;

// Work per chunk: enough elements that scheduling costs nothing next to the kernel.
constexpr int64_t kGrainElems = int64_t{1} << 15;

int64_t grain_for(int64_t items_per_unit) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, items_per_unit)); }

void check_packed(const char* op, const TensorView& packed, int64_t n) {
  check_tensor(op, "packed", packed);
  if (packed.nbytes() != packed_4bit_bytes(n))
    fail(ErrorKind::Value, op, "packed = " + describe(packed),
         "holds " + std::to_string(packed.nbytes()) + " bytes, must hold (n + 1) / 2 = " +
             std::to_string(packed_4bit_bytes(n)) + " for n = " + std::to_string(n) + " elements");
}

const TensorView* opt(const std::optional<TensorView>& t) { return t ? &*t : nullptr; }

// The offset tensor of double quantization: f32, one element.
void check_offset_tensor(const char* op, const char* arg, const TensorView& t) {
  check_tensor(op, arg, t);
  check_dtype(op, arg, t, {DType::F32});
  check_numel(op, arg, t, 1, "the offset of double quantization");
}

// Validates scales for nblocks blocks (their device is checked with the call's other tensors).
void check_scales(const char* op, const BlockScales& s, int64_t nblocks) {
  check_tensor(op, "absmax", s.absmax);
  if (!s.nested) {
    check_dtype(op, "absmax", s.absmax, {DType::F32});
    check_numel(op, "absmax", s.absmax, nblocks, "one per block");
    return;
  }
  const NestedAbsmax& n = *s.nested;
  check_dtype(op, "absmax", s.absmax, {DType::U8});
  check_numel(op, "absmax", s.absmax, nblocks, "one 8-bit code per block when nested");
  if (n.nested_blocksize <= 0)
    fail(ErrorKind::Value, op, "nested_blocksize = " + std::to_string(n.nested_blocksize), "must be positive");
  check_tensor(op, "nested_absmax", n.nested_absmax);
  check_dtype(op, "nested_absmax", n.nested_absmax, {DType::F32});
  check_numel(op, "nested_absmax", n.nested_absmax, num_blocks(nblocks, n.nested_blocksize),
              "one per nested block of " + std::to_string(n.nested_blocksize) + " absmax values");
  check_tensor(op, "nested_code", n.nested_code);
  check_dtype(op, "nested_code", n.nested_code, {DType::F32});
  check_numel(op, "nested_code", n.nested_code, 256, "an 8-bit code map");
  if (n.offset_tensor) check_offset_tensor(op, "offset_tensor", *n.offset_tensor);
}

// The CPU kernels' view of validated CPU scales.
cpu::Scales cpu_scales(const BlockScales& s) {
  cpu::Scales out;
  if (!s.nested) {
    out.absmax = s.absmax.ptr<const float>();
    return out;
  }
  const NestedAbsmax& n = *s.nested;
  out.qabsmax = s.absmax.ptr<const uint8_t>();
  out.nested_absmax = n.nested_absmax.ptr<const float>();
  out.nested_code = n.nested_code.ptr<const float>();
  out.offset = n.offset_tensor ? *n.offset_tensor->ptr<const float>() : n.offset;
  out.nested_blocksize = n.nested_blocksize;
  return out;
}

// The scales' tensors, as arguments of backend_for.
Arg scale_arg(const BlockScales& s) { return {"absmax", &s.absmax}; }
Arg nested_absmax_arg(const BlockScales& s) { return {"nested_absmax", s.nested ? &s.nested->nested_absmax : nullptr}; }
Arg nested_code_arg(const BlockScales& s) { return {"nested_code", s.nested ? &s.nested->nested_code : nullptr}; }
Arg offset_arg(const BlockScales& s) { return {"offset_tensor", s.nested ? opt(s.nested->offset_tensor) : nullptr}; }

void check_code8(const char* op, const TensorView& code) {
  check_tensor(op, "code", code);
  check_dtype(op, "code", code, {DType::F32});
  check_numel(op, "code", code, 256, "an 8-bit code map");
}

// (rows, cols) of a tensor seen as a matrix over its last dimension.
std::pair<int64_t, int64_t> as_matrix(const char* op, const char* arg, const TensorView& t) {
  if (t.ndim < 1) fail(ErrorKind::Value, op, std::string(arg) + " = " + describe(t), "must have at least one dimension");
  const int64_t cols = t.shape[static_cast<size_t>(t.ndim - 1)];
  return {cols == 0 ? 0 : t.numel() / cols, cols};
}

}  // namespace

// ---- 4-bit ---------------------------------------------------------------------------------------

void quantize_4bit(const TensorView& A, const TensorView& packed, const TensorView& absmax,
                   int64_t blocksize, QuantType qt) {
  const char* op = "quantize_4bit";
  check_tensor(op, "A", A);
  check_float(op, "A", A);
  core::check_4bit_blocksize(op, blocksize);
  const int64_t n = A.numel(), nb = num_blocks(n, blocksize);
  check_packed(op, packed, n);
  check_tensor(op, "absmax", absmax);
  check_dtype(op, "absmax", absmax, {DType::F32});
  check_numel(op, "absmax", absmax, nb, "one per block");
  if (const auto* cu = backend_for(op, {{"A", &A}, {"packed", &packed}, {"absmax", &absmax}}))
    return cu->quantize_4bit(A, packed, absmax, blocksize, qt);
  const auto& k = core::cpu_kernels();
  core::parallel_for(nb, grain_for(blocksize), [&](int64_t b0, int64_t b1) {
    k.quantize_4bit(A.data, A.dtype, n, blocksize, qt, packed.ptr<uint8_t>(), absmax.ptr<float>(), b0, b1);
  });
}

void dequantize_4bit(const TensorView& packed, const BlockScales& scales, int64_t blocksize,
                     QuantType qt, const TensorView& out) {
  const char* op = "dequantize_4bit";
  check_tensor(op, "out", out);
  check_float(op, "out", out);
  core::check_4bit_blocksize(op, blocksize);
  const int64_t n = out.numel(), nb = num_blocks(n, blocksize);
  check_packed(op, packed, n);
  check_scales(op, scales, nb);
  if (const auto* cu = backend_for(op, {{"packed", &packed}, scale_arg(scales), nested_absmax_arg(scales),
                                        nested_code_arg(scales), offset_arg(scales), {"out", &out}}))
    return cu->dequantize_4bit(packed, scales, blocksize, qt, out);
  const cpu::Scales s = cpu_scales(scales);
  const auto& k = core::cpu_kernels();
  core::parallel_for(nb, grain_for(blocksize), [&](int64_t b0, int64_t b1) {
    k.dequantize_4bit(packed.ptr<const uint8_t>(), s, n, blocksize, qt, out.data, out.dtype, b0, b1);
  });
}

// gemm_4bit's and gemm_4bit_grad's operands: the activations (`name`) and out, 2-D float of one
// dtype with as many rows; the 4-bit weight of `weights` elements.
static void check_gemm4(const char* op, const char* name, const TensorView& act, const TensorView& packed,
                        const BlockScales& scales, int64_t blocksize, const TensorView& out, int64_t weights) {
  check_tensor(op, name, act);
  check_float(op, name, act);
  core::check_ndim(op, name, act, 2);
  check_tensor(op, "out", out);
  core::check_ndim(op, "out", out, 2);
  check_dtype(op, "out", out, {act.dtype});
  core::check_4bit_blocksize(op, blocksize);
  if (out.shape[0] != act.shape[0])
    fail(ErrorKind::Value, op, "out = " + describe(out), std::string("must have as many rows as ") + name + " = " + describe(act));
  check_packed(op, packed, weights);
  check_scales(op, scales, num_blocks(weights, blocksize));
}

void gemm_4bit(const TensorView& A, const TensorView& packed, const BlockScales& scales,
               int64_t blocksize, QuantType qt, const std::optional<TensorView>& bias,
               const TensorView& out) {
  const char* op = "gemm_4bit";
  // (Dimensions past ndim read as 0; check_gemm4 checks ndim first.)
  const int64_t M = A.shape[0], K = A.shape[1], N = out.shape[1];
  check_gemm4(op, "A", A, packed, scales, blocksize, out, N * K);
  if (bias) {
    check_tensor(op, "bias", *bias);
    check_dtype(op, "bias", *bias, {A.dtype});
    check_numel(op, "bias", *bias, N, "one per output column");
  }
  if (const auto* cu = backend_for(op, {{"A", &A}, {"packed", &packed}, scale_arg(scales), nested_absmax_arg(scales),
                                        nested_code_arg(scales), offset_arg(scales), {"bias", opt(bias)}, {"out", &out}}))
    return cu->gemm_4bit(A, packed, scales, blocksize, qt, bias, out);
  const cpu::Gemm4Args args{A.data, A.dtype, M, N, K, packed.ptr<const uint8_t>(), cpu_scales(scales), blocksize, qt,
                            bias ? bias->data : nullptr, out.data};
  const auto& k = core::cpu_kernels();
  core::parallel_for(N, grain_for(std::max<int64_t>(1, K * std::max<int64_t>(M, 1) / 4)),
                     [&](int64_t n0, int64_t n1) { k.gemm_4bit(args, n0, n1); });
}

void gemm_4bit_grad(const TensorView& G, const TensorView& packed, const BlockScales& scales,
                    int64_t blocksize, QuantType qt, const TensorView& out) {
  const char* op = "gemm_4bit_grad";
  const int64_t M = G.shape[0], N = G.shape[1], K = out.shape[1];
  check_gemm4(op, "G", G, packed, scales, blocksize, out, N * K);
  if (const auto* cu = backend_for(op, {{"G", &G}, {"packed", &packed}, scale_arg(scales), nested_absmax_arg(scales),
                                        nested_code_arg(scales), offset_arg(scales), {"out", &out}}))
    return cu->gemm_4bit_grad(G, packed, scales, blocksize, qt, out);
  const cpu::Gemm4Args args{G.data, G.dtype, M, N, K, packed.ptr<const uint8_t>(), cpu_scales(scales), blocksize, qt,
                            nullptr, out.data};
  const auto& k = core::cpu_kernels();
  core::parallel_for(K, grain_for(std::max<int64_t>(1, N * std::max<int64_t>(M, 1) / 4)),
                     [&](int64_t k0, int64_t k1) { k.gemm_4bit_grad(args, k0, k1); });
}

// ---- 8-bit blockwise -----------------------------------------------------------------------------

// Checks the arguments shared by both directions of 8-bit blockwise quantization: `values` (the
// float side, named `values_name`), `codes` (u8, one per value), absmax (one per block), code.
static void check_blockwise(const char* op, const char* values_name, const TensorView& values, const TensorView& codes,
                     const TensorView& absmax, const TensorView& code, int64_t blocksize) {
  check_tensor(op, values_name, values);
  check_float(op, values_name, values);
  core::check_positive_blocksize(op, blocksize);
  check_code8(op, code);
  const int64_t n = values.numel();
  const char* codes_name = values_name[0] == 'A' ? "out" : "codes";
  check_tensor(op, codes_name, codes);
  check_dtype(op, codes_name, codes, {DType::U8});
  check_numel(op, codes_name, codes, n, std::string("one code per element of ") + values_name);
  check_tensor(op, "absmax", absmax);
  check_dtype(op, "absmax", absmax, {DType::F32});
  check_numel(op, "absmax", absmax, num_blocks(n, blocksize), "one per block");
}

static const cuda::Backend* blockwise_backend(const char* op, const char* values_name, const TensorView& values,
                                              const TensorView& codes, const TensorView& absmax, const TensorView& code) {
  const char* codes_name = values_name[0] == 'A' ? "out" : "codes";
  return backend_for(op, {{values_name, &values}, {codes_name, &codes}, {"absmax", &absmax}, {"code", &code}});
}

void quantize_blockwise(const TensorView& A, const TensorView& code, const TensorView& out,
                        const TensorView& absmax, int64_t blocksize) {
  check_blockwise("quantize_blockwise", "A", A, out, absmax, code, blocksize);
  if (const auto* cu = blockwise_backend("quantize_blockwise", "A", A, out, absmax, code))
    return cu->quantize_blockwise(A, code, out, absmax, blocksize);
  const int64_t n = A.numel();
  const auto& k = core::cpu_kernels();
  core::parallel_for(num_blocks(n, blocksize), grain_for(blocksize), [&](int64_t b0, int64_t b1) {
    k.quantize_8bit(A.data, A.dtype, n, blocksize, code.ptr<const float>(), out.ptr<uint8_t>(),
                    absmax.ptr<float>(), b0, b1);
  });
}

void dequantize_blockwise(const TensorView& codes, const TensorView& absmax, const TensorView& code,
                          int64_t blocksize, const TensorView& out) {
  check_blockwise("dequantize_blockwise", "out", out, codes, absmax, code, blocksize);
  if (const auto* cu = blockwise_backend("dequantize_blockwise", "out", out, codes, absmax, code))
    return cu->dequantize_blockwise(codes, absmax, code, blocksize, out);
  const int64_t n = out.numel();
  const auto& k = core::cpu_kernels();
  core::parallel_for(num_blocks(n, blocksize), grain_for(blocksize), [&](int64_t b0, int64_t b1) {
    k.dequantize_8bit(codes.ptr<const uint8_t>(), absmax.ptr<const float>(), code.ptr<const float>(), n,
                      blocksize, out.data, out.dtype, b0, b1);
  });
}

// ---- double quantization ---------------------------------------------------------------------------

static void check_absmax_for_mean(const char* op, const TensorView& absmax) {
  check_tensor(op, "absmax", absmax);
  check_dtype(op, "absmax", absmax, {DType::F32});
  if (absmax.numel() == 0) fail(ErrorKind::Value, op, "absmax = " + describe(absmax), "must not be empty");
}

// Note [Offset] (formats.hpp): lanes summed in ascending order, then added pairwise.
static float absmax_mean_cpu(const TensorView& absmax) {
  const float* a = absmax.ptr<const float>();
  const int64_t n = absmax.numel();
  std::vector<double> lane(static_cast<size_t>(kMeanLanes), 0.0);
  for (int64_t i = 0; i < n; ++i) lane[static_cast<size_t>(i % kMeanLanes)] += a[i];
  for (int64_t h = kMeanLanes / 2; h >= 1; h /= 2)
    for (int64_t l = 0; l < h; ++l) lane[static_cast<size_t>(l)] += lane[static_cast<size_t>(l + h)];
  return static_cast<float>(lane[0]) * (1.0f / static_cast<float>(n));
}

float absmax_mean(const TensorView& absmax) {
  const char* op = "absmax_mean";
  check_absmax_for_mean(op, absmax);
  if (const auto* cu = backend_for(op, {{"absmax", &absmax}})) return cu->absmax_mean_to_host(absmax);
  return absmax_mean_cpu(absmax);
}

void absmax_mean(const TensorView& absmax, const TensorView& out) {
  const char* op = "absmax_mean";
  check_absmax_for_mean(op, absmax);
  check_offset_tensor(op, "out", out);
  if (const auto* cu = backend_for(op, {{"absmax", &absmax}, {"out", &out}})) return cu->absmax_mean(absmax, out);
  *out.ptr<float>() = absmax_mean_cpu(absmax);
}

// Both forms of quantize_absmax_nested; offset_tensor, when given, replaces offset.
static void quantize_absmax_nested_impl(const TensorView& absmax, float offset, const std::optional<TensorView>& offset_tensor,
                                        const TensorView& qabsmax, const TensorView& nested_absmax) {
  const char* op = "quantize_absmax_nested";
  check_tensor(op, "absmax", absmax);
  check_dtype(op, "absmax", absmax, {DType::F32});
  if (offset_tensor) check_offset_tensor(op, "offset", *offset_tensor);
  const int64_t n = absmax.numel();
  check_tensor(op, "qabsmax", qabsmax);
  check_dtype(op, "qabsmax", qabsmax, {DType::U8});
  check_numel(op, "qabsmax", qabsmax, n, "one code per element of absmax");
  check_tensor(op, "nested_absmax", nested_absmax);
  check_dtype(op, "nested_absmax", nested_absmax, {DType::F32});
  check_numel(op, "nested_absmax", nested_absmax, num_blocks(n, kNestedBlocksize),
              "one per nested block of " + std::to_string(kNestedBlocksize) + " absmax values");
  if (const auto* cu = backend_for(op, {{"absmax", &absmax}, {"offset", opt(offset_tensor)}, {"qabsmax", &qabsmax},
                                        {"nested_absmax", &nested_absmax}}))
    return cu->quantize_absmax_nested(absmax, offset, offset_tensor, qabsmax, nested_absmax);
  const float off = offset_tensor ? *offset_tensor->ptr<const float>() : offset;
  std::vector<float> centered(static_cast<size_t>(n));
  const float* a = absmax.ptr<const float>();
  for (int64_t i = 0; i < n; ++i) centered[static_cast<size_t>(i)] = a[i] - off;
  const Code8& map = dynamic_map_signed();
  quantize_blockwise(TensorView(centered.data(), DType::F32, {n}), TensorView(map.data(), DType::F32, {256}),
                     qabsmax, nested_absmax, kNestedBlocksize);
}

void quantize_absmax_nested(const TensorView& absmax, float offset, const TensorView& qabsmax,
                            const TensorView& nested_absmax) {
  quantize_absmax_nested_impl(absmax, offset, std::nullopt, qabsmax, nested_absmax);
}

void quantize_absmax_nested(const TensorView& absmax, const TensorView& offset, const TensorView& qabsmax,
                            const TensorView& nested_absmax) {
  quantize_absmax_nested_impl(absmax, 0.0f, offset, qabsmax, nested_absmax);
}

void dequantize_absmax_nested(const TensorView& qabsmax, const NestedAbsmax& nested, const TensorView& out) {
  const char* op = "dequantize_absmax_nested";
  check_tensor(op, "out", out);
  check_dtype(op, "out", out, {DType::F32});
  const int64_t n = out.numel();
  const BlockScales scales{qabsmax, nested};
  check_scales(op, scales, n);
  if (const auto* cu = backend_for(op, {{"qabsmax", &qabsmax}, nested_absmax_arg(scales), nested_code_arg(scales),
                                        offset_arg(scales), {"out", &out}}))
    return cu->dequantize_absmax_nested(qabsmax, nested, out);
  const cpu::Scales s = cpu_scales(scales);
  float* o = out.ptr<float>();
  for (int64_t i = 0; i < n; ++i) o[i] = s(i);
}

// ---- LLM.int8 --------------------------------------------------------------------------------------

void int8_vectorwise_quant(const TensorView& A, float threshold, const TensorView& CA,
                           const TensorView& row_stats, const std::optional<TensorView>& outlier_cols) {
  const char* op = "int8_vectorwise_quant";
  check_tensor(op, "A", A);
  check_float(op, "A", A);
  if (!(threshold >= 0.0f))
    fail(ErrorKind::Value, op, "threshold = " + std::to_string(threshold), "must be >= 0 (0 disables outliers)");
  const auto [rows, cols] = as_matrix(op, "A", A);
  check_tensor(op, "CA", CA);
  check_dtype(op, "CA", CA, {DType::I8});
  check_numel(op, "CA", CA, A.numel(), "one code per element of A");
  check_tensor(op, "row_stats", row_stats);
  check_dtype(op, "row_stats", row_stats, {DType::F32});
  check_numel(op, "row_stats", row_stats, rows, "one per row of A");
  if (outlier_cols) {
    check_tensor(op, "outlier_cols", *outlier_cols);
    check_dtype(op, "outlier_cols", *outlier_cols, {DType::U8});
    check_numel(op, "outlier_cols", *outlier_cols, cols, "one flag per column of A");
  }
  const bool split = threshold > 0.0f;
  if (const auto* cu = backend_for(op, {{"A", &A}, {"CA", &CA}, {"row_stats", &row_stats}, {"outlier_cols", opt(outlier_cols)}})) {
    if (split && !outlier_cols)
      fail(ErrorKind::Value, op, "outlier_cols = None",
           "must be given for GPU tensors when threshold = " + std::to_string(threshold) +
               " > 0 (the kernels collect the outlier columns there)");
    return cu->int8_vectorwise_quant(A, threshold, CA, row_stats, outlier_cols);
  }
  const auto& k = core::cpu_kernels();
  int8_t* ca = CA.ptr<int8_t>();
  if (!split) {
    core::parallel_for(rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
      k.int8_quant_rows(A.data, A.dtype, cols, threshold, ca, row_stats.ptr<float>(), nullptr, r0, r1);
    });
    if (outlier_cols) std::fill_n(outlier_cols->ptr<uint8_t>(), cols, uint8_t{0});
    return;
  }
  // Each chunk of rows marks its own outlier columns; the marks are merged, then whole outlier
  // columns are zeroed (§2.1: for rows > 1 the reference zeroes the entire column).
  std::vector<uint8_t> mask(static_cast<size_t>(cols), 0);
  std::mutex merge;
  core::parallel_for(rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    std::vector<uint8_t> local(static_cast<size_t>(cols), 0);
    k.int8_quant_rows(A.data, A.dtype, cols, threshold, ca, row_stats.ptr<float>(), local.data(), r0, r1);
    std::lock_guard<std::mutex> lock(merge);
    for (size_t j = 0; j < local.size(); ++j) mask[j] |= local[j];
  });
  std::vector<int64_t> outliers;
  for (int64_t j = 0; j < cols; ++j)
    if (mask[static_cast<size_t>(j)]) outliers.push_back(j);
  if (!outliers.empty())
    core::parallel_for(rows, grain_for(static_cast<int64_t>(outliers.size())), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t j : outliers) ca[r * cols + j] = 0;
    });
  if (outlier_cols) std::copy(mask.begin(), mask.end(), outlier_cols->ptr<uint8_t>());
}

void int8_vectorwise_dequant(const TensorView& CA, const TensorView& stats, const TensorView& out) {
  const char* op = "int8_vectorwise_dequant";
  check_tensor(op, "CA", CA);
  check_dtype(op, "CA", CA, {DType::I8});
  const auto [rows, cols] = as_matrix(op, "CA", CA);
  check_tensor(op, "stats", stats);
  check_dtype(op, "stats", stats, {DType::F32});
  check_numel(op, "stats", stats, rows, "one per row of CA");
  check_tensor(op, "out", out);
  check_float(op, "out", out);
  check_numel(op, "out", out, CA.numel(), "one per element of CA");
  if (const auto* cu = backend_for(op, {{"CA", &CA}, {"stats", &stats}, {"out", &out}}))
    return cu->int8_vectorwise_dequant(CA, stats, out);
  const int8_t* ca = CA.ptr<const int8_t>();
  const float* st = stats.ptr<const float>();
  core::parallel_for(rows, grain_for(cols), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t j = 0; j < cols; ++j)
        store_from_float(out.data, out.dtype, r * cols + j, static_cast<float>(ca[r * cols + j]) * st[r] * kInt8DequantScale);
  });
}

void int8_linear_matmul(const TensorView& A, const TensorView& B, const TensorView& out) {
  const char* op = "int8_linear_matmul";
  check_tensor(op, "A", A);
  check_dtype(op, "A", A, {DType::I8});
  check_tensor(op, "B", B);
  check_dtype(op, "B", B, {DType::I8});
  core::check_ndim(op, "B", B, 2);
  const auto [M, K] = as_matrix(op, "A", A);
  const int64_t N = B.shape[0];
  if (B.shape[1] != K)
    fail(ErrorKind::Value, op, "B = " + describe(B), "must have K = " + std::to_string(K) + " columns like A = " + describe(A));
  check_tensor(op, "out", out);
  check_dtype(op, "out", out, {DType::I32});
  check_numel(op, "out", out, M * N, "[M, N] = [" + std::to_string(M) + ", " + std::to_string(N) + "]");
  if (const auto* cu = backend_for(op, {{"A", &A}, {"B", &B}, {"out", &out}})) return cu->int8_linear_matmul(A, B, out);
  if (K == 0) {
    std::fill_n(out.ptr<int32_t>(), M * N, 0);
    return;
  }
  const auto& k = core::cpu_kernels();
  core::parallel_for(N, grain_for(K * std::max<int64_t>(M, 1) / 4), [&](int64_t n0, int64_t n1) {
    k.int8_matmul(A.ptr<const int8_t>(), B.ptr<const int8_t>(), out.ptr<int32_t>(), M, N, K, n0, n1);
  });
}

void int8_mm_dequant(const TensorView& acc, const TensorView& row_stats, const TensorView& col_stats,
                     const std::optional<TensorView>& bias, const TensorView& out) {
  const char* op = "int8_mm_dequant";
  check_tensor(op, "acc", acc);
  check_dtype(op, "acc", acc, {DType::I32});
  const auto [M, N] = as_matrix(op, "acc", acc);
  check_tensor(op, "row_stats", row_stats);
  check_dtype(op, "row_stats", row_stats, {DType::F32});
  check_numel(op, "row_stats", row_stats, M, "one per row of acc");
  check_tensor(op, "col_stats", col_stats);
  check_dtype(op, "col_stats", col_stats, {DType::F32});
  check_numel(op, "col_stats", col_stats, N, "one per column of acc");
  if (bias) {
    check_tensor(op, "bias", *bias);
    check_float(op, "bias", *bias);
    check_numel(op, "bias", *bias, N, "one per column of acc");
  }
  check_tensor(op, "out", out);
  check_float(op, "out", out);
  check_numel(op, "out", out, acc.numel(), "one per element of acc");
  if (const auto* cu = backend_for(op, {{"acc", &acc}, {"row_stats", &row_stats}, {"col_stats", &col_stats},
                                        {"bias", opt(bias)}, {"out", &out}}))
    return cu->int8_mm_dequant(acc, row_stats, col_stats, bias, out);
  const auto& k = core::cpu_kernels();
  core::parallel_for(M, grain_for(N), [&](int64_t r0, int64_t r1) {
    k.int8_mm_dequant(acc.ptr<const int32_t>(), row_stats.ptr<const float>(), col_stats.ptr<const float>(),
                      bias ? bias->data : nullptr, bias ? bias->dtype : DType::F32, out.data, out.dtype, N, r0, r1);
  });
}

// ---- runtime -----------------------------------------------------------------------------------------

void set_num_threads(int n) { core::set_num_threads(n); }
int get_num_threads() { return core::num_threads(); }

}  // namespace nybble
