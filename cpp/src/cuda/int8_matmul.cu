// cuda/int8_matmul.cu — out (i32 [M, N]) = A (i8 [M, K]) @ B (i8 [N, K])^T, exact int32 sums.
//
// cuBLASLt's integer tensor-core (IMMA) kernels where the shape allows: in cuBLASLt's
// column-major terms out^T [N, M] = B^T(op T) x A^T, i.e. the "TN" layout its int8 kernels need,
// with leading dimensions K, K and N. IMMA with the regular (column-major) ordering asks for
// leading dimensions and m, k that are multiples of 4 and 4-byte aligned pointers; nybble sends
// shapes with K % 4 == 0, N % 4 == 0 and 16-byte aligned pointers, and falls back when the
// heuristic offers no algorithm or the call answers CUBLAS_STATUS_NOT_SUPPORTED.
// int8_matmul_dp4a_kernel: the fallback for every other shape: 64 x 64 output tiles, K in steps
// of 32 bytes through shared memory (zero-padded past M, N, K), four int8 products a __dp4a.
//
// The cuBLASLt handle is created once per device and kept for the process. Plans (descriptors and
// the heuristic's algorithm) are cached per (device, M, N, K); the cache is emptied when it
// reaches kMaxPlans, so shapes that vary with every call (the batch size M) cannot grow it without
// bound. No workspace is passed: nybble allocates no device memory of its own, and cuBLASLt's
// int8 kernels for these layouts need none (split-K variants that would are not offered).
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "cuda/backend.hpp"
#include "cuda/launch.cuh"
#include "nybble/error.hpp"

namespace nybble::cuda {
namespace {

constexpr int kTile = 64;     // output rows and columns of a fallback CTA
constexpr int kTileK = 32;    // K bytes per shared-memory step
constexpr int kPadK = 4;      // row padding of the shared tiles, so rows start in different banks
constexpr size_t kMaxPlans = 512;

__global__ void __launch_bounds__(256) int8_matmul_dp4a_kernel(const int8_t* __restrict__ A, const int8_t* __restrict__ B,
                                                               int32_t* __restrict__ out, int64_t M, int64_t N, int64_t K) {
  __shared__ alignas(4) int8_t As[kTile][kTileK + kPadK];
  __shared__ alignas(4) int8_t Bs[kTile][kTileK + kPadK];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;  // 16 x 16 threads, 4 x 4 outputs each
  const int lr = threadIdx.x / 4, lk = (threadIdx.x % 4) * 8;  // loader: one tile row, 8 of its K bytes
  const int64_t n0 = int64_t{blockIdx.x} * kTile;
  for (int64_t m0 = int64_t{blockIdx.y} * kTile; m0 < M; m0 += int64_t{gridDim.y} * kTile) {
    int32_t acc[4][4] = {};
    for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
      __syncthreads();  // the previous step's readers are done with the tiles
      for (int j = 0; j < 8; ++j) {
        const int64_t k = k0 + lk + j;
        As[lr][lk + j] = m0 + lr < M && k < K ? A[(m0 + lr) * K + k] : int8_t{0};
        Bs[lr][lk + j] = n0 + lr < N && k < K ? B[(n0 + lr) * K + k] : int8_t{0};
      }
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < kTileK; kk += 4) {
        int a[4], b[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          a[i] = *reinterpret_cast<const int*>(&As[ty + 16 * i][kk]);
          b[i] = *reinterpret_cast<const int*>(&Bs[tx + 16 * i][kk]);
        }
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
          for (int j = 0; j < 4; ++j) acc[i][j] = __dp4a(a[i], b[j], acc[i][j]);
      }
    }
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 4; ++j) {
        const int64_t m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
        if (m < M && n < N) out[m * N + n] = acc[i][j];
      }
  }
}

void check_lt(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS)
    throw Error(ErrorKind::Runtime, std::string("int8_linear_matmul: ") + what + " failed: " + cublasLtGetStatusName(s) +
                                        ": " + cublasLtGetStatusString(s));
}

cublasLtHandle_t lt_handle(int device) {
  static std::mutex mu;
  static std::array<cublasLtHandle_t, 64> handles{};
  if (device < 0 || device >= static_cast<int>(handles.size()))
    throw Error(ErrorKind::Runtime, "int8_linear_matmul: device index " + std::to_string(device) + " is out of range");
  const std::lock_guard<std::mutex> lock(mu);
  cublasLtHandle_t& h = handles[static_cast<size_t>(device)];
  if (h == nullptr) check_lt(cublasLtCreate(&h), "cublasLtCreate");  // the call made `device` current
  return h;
}

