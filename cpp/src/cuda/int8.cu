// cuda/int8.cu — LLM.int8's elementwise ops on the GPU, equal to the CPU oracle (cpu/ref/int8.cpp)
// bit for bit: row-wise int8 quantization with an outlier threshold, its dequantization, and the
// dequantization of an int32 matmul result.
//
// int8_quant_rows_kernel: one CTA per row (threads ~ cols / 8, 32..1024). It reads the row with
//   16-byte loads, takes the NaN-ignoring max |x| over non-outliers and flags outlier columns in
//   outlier_cols, then writes round_half_even((x * 127) / row_stat) with the IEEE division of the
//   oracle, 8 codes a store. Rows up to 32 Ki elements stay in registers in between (one read);
//   longer rows are read again (mostly from L2).
//   Bytes moved: rows * cols * (sizeof(T) + 1) + 4 per row.
// zero_outlier_columns_kernel (threshold > 0 and rows > 1): §2.1's "every column holding an
//   outlier is zeroed": a thread takes 16 columns and kZeroRows rows, and leaves at once when none
//   of its columns is flagged, so it reads outlier_cols and writes only the zeroed bytes. With one
//   row the outliers themselves are the only elements of their columns, already 0.
// int8_vectorwise_dequant_kernel / int8_mm_dequant_kernel: elementwise, 16 / 8 elements a thread,
//   the row (and column) tracked element by element. Bytes: n + n * sizeof(T) (+ 4 per row); and
//   4n + n * sizeof(T) (+ 4 per row and column, + bias).
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda/backend.hpp"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kZeroCols = 16;  // columns per thread of zero_outlier_columns_kernel
constexpr int kZeroRows = 64;  // rows per thread of zero_outlier_columns_kernel

// cpu::ref::int8_quantize_value: the product x * 127 rounded, then the IEEE quotient, clamped to
// [-127, 127] (it can exceed 127 by an ulp), rounded half to even; NaN (0/0, NaN input) -> 0.
__device__ __forceinline__ int8_t int8_quantize_value(float x, float row_stat) {
  const float v = __fdiv_rn(__fmul_rn(x, 127.0f), row_stat);
  if (isnan(v)) return 0;
  return static_cast<int8_t>(__float2int_rn(fminf(fmaxf(v, -127.0f), 127.0f)));
}

// Max over the CTA of every thread's m (all threads call it; red holds 32 floats).
__device__ float block_absmax(float m, float* red) {
  m = warp_max(m);
  __syncthreads();  // red is free: the previous row's readers are done
  if (threadIdx.x % 32 == 0) red[threadIdx.x / 32] = m;
  __syncthreads();
  m = 0.0f;
  for (int w = 0; w < static_cast<int>(blockDim.x / 32); ++w) m = absmax_step(m, red[w]);
  return m;
}

// Quantizes v (elements c .. c + 7 of a row) with the row's statistic and stores the codes.
template <int N>
__device__ __forceinline__ void store_row_codes(int8_t* q, int64_t c, int64_t cols, const float (&v)[N], float m,
                                                bool split, float threshold, bool vec_ca) {
  uint32_t w[2] = {0, 0};
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int8_t code = split && fabsf(v[j]) >= threshold ? int8_t{0} : int8_quantize_value(v[j], m);
    w[j / 4] |= uint32_t{static_cast<uint8_t>(code)} << (8 * (j % 4));
  }
  const int valid = cols - c >= 8 ? 8 : static_cast<int>(cols - c);
  if (vec_ca && valid == 8) {
    *reinterpret_cast<uint2*>(q + c) = make_uint2(w[0], w[1]);
  } else {
    for (int j = 0; j < valid; ++j) q[c + j] = static_cast<int8_t>(w[j / 4] >> (8 * (j % 4)));
  }
}

// Max |x| over a run's non-outliers; flags outlier columns (every writer stores 1).
__device__ __forceinline__ float run_absmax(const float (&v)[8], int64_t c, int64_t cols, bool split, float threshold,
                                            uint8_t* outlier_cols, float m) {
  const int valid = cols - c >= 8 ? 8 : (cols > c ? static_cast<int>(cols - c) : 0);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (j >= valid) continue;
    if (split && fabsf(v[j]) >= threshold) outlier_cols[c + j] = 1;
    else m = absmax_step(m, v[j]);
  }
  return m;
}

