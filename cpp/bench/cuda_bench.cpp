// cuda_bench.cpp — GPU timings of the CUDA backend (nybble_cuda_bench): each op's median time over
// 20 runs after warm-up (CUDA events on one stream), the bytes it must move (spec/performance.md)
// and their fraction of the copy bandwidth B measured first in the same run. Inputs are random
// (approximately normal, never zeros). Prints a Markdown table.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/backend.hpp"
#include "nybble/nybble.hpp"

namespace {

using namespace nybble;

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

cudaStream_t g_stream = nullptr;

struct Buf {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Buf(size_t b) : bytes(b) { check(cudaMalloc(&p, b ? b : 1), "cudaMalloc"); }
  ~Buf() { cudaFree(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  TensorView view(DType t, std::initializer_list<int64_t> shape) const {
    TensorView v(p, t, shape, Device::CUDA);
    v.stream = g_stream;
    return v;
  }
};

// Fills with random bytes that read as roughly normal values of dtype t (u8: any byte), by
// tiling a 16 MiB random pattern.
void fill(const Buf& b, DType t, uint64_t seed) {
  const size_t tile = std::min<size_t>(b.bytes, size_t{16} << 20);
  std::vector<uint8_t> h(tile);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const int64_t es = dtype_size(t);
  for (size_t i = 0; i + static_cast<size_t>(es) <= tile; i += static_cast<size_t>(es)) {
    if (t == DType::U8 || t == DType::I8) h[i] = static_cast<uint8_t>(rng());
    else store_from_float(h.data(), t, static_cast<int64_t>(i) / es, t == DType::I32 ? 0.0f : normal(rng));
  }
  if (t == DType::I32)
    for (size_t i = 0; i + 4 <= tile; i += 4) {
      const int32_t v = static_cast<int32_t>(rng() % 100000);
      std::memcpy(&h[i], &v, 4);
    }
  for (size_t off = 0; off < b.bytes; off += tile)
    check(cudaMemcpy(static_cast<uint8_t*>(b.p) + off, h.data(), std::min(tile, b.bytes - off), cudaMemcpyHostToDevice), "fill");
}

// Median milliseconds of f over 20 runs after 3 warm-ups.
double time_ms(const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t a, b;
  check(cudaEventCreate(&a), "event");
  check(cudaEventCreate(&b), "event");
  std::vector<double> t;
  for (int i = 0; i < 20; ++i) {
    check(cudaEventRecord(a, g_stream), "record");
    f();
    check(cudaEventRecord(b, g_stream), "record");
    check(cudaEventSynchronize(b), "sync");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, a, b), "elapsed");
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

double g_bw = 0;  // bytes per ms
const char* g_filter = nullptr;  // NYBBLE_BENCH_FILTER: only rows whose name contains it

bool wanted(const std::string& name) { return g_filter == nullptr || name.find(g_filter) != std::string::npos; }

// Median milliseconds per call of f in batches of 20 back-to-back calls (launch gaps hidden as in
// a CUDA graph), 10 batches after a warm-up batch.
double time_batch_ms(const std::function<void()>& f) {
  const auto batch = [&] {
    for (int i = 0; i < 20; ++i) f();
  };
  return time_ms(batch) / 20;
}

// Times f and prints its row: median ms, GB/s and the fraction of B for `bytes`.
void bench(const std::string& name, const std::function<void()>& f, double bytes) {
  if (!wanted(name)) return;
  const double ms = time_ms(f);
  std::printf("| %s | %.4f | %.0f | %.0f %% |\n", name.c_str(), ms, bytes / ms / 1e6, 100.0 * bytes / ms / g_bw);
}

// bench() for calls timed in batches.
void bench_batch(const std::string& name, const std::function<void()>& f, double bytes) {
  if (!wanted(name)) return;
  const double ms = time_batch_ms(f);
  std::printf("| %s | %.4f | %.0f | %.0f %% |\n", name.c_str(), ms, bytes / ms / 1e6, 100.0 * bytes / ms / g_bw);
}

}  // namespace

int main() {
  try {
    if (cuda_device_count() == 0) {
      std::printf("no CUDA device\n");
      return 0;
    }
    check(cudaStreamCreateWithFlags(&g_stream, cudaStreamNonBlocking), "stream");
    g_filter = std::getenv("NYBBLE_BENCH_FILTER");
    {
      Buf a(size_t{2} << 30), b(size_t{2} << 30);
      fill(a, DType::U8, 1);
      const double ms = time_ms([&] { check(cudaMemcpyAsync(b.p, a.p, a.bytes, cudaMemcpyDeviceToDevice, g_stream), "copy"); });
      g_bw = 2.0 * static_cast<double>(a.bytes) / ms;
      std::printf("copy bandwidth B = %.0f GB/s\n\n| op | ms | GB/s | of B |\n|---|---|---|---|\n", g_bw / 1e6);
    }
    const int64_t n = int64_t{16384} * 16384, bs = 64, nb = n / bs, nnb = (nb + 255) / 256;
    {
      Buf x(static_cast<size_t>(n) * 2), packed(static_cast<size_t>(n) / 2), absmax(static_cast<size_t>(nb) * 4),
          q(static_cast<size_t>(nb)), nabs(static_cast<size_t>(nnb) * 4), code(1024), off(4), codes8(static_cast<size_t>(n)),
          abs8(static_cast<size_t>(n / 256) * 4);
      fill(x, DType::BF16, 2);
      check(cudaMemcpy(code.p, dynamic_map_signed().data(), 1024, cudaMemcpyHostToDevice), "code");
      const auto X = x.view(DType::BF16, {n});
      const double b4 = 2.0 * n + n / 2.0 + 4.0 * nb;
      bench("quantize_4bit nf4 bs64 bf16 16384^2", [&] {
            quantize_4bit(X, packed.view(DType::U8, {n / 2}), absmax.view(DType::F32, {nb}), bs, QuantType::NF4);
          }, b4);
      bench("quantize_4bit fp4 bs64 bf16", [&] {
            quantize_4bit(X, packed.view(DType::U8, {n / 2}), absmax.view(DType::F32, {nb}), bs, QuantType::FP4);
          }, b4);
      quantize_4bit(X, packed.view(DType::U8, {n / 2}), absmax.view(DType::F32, {nb}), bs, QuantType::NF4);
      bench("dequantize_4bit nf4 bs64 bf16", [&] {
            dequantize_4bit(packed.view(DType::U8, {n / 2}), BlockScales{absmax.view(DType::F32, {nb}), std::nullopt}, bs,
                            QuantType::NF4, X);
          }, b4);
      bench("absmax_mean (4 Mi absmax)", [&] { absmax_mean(absmax.view(DType::F32, {nb}), off.view(DType::F32, {1})); }, 4.0 * nb);
      bench("quantize_absmax_nested (4 Mi absmax)", [&] {
            quantize_absmax_nested(absmax.view(DType::F32, {nb}), off.view(DType::F32, {1}), q.view(DType::U8, {nb}),
                                   nabs.view(DType::F32, {nnb}));
          }, 5.0 * nb);
      NestedAbsmax nest{nabs.view(DType::F32, {nnb}), code.view(DType::F32, {256}), 0.0f, 256};
      nest.offset_tensor = off.view(DType::F32, {1});
      bench("dequantize_4bit nf4 bs64 bf16 nested", [&] {
            dequantize_4bit(packed.view(DType::U8, {n / 2}), BlockScales{q.view(DType::U8, {nb}), nest}, bs, QuantType::NF4, X);
          }, 2.0 * n + n / 2.0 + nb + 4.0 * nnb);
      const double b8 = 3.0 * n + 4.0 * n / 256;
      bench("quantize_blockwise bs256 bf16", [&] {
            quantize_blockwise(X, code.view(DType::F32, {256}), codes8.view(DType::U8, {n}), abs8.view(DType::F32, {n / 256}), 256);
          }, b8);
      bench("dequantize_blockwise bs256 bf16", [&] {
            dequantize_blockwise(codes8.view(DType::U8, {n}), abs8.view(DType::F32, {n / 256}), code.view(DType::F32, {256}), 256, X);
          }, b8);
    }
    {
      const int64_t rows = 16384, cols = 16384;
      Buf a(static_cast<size_t>(rows * cols) * 2), ca(static_cast<size_t>(rows * cols)), st(static_cast<size_t>(rows) * 4),
          oc(static_cast<size_t>(cols));
      fill(a, DType::F16, 3);
      for (float thr : {0.0f, 6.0f})
        bench("int8_vectorwise_quant fp16 16384^2 threshold " + std::to_string(static_cast<int>(thr)), [&] {
              int8_vectorwise_quant(a.view(DType::F16, {rows, cols}), thr, ca.view(DType::I8, {rows, cols}), st.view(DType::F32, {rows}),
                                    oc.view(DType::U8, {cols}));
            }, 3.0 * rows * cols + 4.0 * rows);
    }
    // The 4-bit matmul, through gemm_4bit's rule and through each kernel and tile forced (the sweep
    // behind Note [gemm_4bit paths]). Weights rotate through copies filling 512 MiB, so that no
    // call finds its weight in L2 (50 MiB on the H200); times are per call in a back-to-back batch.
    const int64_t shapes[][2] = {{4096, 4096}, {14336, 4096}, {4096, 14336}, {8192, 8192}, {28672, 8192}, {8192, 28672}};
    for (const auto& s : shapes) {
      const int64_t N = s[0], K = s[1], w = N * K, wnb = w / 64, wnnb = (wnb + 255) / 256;
      const int64_t copies = std::max<int64_t>(1, (int64_t{512} << 20) / (w / 2));
      Buf packed(static_cast<size_t>(w / 2 * copies)), q(static_cast<size_t>(wnb)), nabs(static_cast<size_t>(wnnb) * 4), code(1024),
          A(static_cast<size_t>(256 * K) * 2), out(static_cast<size_t>(256 * N) * 2), bias(static_cast<size_t>(N) * 2);
      fill(packed, DType::U8, 4);
      fill(q, DType::U8, 5);
      fill(nabs, DType::F32, 6);
      fill(A, DType::BF16, 7);
      fill(bias, DType::BF16, 8);
      check(cudaMemcpy(code.p, dynamic_map_signed().data(), 1024, cudaMemcpyHostToDevice), "code");
      const BlockScales sc{q.view(DType::U8, {wnb}), NestedAbsmax{nabs.view(DType::F32, {wnnb}), code.view(DType::F32, {256}), 0.01f, 256}};
      int64_t next = 0;
      const auto weight = [&] {  // the next copy
        next = (next + 1) % copies;
        TensorView v(static_cast<uint8_t*>(packed.p) + next * (w / 2), DType::U8, {w / 2}, Device::CUDA);
        v.stream = g_stream;
        return v;
      };
      const TensorView Bv = bias.view(DType::BF16, {N});
      for (int64_t M : {1, 2, 4, 8, 16, 32, 64, 128, 256}) {
        const TensorView Av = A.view(DType::BF16, {M, K}), Ov = out.view(DType::BF16, {M, N});
        const std::string shape = " M=" + std::to_string(M) + " " + std::to_string(N) + "x" + std::to_string(K);
        const double bytes = w / 2.0 + wnb + 4.0 * wnnb + 2.0 * M * K + 2.0 * M * N;
        bench_batch("gemm_4bit nf4 bs64 nested bf16" + shape, [&] { gemm_4bit(Av, weight(), sc, 64, QuantType::NF4, Bv, Ov); }, bytes);
        if (cuda::gemm4_skinny_applies(Av, weight(), sc, 64, N))
          bench_batch("skinny" + shape, [&] { cuda::gemm_4bit_skinny(Av, weight(), sc, 64, QuantType::NF4, Bv, Ov); }, bytes);
        if (cuda::gemm4_tile_applies(Av, weight(), sc, 64, N)) {
          bench_batch("tile" + shape, [&] { cuda::gemm_4bit_tile(Av, weight(), sc, 64, QuantType::NF4, Bv, Ov); }, bytes);
          if (M == 16 || M == 64 || M == 256)
            for (int split : {1, 2, 4, 8})
              bench_batch("tile split=" + std::to_string(split) + shape,
                          [&] { cuda::gemm_4bit_tile(Av, weight(), sc, 64, QuantType::NF4, Bv, Ov, 0, split); }, bytes);
        }
        // The backward's G [M, N] @ W into [M, K] (gemm_4bit_grad's tiled kernel): out's buffer is G,
        // A's the result; the same bytes.
        const TensorView Gv = out.view(DType::BF16, {M, N}), Gout = A.view(DType::BF16, {M, K});
        if (cuda::gemm4_tile_grad_applies(Gv, weight(), sc, 64, K))
          bench_batch("tile grad" + shape, [&] { cuda::gemm_4bit_grad_tile(Gv, weight(), sc, 64, QuantType::NF4, Gout); }, bytes);
        if (M <= 64)
          for (int wk : {1, 2, 4})
            bench_batch("mma wk=" + std::to_string(wk) + shape,
                        [&] { cuda::gemm_4bit_mma(Av, weight(), sc, 64, QuantType::NF4, Bv, Ov, wk); }, bytes);
      }
    }
    for (int64_t M : {1, 16, 256, 4096}) {
      const int64_t N = 4096, K = 4096;
      Buf a(static_cast<size_t>(M * K)), b(static_cast<size_t>(N * K)), o(static_cast<size_t>(M * N) * 4);
      fill(a, DType::I8, 9);
      fill(b, DType::I8, 10);
      if (!wanted("int8_linear_matmul")) break;
      const double ms = time_ms([&] {
        int8_linear_matmul(a.view(DType::I8, {M, K}), b.view(DType::I8, {N, K}), o.view(DType::I32, {M, N}));
      });
      std::printf("| int8_linear_matmul M=%lld 4096x4096 | %.4f | %.1f TOPS | |\n", static_cast<long long>(M), ms, 2.0 * M * N * K / ms / 1e9);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
