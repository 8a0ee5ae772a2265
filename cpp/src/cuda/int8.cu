// cuda/int8.cu — LLM.int8's elementwise ops on the GPU, equal to the CPU oracle (cpu/ref/int8.cpp)
// bit for bit: row-wise int8 quantization with an outlier threshold, its dequantization, and the
// dequantization of an int32 matmul result.
//
// int8_quant_rows_kernel (rows of a multiple of 8 columns, aligned, up to 64 Ki elements of a
//   2-byte type or 32 Ki of fp32): one CTA per row at a time, of the fewest threads (32..1024)
//   that hold the row in registers at 128 input bytes a thread, as loaded (eight 16-byte loads,
//   all sent before any is used; values are unpacked where used). It takes the NaN-ignoring max
//   |x| over non-outliers and flags outlier columns in outlier_cols, then writes
//   round_half_even((x * 127) / row_stat) as the oracle does, with one IEEE division per row
//   (Note [Int8 codes] in cuda/codebook.hpp), 8 codes a store. Small CTAs (256 threads for 16 Ki
//   columns, 4 resident per multiprocessor at 64 registers a thread) keep up to 128 KiB of loads
//   in flight per multiprocessor, and while one CTA reduces or stores, the others' loads are out
//   (a single resident CTA of 1024 threads would leave the memory idle while it computes). The
//   grid is a CTA per row.
// int8_quant_long_rows_kernel: every other row; one CTA of up to 1024 threads per row, reading
//   the row twice (max, then codes; the second pass mostly from L2).
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
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kRowBytes = 128;  // input bytes of its row a thread of int8_quant_rows_kernel holds
constexpr int kMaxRowThreads = 1024;
constexpr int kZeroCols = 16;  // columns per thread of zero_outlier_columns_kernel
constexpr int kZeroRows = 64;  // rows per thread of zero_outlier_columns_kernel

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

// The codes of v (8 elements of a row) with the row's statistic m, y = 1 / m (Note [Int8 codes]),
// element j in byte j: without divisions, unless one of them needs it (rarely; then all of them
// take the division, a branch per run rather than per element).
template <bool kSplit>
__device__ __forceinline__ uint2 run_codes(const float (&v)[8], float m, float y, float threshold) {
  uint32_t w[2] = {0, 0};
  bool ok = true;
#pragma unroll
  for (int j = 0; j < 8; ++j)
    if (!kSplit || !(fabsf(v[j]) >= threshold)) w[j / 4] |= int8_code_fast(v[j], y, ok) << (8 * (j % 4));  // outliers: 0
  if (!ok) {
    w[0] = w[1] = 0;
#pragma unroll
    for (int j = 0; j < 8; ++j)
      if (!kSplit || !(fabsf(v[j]) >= threshold)) w[j / 4] |= int8_code_exact(v[j], m) << (8 * (j % 4));
  }
  return make_uint2(w[0], w[1]);
}

// Max |x| over a run's non-outliers; flags outlier columns (every writer stores 1). Elements past
// cols must be 0: below any threshold, and no max takes them.
template <bool kSplit>
__device__ __forceinline__ float run_absmax(const float (&v)[8], int64_t c, float threshold, uint8_t* outlier_cols,
                                            float m) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if (kSplit && fabsf(v[j]) >= threshold) outlier_cols[c + j] = 1;
    else m = absmax_step(m, v[j]);
  }
  return m;
}

// A run of 8 elements as loaded: one 16-byte load of a 2-byte type, two of fp32.
template <DType T>
struct RowRun {
  uint4 q[sizeof(storage_t<T>) / 2];
};

__device__ __forceinline__ uint32_t word_of(const uint4& u, int k) { return k == 0 ? u.x : k == 1 ? u.y : k == 2 ? u.z : u.w; }

template <DType T>
__device__ __forceinline__ void unpack_run(const RowRun<T>& run, float (&v)[8]) {
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    if constexpr (T == DType::F32) {
      v[j] = __uint_as_float(word_of(run.q[j / 4], j % 4));
    } else {
      const uint32_t w = word_of(run.q[0], j / 2);
      v[j] = Elem<T>::from_bits(j % 2 ? w >> 16 : w & 0xFFFFu);  // little endian: element 2j is the low half
    }
  }
}