// kRuns > 0: the row fits in kRuns runs of 8 elements per thread and stays in registers between
// the max and the codes (A is read once, all its loads in flight together). kRuns == 0: longer
// rows, read twice (the second pass mostly from L2).
template <DType T, int kRuns>
__global__ void __launch_bounds__(1024) int8_quant_rows_kernel(const storage_t<T>* __restrict__ A, int64_t rows, int64_t cols, float threshold,
                                       int8_t* __restrict__ CA, float* __restrict__ row_stats,
                                       uint8_t* __restrict__ outlier_cols, bool vec_a, bool vec_ca) {
  __shared__ float red[32];
  const bool split = threshold > 0.0f;
  const int64_t step = int64_t{blockDim.x} * 8;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const storage_t<T>* a = A + r * cols;
    int8_t* q = CA + r * cols;
    float m = 0.0f;
    if constexpr (kRuns > 0) {
      float v[kRuns][8];
#pragma unroll
      for (int k = 0; k < kRuns; ++k) load8<T>(a, k * step + int64_t{threadIdx.x} * 8, cols, vec_a, v[k]);
#pragma unroll
      for (int k = 0; k < kRuns; ++k) m = run_absmax(v[k], k * step + int64_t{threadIdx.x} * 8, cols, split, threshold, outlier_cols, m);
      m = block_absmax(m, red);
      if (threadIdx.x == 0) row_stats[r] = m;
#pragma unroll
      for (int k = 0; k < kRuns; ++k) {
        const int64_t c = k * step + int64_t{threadIdx.x} * 8;
        if (c < cols) store_row_codes(q, c, cols, v[k], m, split, threshold, vec_ca);
      }
    } else {
      for (int64_t c = int64_t{threadIdx.x} * 8; c < cols; c += step) {
        float v[8];
        load8<T>(a, c, cols, vec_a, v);
        m = run_absmax(v, c, cols, split, threshold, outlier_cols, m);
      }
      m = block_absmax(m, red);
      if (threadIdx.x == 0) row_stats[r] = m;
      for (int64_t c = int64_t{threadIdx.x} * 8; c < cols; c += step) {
        float v[8];
        load8<T>(a, c, cols, vec_a, v);
        store_row_codes(q, c, cols, v, m, split, threshold, vec_ca);
      }
    }
  }
}

__global__ void zero_outlier_columns_kernel(int8_t* __restrict__ CA, int64_t rows, int64_t cols,
                                            const uint8_t* __restrict__ outlier_cols) {
  const int64_t col_chunks = ceil_div(cols, kZeroCols), items = col_chunks * ceil_div(rows, kZeroRows);
  for (int64_t it = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; it < items; it += int64_t{gridDim.x} * blockDim.x) {
    const int64_t c0 = (it % col_chunks) * kZeroCols, r0 = (it / col_chunks) * kZeroRows;
    uint32_t flagged = 0;
    for (int j = 0; j < kZeroCols; ++j)
      if (c0 + j < cols && outlier_cols[c0 + j]) flagged |= 1u << j;
    if (flagged == 0) continue;
    for (int64_t r = r0; r < r0 + kZeroRows && r < rows; ++r)
      for (int j = 0; j < kZeroCols; ++j)
        if (flagged & (1u << j)) CA[r * cols + c0 + j] = 0;
  }
}

template <DType T>
__global__ void int8_vectorwise_dequant_kernel(const int8_t* __restrict__ CA, const float* __restrict__ stats,
                                               int64_t n, int64_t cols, storage_t<T>* __restrict__ out, bool vec_in,
                                               bool vec_out) {
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t * 16 < n; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t * 16;
    int8_t q[16];
    if (vec_in && i + 16 <= n) {
      *reinterpret_cast<uint4*>(q) = *reinterpret_cast<const uint4*>(CA + i);
    } else {
      for (int j = 0; j < 16; ++j) q[j] = i + j < n ? CA[i + j] : int8_t{0};
    }
    int64_t r = i / cols, next = (r + 1) * cols;
    float st = stats[r];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      float v[8];
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int64_t e = i + 8 * h + j;
        if (e >= next && e < n) {  // at most one row boundary per element: cols >= 1
          ++r;
          next += cols;
          st = stats[r];
        }
        v[j] = __fmul_rn(__fmul_rn(static_cast<float>(q[8 * h + j]), st), kInt8DequantScale);
      }
      store8<T>(out, i + 8 * h, n, vec_out, v);
    }
  }
}

__device__ __forceinline__ float load_float(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::F16: return Elem<DType::F16>::load(static_cast<const uint16_t*>(p), i);
    case DType::BF16: return Elem<DType::BF16>::load(static_cast<const uint16_t*>(p), i);
    default: return static_cast<const float*>(p)[i];
  }
}

template <DType T>
__global__ void int8_mm_dequant_kernel(const int32_t* __restrict__ acc, const float* __restrict__ row_stats,
                                       const float* __restrict__ col_stats, const void* __restrict__ bias,
                                       DType bias_dt, int64_t n, int64_t N, storage_t<T>* __restrict__ out,
                                       bool vec_in, bool vec_out) {
  for (int64_t t = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; t * 8 < n; t += int64_t{gridDim.x} * blockDim.x) {
    const int64_t i = t * 8;
    int32_t a[8];
    if (vec_in && i + 8 <= n) {
      const int4 lo = *reinterpret_cast<const int4*>(acc + i), hi = *reinterpret_cast<const int4*>(acc + i + 4);
      a[0] = lo.x, a[1] = lo.y, a[2] = lo.z, a[3] = lo.w, a[4] = hi.x, a[5] = hi.y, a[6] = hi.z, a[7] = hi.w;
    } else {
      for (int j = 0; j < 8; ++j) a[j] = i + j < n ? acc[i + j] : 0;
    }
    int64_t r = i / N, c = i - r * N;
    float v[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      if (i + j < n) {
        float x = __fmul_rn(__fmul_rn(__fmul_rn(static_cast<float>(a[j]), row_stats[r]), col_stats[c]),
                            kInt8MmDequantScale);
        if (bias != nullptr) x = __fadd_rn(x, load_float(bias, bias_dt, c));
        v[j] = x;
      } else {
        v[j] = 0.0f;
      }
      if (++c == N) {
        c = 0;
        ++r;
      }
    }
    store8<T>(out, i, n, vec_out, v);
  }
}