// The descriptors of one shape and the algorithm the heuristic chose for it.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A (our B), B (our A), C = D
  cublasLtMatmulAlgo_t algo{};
  bool usable = false;
  Plan() = default;
  Plan(const Plan&) = delete;
  Plan& operator=(const Plan&) = delete;
  ~Plan() {
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

std::unique_ptr<Plan> make_plan(cublasLtHandle_t handle, int64_t M, int64_t N, int64_t K) {
  auto p = std::make_unique<Plan>();
  check_lt(cublasLtMatmulDescCreate(&p->desc, CUBLAS_COMPUTE_32I, CUDA_R_32I), "cublasLtMatmulDescCreate");
  const cublasOperation_t transpose = CUBLAS_OP_T;
  check_lt(cublasLtMatmulDescSetAttribute(p->desc, CUBLASLT_MATMUL_DESC_TRANSA, &transpose, sizeof(transpose)),
           "cublasLtMatmulDescSetAttribute(TRANSA)");
  const auto u = [](int64_t v) { return static_cast<uint64_t>(v); };
  check_lt(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_8I, u(K), u(N), K), "cublasLtMatrixLayoutCreate(B)");
  check_lt(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_8I, u(K), u(M), K), "cublasLtMatrixLayoutCreate(A)");
  check_lt(cublasLtMatrixLayoutCreate(&p->c, CUDA_R_32I, u(N), u(M), N), "cublasLtMatrixLayoutCreate(out)");
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t workspace = 0;
  const uint32_t alignment = 16;  // launch() only sends 16-byte aligned pointers
  cublasStatus_t s = cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace,
                                                          sizeof(workspace));
  for (auto attr : {CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
                    CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES})
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasLtMatmulPreferenceSetAttribute(pref, attr, &alignment, sizeof(alignment));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  if (s == CUBLAS_STATUS_SUCCESS)
    s = cublasLtMatmulAlgoGetHeuristic(handle, p->desc, p->a, p->b, p->c, p->c, pref, 1, &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  p->usable = s == CUBLAS_STATUS_SUCCESS && found > 0;  // anything else: the fallback kernel
  p->algo = result.algo;
  return p;
}

// The cached plan of a shape (created on first use). Shared ownership: a call keeps its plan
// alive while another thread empties the cache.
std::shared_ptr<const Plan> plan_for(int device, cublasLtHandle_t handle, int64_t M, int64_t N, int64_t K) {
  static std::mutex mu;
  static std::map<std::tuple<int, int64_t, int64_t, int64_t>, std::shared_ptr<const Plan>> plans;
  const std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_tuple(device, M, N, K);
  if (auto it = plans.find(key); it != plans.end()) return it->second;
  if (plans.size() >= kMaxPlans) plans.clear();
  std::shared_ptr<const Plan> p = make_plan(handle, M, N, K);
  plans.emplace(key, p);
  return p;
}

// Runs cuBLASLt; false when it does not support the shape.
bool run_cublaslt(const Call& call, const int8_t* A, const int8_t* B, int32_t* out, int64_t M, int64_t N, int64_t K) {
  const cublasLtHandle_t handle = lt_handle(call.device());
  const std::shared_ptr<const Plan> p = plan_for(call.device(), handle, M, N, K);
  if (!p->usable) return false;
  const int32_t alpha = 1, beta = 0;
  const cublasStatus_t s = cublasLtMatmul(handle, p->desc, &alpha, B, p->a, A, p->b, &beta, out, p->c, out, p->c,
                                          &p->algo, nullptr, 0, call.stream());
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) return false;
  check_lt(s, "cublasLtMatmul");
  return true;
}

}  // namespace

void int8_linear_matmul(const TensorView& A, const TensorView& B, const TensorView& out) {
  const int64_t K = A.shape[static_cast<size_t>(A.ndim - 1)], N = B.shape[0];
  const int64_t M = K == 0 ? 0 : A.numel() / K;  // as core sees A: K == 0 leaves no rows (and out empty)
  if (M == 0 || N == 0) return;
  const Call call("int8_linear_matmul", A);
  auto* o = out.ptr<int32_t>();
  const auto* a = A.ptr<const int8_t>();
  const auto* b = B.ptr<const int8_t>();
  const bool lt_shape = K % 4 == 0 && N % 4 == 0 && aligned(a, 16) && aligned(b, 16) && aligned(o, 16);
  if (lt_shape && run_cublaslt(call, a, b, o, M, N, K)) return;
  const dim3 grid(static_cast<unsigned>(ceil_div(N, kTile)),
                  static_cast<unsigned>(ceil_div(M, kTile) < 65535 ? ceil_div(M, kTile) : 65535));
  int8_matmul_dp4a_kernel<<<grid, 256, 0, call.stream()>>>(a, b, o, M, N, K);
  call.check_launch("int8_matmul_dp4a_kernel");
}

}  // namespace nybble::cuda