// Rows of cols % 8 == 0 elements, A 16-byte and CA 8-byte aligned, cols <= blockDim.x * 8 * kRuns:
// thread t holds runs t, t + blockDim.x, ... (8 elements each) of its row in registers between
// the max and the codes. Runs past cols are zeros.
template <DType T, bool kSplit>
__global__ void __launch_bounds__(kMaxRowThreads) int8_quant_rows_kernel(const storage_t<T>* __restrict__ A, int64_t rows,
                                                                         int64_t cols, float threshold,
                                                                         int8_t* __restrict__ CA, float* __restrict__ row_stats,
                                                                         uint8_t* __restrict__ outlier_cols) {
  constexpr int kRuns = kRowBytes / (8 * static_cast<int>(sizeof(storage_t<T>)));
  __shared__ float red[32];
  const int64_t step = int64_t{blockDim.x} * 8;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const storage_t<T>* a = A + r * cols;
    RowRun<T> run[kRuns];
#pragma unroll
    for (int k = 0; k < kRuns; ++k) {  // all loads out before the first use
      const int64_t c = k * step + int64_t{threadIdx.x} * 8;
#pragma unroll
      for (uint4& q : run[k].q) q = make_uint4(0, 0, 0, 0);
      if (c < cols)
#pragma unroll
        for (int h = 0; h < static_cast<int>(sizeof(storage_t<T>)) / 2; ++h) run[k].q[h] = reinterpret_cast<const uint4*>(a + c)[h];
    }
    float m = 0.0f;
#pragma unroll
    for (int k = 0; k < kRuns; ++k) {
      float v[8];
      unpack_run<T>(run[k], v);
      m = run_absmax<kSplit>(v, k * step + int64_t{threadIdx.x} * 8, threshold, outlier_cols, m);
    }
    m = block_absmax(m, red);
    if (threadIdx.x == 0) row_stats[r] = m;
    const float y = __fdiv_rn(1.0f, m);
#pragma unroll
    for (int k = 0; k < kRuns; ++k) {
      const int64_t c = k * step + int64_t{threadIdx.x} * 8;
      if (c >= cols) continue;
      float v[8];
      unpack_run<T>(run[k], v);
      *reinterpret_cast<uint2*>(CA + r * cols + c) = run_codes<kSplit>(v, m, y, threshold);
    }
  }
}

// Any rows: two passes over the row (the second mostly from L2); vec_a as for load8.
template <DType T, bool kSplit>
__global__ void __launch_bounds__(kMaxRowThreads) int8_quant_long_rows_kernel(const storage_t<T>* __restrict__ A, int64_t rows,
                                                                              int64_t cols, float threshold,
                                                                              int8_t* __restrict__ CA, float* __restrict__ row_stats,
                                                                              uint8_t* __restrict__ outlier_cols, bool vec_a,
                                                                              bool vec_ca) {
  __shared__ float red[32];
  const int64_t step = int64_t{blockDim.x} * 8;
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const storage_t<T>* a = A + r * cols;
    float m = 0.0f;
    for (int64_t c = int64_t{threadIdx.x} * 8; c < cols; c += step) {
      float v[8];
      load8<T>(a, c, cols, vec_a, v);
      m = run_absmax<kSplit>(v, c, threshold, outlier_cols, m);
    }
    m = block_absmax(m, red);
    if (threadIdx.x == 0) row_stats[r] = m;
    const float y = __fdiv_rn(1.0f, m);
    int8_t* q = CA + r * cols;
    for (int64_t c = int64_t{threadIdx.x} * 8; c < cols; c += step) {
      float v[8];
      load8<T>(a, c, cols, vec_a, v);
      const uint2 w = run_codes<kSplit>(v, m, y, threshold);
      if (vec_ca && c + 8 <= cols) {
        *reinterpret_cast<uint2*>(q + c) = w;
      } else {
        for (int j = 0; j < 8 && c + j < cols; ++j) q[c + j] = static_cast<int8_t>((j < 4 ? w.x : w.y) >> (8 * (j % 4)));
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

// Threads for one row of `cols` elements at `per_thread` elements a thread: the fewest, a power of
// two in [32, 1024].
int row_threads(int64_t cols, int64_t per_thread) {
  int t = 32;
  while (t < kMaxRowThreads && int64_t{t} * per_thread < cols) t *= 2;
  return t;
}

template <DType T, bool kSplit>
void launch_quant_rows(const Call& call, const TensorView& A, int64_t rows, int64_t cols, float threshold,
                       const TensorView& CA, const TensorView& row_stats, uint8_t* outlier_cols) {
  constexpr int64_t kPerThread = kRowBytes / static_cast<int64_t>(sizeof(storage_t<T>));
  const auto* a = static_cast<const storage_t<T>*>(A.data);
  const bool vec_rows = cols % 8 == 0;  // every row starts on a 16-byte (A) / 8-byte (CA) boundary
  const bool vec_a = vec_rows && aligned(A.data, 16), vec_ca = vec_rows && aligned(CA.data, 8);
  // A CTA per row (the per-multiprocessor cap only bounds the grid; the kernels loop).
  const unsigned grid = call.grid(rows, 1, 1 << 16);
  if (vec_a && vec_ca && cols <= kMaxRowThreads * kPerThread) {
    int8_quant_rows_kernel<T, kSplit><<<grid, row_threads(cols, kPerThread), 0, call.stream()>>>(
        a, rows, cols, threshold, CA.ptr<int8_t>(), row_stats.ptr<float>(), outlier_cols);
    call.check_launch("int8_quant_rows_kernel");
  } else {
    int8_quant_long_rows_kernel<T, kSplit><<<grid, row_threads(cols, 8), 0, call.stream()>>>(
        a, rows, cols, threshold, CA.ptr<int8_t>(), row_stats.ptr<float>(), outlier_cols, vec_a, vec_ca);
    call.check_launch("int8_quant_long_rows_kernel");
  }
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
  dispatch_float(A.dtype, [&](auto t) {
    constexpr DType T = decltype(t)::value;
    if (split)
      launch_quant_rows<T, true>(call, A, rows, cols, threshold, CA, row_stats, outlier_cols->ptr<uint8_t>());
    else
      launch_quant_rows<T, false>(call, A, rows, cols, threshold, CA, row_stats, nullptr);
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