// Threads for one row of `cols` elements: about one 8-element run each, a power of two in [32, 1024].
int row_threads(int64_t cols) {
  int t = 32;
  while (t < 1024 && int64_t{t} * 8 < cols) t *= 2;
  return t;
}

}  // namespace

void int8_vectorwise_quant(const TensorView& A, float threshold, const TensorView& CA, const TensorView& row_stats,
                           const std::optional<TensorView>& outlier_cols) {
  const int64_t cols = A.ndim == 0 ? 1 : A.shape[static_cast<size_t>(A.ndim - 1)];
  const int64_t rows = cols == 0 ? 0 : A.numel() / cols;
  const Call call("int8_vectorwise_quant", A);
  if (outlier_cols && cols > 0)
    call.check(cudaMemsetAsync(outlier_cols->data, 0, static_cast<size_t>(cols), call.stream()), "cudaMemsetAsync");
  if (rows == 0) return;
  const bool split = threshold > 0.0f;
  const int threads = row_threads(cols);
  const bool vec_rows = cols % 8 == 0;  // every row starts on a 16-byte (A) / 8-byte (CA) boundary
  dispatch_float(A.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    const int64_t runs = ceil_div(cols, int64_t{threads} * 8);
    const auto launch = [&](auto kernel) {
      kernel<<<call.grid(rows, 1), threads, 0, call.stream()>>>(
          static_cast<const storage_t<T>*>(A.data), rows, cols, threshold, CA.ptr<int8_t>(), row_stats.ptr<float>(),
          split ? outlier_cols->ptr<uint8_t>() : nullptr, vec_rows && aligned(A.data, 16), vec_rows && aligned(CA.data, 8));
      call.check_launch("int8_quant_rows_kernel");
    };
    if (runs <= 1) launch(int8_quant_rows_kernel<T, 1>);
    else if (runs <= 2) launch(int8_quant_rows_kernel<T, 2>);
    else if (runs <= 4) launch(int8_quant_rows_kernel<T, 4>);
    else launch(int8_quant_rows_kernel<T, 0>);
  });
  if (split && rows > 1) {
    const int64_t items = ceil_div(cols, kZeroCols) * ceil_div(rows, kZeroRows);
    zero_outlier_columns_kernel<<<call.grid(items, kThreads), kThreads, 0, call.stream()>>>(
        CA.ptr<int8_t>(), rows, cols, outlier_cols->ptr<const uint8_t>());
    call.check_launch("zero_outlier_columns_kernel");
  }
}

void int8_vectorwise_dequant(const TensorView& CA, const TensorView& stats, const TensorView& out) {
  const int64_t n = CA.numel();
  if (n == 0) return;
  const int64_t cols = CA.shape[static_cast<size_t>(CA.ndim - 1)];
  const Call call("int8_vectorwise_dequant", CA);
  dispatch_float(out.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    int8_vectorwise_dequant_kernel<T><<<call.grid(ceil_div(n, 16), kThreads), kThreads, 0, call.stream()>>>(
        CA.ptr<const int8_t>(), stats.ptr<const float>(), n, cols, static_cast<storage_t<T>*>(out.data),
        aligned(CA.data, 16), aligned(out.data, 16));
    call.check_launch("int8_vectorwise_dequant_kernel");
  });
}

void int8_mm_dequant(const TensorView& acc, const TensorView& row_stats, const TensorView& col_stats,
                     const std::optional<TensorView>& bias, const TensorView& out) {
  const int64_t n = acc.numel();
  if (n == 0) return;
  const int64_t N = acc.shape[static_cast<size_t>(acc.ndim - 1)];
  const Call call("int8_mm_dequant", acc);
  dispatch_float(out.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    int8_mm_dequant_kernel<T><<<call.grid(ceil_div(n, 8), kThreads), kThreads, 0, call.stream()>>>(
        acc.ptr<const int32_t>(), row_stats.ptr<const float>(), col_stats.ptr<const float>(),
        bias ? bias->data : nullptr, bias ? bias->dtype : DType::F32, n, N, static_cast<storage_t<T>*>(out.data),
        aligned(acc.data, 16), aligned(out.data, 16));
    call.check_launch("int8_mm_dequant_kernel");
  });
}

}  // namespace nybble::cuda
