// cuda/optim.cu — optimizer steps on the GPU (nybble/optim.hpp), 32-bit and 8-bit blockwise
// states, for one parameter or many in one launch. p, the states and the codes equal the CPU
// oracle's (cpu/ref/optim.cpp) bit for bit: the element rules are optim_rules.hpp's, the
// requantization is formats.hpp's rule through the bucket table (or search tree) of
// cuda/codebook.hpp, with the IEEE reciprocal and product (__fdiv_rn, __fmul_rn). Only the update
// norm of a clipped step differs in rounding (fp32 atomics; Note [Update norm]).
//
// Layout: one warp per block of kOptimizerBlocksize = 256 elements, each lane holding 8 of them in
// two runs of 4 (Note [Lane runs]): fp32 values move with 16-byte accesses, 2-byte values with
// 8-byte ones, codes with 4-byte ones, and each access instruction of a warp covers one
// contiguous span. The new absmax of a block is a shuffle reduction within its warp (no barrier).
// A CTA is 8 warps; the grid strides over the blocks of every parameter of the launch. The code
// maps sit in shared memory as codebook.hpp's Code8Table (6 KiB each: the map, and its bucket
// table, Note [8-bit bucket tables], or its search tree for a map that fails that note's
// checks), built once per CTA (the norm pass loads only the maps).
//
// Many parameters: a launch takes up to kMaxTensors parameters of one dtype, described in the
// kernel's parameter space (a __grid_constant__ table, so the GPU reads it in place and nybble
// allocates no device memory); a warp finds its parameter by binary search over their first
// blocks. A step with max_unorm runs, per launch: a kernel zeroing the unorm_vecs, the norm pass
// (each warp adds its parameters' sums of u^2 with one fp32 atomic per parameter it touched), and
// the update, which reads unorm_vec on the GPU: nothing waits for the host.
// Device scalars (Note [Device scalars] in nybble/optim.hpp): given a learning rate or step
// counts on the GPU, a warp derives the step's scalars (optim::at_step, two double-precision
// powers) from them each time it reaches another parameter's blocks, so a launch reads no host
// value that changes between steps and a CUDA graph can replay it.
//
// Bytes moved per element: 8-bit Adam: g and p (sizeof(T) read, p sizeof(T) written), 2 code
// bytes read and written, 8 bytes of absmax per block; 32-bit: 8 bytes of states read and
// written instead of the codes (AdEMAMix: 3 states). The norm pass reads everything once more
// (Adam and LAMB: all but p).
// Measured on an H200 (copy bandwidth 4.25 TB/s), 2^26 elements, mean of 20 eager calls, bytes
// counted as above: 32-bit Adam fp32 3.95 TB/s, bf16 3.7 TB/s; 8-bit Adam fp32 1.37 TB/s, bf16
// 0.87 TB/s; 8-bit momentum fp32 2.6 TB/s. 256 parameters of 2^18 elements (8-bit Adam fp32): one
// multi call 0.82 ms, 256 single calls 2.97 ms. (Not yet a row of nybble_cuda_bench.)
// Limitations: the 8-bit figures above are from the tree search (9 shared-memory reads per state
// and element, with bank conflicts in the deep tree levels), which bound the steps at about 90G
// elements/s whatever the dtype. The requantization now takes two shared-memory reads per state
// and element (a bucket byte and a threshold, Note [8-bit bucket tables]; the sign rule of
// state 1 reads nothing more) when the map passes that note's checks, as the dynamic maps do.
// Measured with it (bench/run_optim_bench.py, 1.07 B fp32 parameters in 16 tensors, H200, % of
// the fp32 add bandwidth with the bytes counted as above): AdamW8bit 65 % (37 % with the tree),
// Lion8bit 69 % (57 %), AdEMAMix8bit 45 % (25 %), LAMB8bit 38 % (26 %, two passes). Maps that
// fail the checks still take the tree. The dequantizing
// lookup (code[c], one read) is unchanged.
#include <cuda_runtime.h>

#include <vector>

#include "cpu/ref/optim_rules.hpp"
#include "cuda/backend.hpp"
#include "cuda/codebook.hpp"
#include "cuda/elem.cuh"
#include "cuda/launch.cuh"

namespace nybble::cuda {
namespace {

constexpr int kThreads = 256;  // 8 warps per CTA: 8 blocks per round
constexpr int kWarps = kThreads / 32;
constexpr int kPerLane = 8;
constexpr int kRun = 4;
static_assert(kOptimizerBlocksize == 32 * kPerLane, "a block of optimizer states is one warp's 8 elements per lane");
// Parameters per launch: their table (88 bytes each) and the other arguments fit in the 4 KiB of
// kernel parameters that every GPU and driver accepts.
constexpr int kMaxTensors = 40;

// Alignment of a parameter's buffers for the vector accesses of Note [Lane runs] (bit set:
// aligned to a run's bytes: 16 for fp32, 8 for fp16/bf16, 4 for codes).
enum : uint32_t { kVecGP = 1, kVecS1 = 2, kVecS2 = 4, kVecSlow = 8 };

// One parameter as the kernels see it. States: float* (32-bit) or uint8_t* (8-bit).
struct DevTensor {
  const void* g;
  void* p;
  void* s1;  // AdEMAMix: 2n values, the slow EMA from s1 + n
  void* s2;
  float* absmax1;  // 8-bit: [nb] (AdEMAMix [2, nb]); absmax2 [nb]
  float* absmax2;
  float* unorm;  // with max_unorm
  const float* step;  // its step_count on the GPU, or nullptr (Note [Device scalars])
  int64_t n;
  int64_t first;  // its first block in the launch's concatenation of blocks
  float param_norm;
  uint32_t vec;
};
static_assert(sizeof(DevTensor) == 88, "kMaxTensors assumes 88-byte entries");

struct Launch {
  DevTensor t[kMaxTensors];
  int count;
  int64_t blocks;  // of all parameters
};
static_assert(sizeof(Launch) + sizeof(optim::Step) + 3 * sizeof(float*) <= 4096, "optimizer_kernel's parameters");

// An 8-bit map in shared memory: codebook.hpp's Code8Table (the map, and its bucket table or, for
// a map that fails the checks of Note [8-bit bucket tables], its search tree) and how this CTA
// uses it. buckets: whether the map passed the checks (the same in every CTA of a launch);
// negatives: for a map that did, the number of its entries with the sign bit set (a prefix; the
// sign rule compares with it instead of reading code[q]).
struct Code8Shared : Code8Table {
  uint32_t buckets;
  uint32_t negatives;
};

// Builds the CTA's maps (qmap1, then qmap2 when kMaps is 2); kCodesOnly: only their code[] (what
// the norm pass reads). Every thread calls it; it holds the barriers, the last one after
// `buckets` and `negatives` are written.
template <int kMaps, bool kCodesOnly>
__device__ void load_maps(Code8Shared* maps, const float* qmap1, const float* qmap2) {
  if constexpr (kCodesOnly) {
#pragma unroll
    for (int k = 0; k < kMaps; ++k) code8_load(maps[k], k == 0 ? qmap1 : qmap2);
  } else {
    bool buckets[kMaps];
#pragma unroll
    for (int k = 0; k < kMaps; ++k) buckets[k] = code8_build(maps[k], k == 0 ? qmap1 : qmap2);
#pragma unroll
    for (int k = 0; k < kMaps; ++k) {
      for (int i = threadIdx.x; i < 256; i += blockDim.x) {
        uint32_t negatives = 0;
        if (code8_negatives_at(maps[k].code, i, negatives)) maps[k].negatives = negatives;  // one writer when buckets
      }
      if (threadIdx.x == 0) maps[k].buckets = buckets[k];
    }
  }
  __syncthreads();
}

// The parameter that holds block gb: the last whose first block is <= gb (an empty parameter
// shares its first block with the next one and never wins).
__device__ int find_tensor(const Launch& L, int64_t gb) {
  int lo = 0, hi = L.count - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (L.t[mid].first <= gb) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

__device__ double warp_sum(double v) {
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
  return v;
}

// Note [Lane runs]: lane l of a warp holds elements [4l, 4l + 4) and [128 + 4l, 132 + 4l) of its
// block, as its values 0-3 and 4-7. The warp's 32 accesses to one run then form one contiguous
// span (512 bytes of fp32, 256 of fp16/bf16, 128 of codes). Eight consecutive elements per lane
// would make each 16-byte fp32 access cover half of every 32-byte sector it touches: the 32-bit
// fp32 Adam step ran at 1.95 TB/s that way and runs at 3.95 TB/s this way (H200).
struct LaneRuns {
  int64_t at[2];  // first element of each run
  int64_t n;      // elements of the parameter
  __device__ LaneRuns(int64_t block_begin, int lane, int64_t count)
      : at{block_begin + lane * kRun, block_begin + 32 * kRun + lane * kRun}, n(count) {}
  __device__ bool full(int r) const { return at[r] + kRun <= n; }
  // Whether value j of the lane is an element of the parameter.
  __device__ bool in(int j) const { return at[j / kRun] + j % kRun < n; }
};

// The lane's values of a float buffer of dtype T as fp32, 0 past n; vec: see kVecGP.
template <DType T>
__device__ __forceinline__ void load_lane(const storage_t<T>* p, const LaneRuns& runs, bool vec, float (&v)[kPerLane]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = runs.at[r];
    if (vec && runs.full(r)) {
      if constexpr (T == DType::F32) {
        const float4 a = *reinterpret_cast<const float4*>(p + i);
        v[4 * r] = a.x, v[4 * r + 1] = a.y, v[4 * r + 2] = a.z, v[4 * r + 3] = a.w;
      } else {
        const uint2 u = *reinterpret_cast<const uint2*>(p + i);  // little endian: element i in the low half
        v[4 * r] = Elem<T>::from_bits(u.x & 0xFFFFu), v[4 * r + 1] = Elem<T>::from_bits(u.x >> 16);
        v[4 * r + 2] = Elem<T>::from_bits(u.y & 0xFFFFu), v[4 * r + 3] = Elem<T>::from_bits(u.y >> 16);
      }
      continue;
    }
#pragma unroll
    for (int k = 0; k < kRun; ++k) v[4 * r + k] = i + k < runs.n ? Elem<T>::load(p, i + k) : 0.0f;
  }
}

template <DType T>
__device__ __forceinline__ void store_lane(storage_t<T>* p, const LaneRuns& runs, bool vec, const float (&v)[kPerLane]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = runs.at[r];
    if (vec && runs.full(r)) {
      if constexpr (T == DType::F32) {
        *reinterpret_cast<float4*>(p + i) = make_float4(v[4 * r], v[4 * r + 1], v[4 * r + 2], v[4 * r + 3]);
      } else {
        const uint32_t lo = Elem<T>::to_bits(v[4 * r]) | (uint32_t{Elem<T>::to_bits(v[4 * r + 1])} << 16);
        const uint32_t hi = Elem<T>::to_bits(v[4 * r + 2]) | (uint32_t{Elem<T>::to_bits(v[4 * r + 3])} << 16);
        *reinterpret_cast<uint2*>(p + i) = make_uint2(lo, hi);
      }
      continue;
    }
#pragma unroll
    for (int k = 0; k < kRun; ++k)
      if (i + k < runs.n) Elem<T>::store(p, i + k, v[4 * r + k]);
  }
}

// The lane's codes of q (0 past n); vec: q is 4-byte aligned.
__device__ __forceinline__ void load_codes(const uint8_t* q, const LaneRuns& runs, bool vec, uint32_t (&c)[kPerLane]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = runs.at[r];
    if (vec && runs.full(r)) {
      const uint32_t w = *reinterpret_cast<const uint32_t*>(q + i);
#pragma unroll
      for (int k = 0; k < kRun; ++k) c[4 * r + k] = (w >> (8 * k)) & 0xFFu;
      continue;
    }
#pragma unroll
    for (int k = 0; k < kRun; ++k) c[4 * r + k] = i + k < runs.n ? q[i + k] : 0u;
  }
}

__device__ __forceinline__ void store_codes(uint8_t* q, const LaneRuns& runs, bool vec, const uint32_t (&c)[kPerLane]) {
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = runs.at[r];
    if (vec && runs.full(r)) {
      uint32_t w = 0;
#pragma unroll
      for (int k = 0; k < kRun; ++k) w |= c[4 * r + k] << (8 * k);
      *reinterpret_cast<uint32_t*>(q + i) = w;
      continue;
    }
#pragma unroll
    for (int k = 0; k < kRun; ++k)
      if (i + k < runs.n) q[i + k] = static_cast<uint8_t>(c[4 * r + k]);
  }
}

// The new states s of one block (this lane's values) -> codes and the block's absmax, as the
// oracle requantizes (cpu/ref/optim.cpp step 3). Every lane of the warp must call it. The codes
// come from the map's buckets, two elements a conversion (Note [8-bit bucket tables]), or from its
// tree (the branch is uniform over the launch).
__device__ __forceinline__ void requantize(const Code8Shared& map, bool sign_rule, const float (&s)[kPerLane],
                                           const LaneRuns& runs, float* absmax, uint32_t (&c)[kPerLane]) {
  float m = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j)
    if (runs.in(j)) m = absmax_step(m, s[j]);
  m = warp_max(m);
  if (threadIdx.x % 32 == 0) *absmax = m;
  const float r = __fdiv_rn(1.0f, m);
  if (map.buckets) {
    const uint32_t negatives = map.negatives;
#pragma unroll
    for (int j = 0; j < kPerLane; j += 2) {
      uint32_t q0, q1;
      quantize_8bit_bucket2(map, __fmul_rn(s[j], r), __fmul_rn(s[j + 1], r), q0, q1);
      c[j] = sign_rule ? sign_rule_by_split(q0, negatives, s[j]) : q0;
      c[j + 1] = sign_rule ? sign_rule_by_split(q1, negatives, s[j + 1]) : q1;
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const uint8_t q = quantize_8bit_tree(map.tree, map.code, __fmul_rn(s[j], r));
    c[j] = sign_rule ? optim::apply_sign_rule(map.code, q, s[j]) : q;
  }
}

// The step over every block of the launch. k8bit: states are codes; kNorm: the norm pass (sums
// of u^2 added to unorm, nothing else written). kDeviceStep: the step's scalars come from lr (the
// device learning rate, or base.lr when null) and each parameter's step count (or base.t), read
// when a warp reaches the parameter's blocks (Note [Device scalars]); else they are base.
template <DType T, Optimizer K, bool k8bit, bool kNorm, bool kDeviceStep>
__global__ void __launch_bounds__(kThreads) optimizer_kernel(const __grid_constant__ Launch L, const optim::Step base,
                                                             const float* lr, const float* qmap1, const float* qmap2) {
  constexpr bool kTwo = optim::has_state2(K), kSlow = optim::has_slow_ema(K);
  __shared__ Code8Shared maps[k8bit ? (kTwo ? 2 : 1) : 1];
  if constexpr (k8bit) load_maps<kTwo ? 2 : 1, kNorm>(maps, qmap1, qmap2);
  const int lane = threadIdx.x % 32;
  int current = -1;   // norm pass: the parameter whose sum this lane is accumulating
  double sum = 0.0;
  optim::Step c = base;
  int stepped = -1;  // kDeviceStep: the parameter c was derived for
  for (int64_t gb = int64_t{blockIdx.x} * kWarps + threadIdx.x / 32; gb < L.blocks; gb += int64_t{gridDim.x} * kWarps) {
    const int ti = find_tensor(L, gb);
    const DevTensor& t = L.t[ti];
    if constexpr (kNorm) {
      if (ti != current) {
        if (current >= 0) {
          const double total = warp_sum(sum);
          if (lane == 0) atomicAdd(L.t[current].unorm, static_cast<float>(total));
        }
        current = ti;
        sum = 0.0;
      }
    }
    if constexpr (kDeviceStep) {
      if (ti != stepped) {
        c = optim::at_step(base, t.step != nullptr ? static_cast<double>(*t.step) : base.t, lr != nullptr ? *lr : base.lr);
        stepped = ti;
      }
    }
    const int64_t b = gb - t.first, nb = ceil_div(t.n, kOptimizerBlocksize);
    const LaneRuns runs(b * kOptimizerBlocksize, lane, t.n);
    const float scale = !kNorm && c.max_unorm > 0.0f ? optim::trust_scale(c, *t.unorm, t.param_norm) : 1.0f;
    auto* g = static_cast<const storage_t<T>*>(t.g);
    auto* p = static_cast<storage_t<T>*>(t.p);
    float gv[kPerLane], pv[kPerLane], s1[kPerLane], s2[kPerLane] = {}, s3[kPerLane] = {};
    load_lane<T>(g, runs, t.vec & kVecGP, gv);
    // Adam's update u does not depend on p (its weight decay applies to p afterwards), so its norm
    // pass does not read p; the other kinds add weight decay to the gradient.
    if constexpr (kNorm && K == Optimizer::Adam) {
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) pv[j] = 0.0f;
    } else {
      load_lane<T>(p, runs, t.vec & kVecGP, pv);
    }
    if constexpr (k8bit) {
      uint32_t c1[kPerLane], c2[kPerLane], c3[kPerLane];
      const auto* q1 = static_cast<const uint8_t*>(t.s1);
      load_codes(q1, runs, t.vec & kVecS1, c1);
      const float a1 = t.absmax1[b];
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) s1[j] = __fmul_rn(maps[0].code[c1[j]], a1);
      if constexpr (kTwo) {
        load_codes(static_cast<const uint8_t*>(t.s2), runs, t.vec & kVecS2, c2);
        const float a2 = t.absmax2[b];
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) s2[j] = __fmul_rn(maps[1].code[c2[j]], a2);
      }
      if constexpr (kSlow) {
        load_codes(q1 + t.n, runs, t.vec & kVecSlow, c3);
        const float a3 = t.absmax1[nb + b];
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) s3[j] = __fmul_rn(maps[0].code[c3[j]], a3);
      }
    } else {
      const auto* f1 = static_cast<const float*>(t.s1);
      load_lane<DType::F32>(f1, runs, t.vec & kVecS1, s1);
      if constexpr (kTwo) load_lane<DType::F32>(static_cast<const float*>(t.s2), runs, t.vec & kVecS2, s2);
      if constexpr (kSlow) load_lane<DType::F32>(f1 + t.n, runs, t.vec & kVecSlow, s3);
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      float u = 0.0f;
      optim::update_element<K, k8bit>(c, scale, gv[j], pv[j], s1[j], s2[j], s3[j], u);
      if (kNorm && runs.in(j)) sum += static_cast<double>(u) * static_cast<double>(u);
    }
    if constexpr (kNorm) continue;
    store_lane<T>(p, runs, t.vec & kVecGP, pv);
    if constexpr (k8bit) {
      auto* q1 = static_cast<uint8_t*>(t.s1);
      uint32_t c1[kPerLane];
      requantize(maps[0], true, s1, runs, t.absmax1 + b, c1);
      store_codes(q1, runs, t.vec & kVecS1, c1);
      if constexpr (kTwo) {
        uint32_t c2[kPerLane];
        requantize(maps[1], false, s2, runs, t.absmax2 + b, c2);
        store_codes(static_cast<uint8_t*>(t.s2), runs, t.vec & kVecS2, c2);
      }
      if constexpr (kSlow) {
        uint32_t c3[kPerLane];
        requantize(maps[0], true, s3, runs, t.absmax1 + nb + b, c3);
        store_codes(q1 + t.n, runs, t.vec & kVecSlow, c3);
      }
    } else {
      auto* f1 = static_cast<float*>(t.s1);
      store_lane<DType::F32>(f1, runs, t.vec & kVecS1, s1);
      if constexpr (kTwo) store_lane<DType::F32>(static_cast<float*>(t.s2), runs, t.vec & kVecS2, s2);
      if constexpr (kSlow) store_lane<DType::F32>(f1 + t.n, runs, t.vec & kVecSlow, s3);
    }
  }
  if constexpr (kNorm) {
    // Warps that got no block never set `current`; the condition is uniform within a warp.
    if (current >= 0) {
      const double total = warp_sum(sum);
      if (lane == 0) atomicAdd(L.t[current].unorm, static_cast<float>(total));
    }
  }
}

__global__ void zero_unorm_kernel(const __grid_constant__ Launch L) {
  if (static_cast<int>(threadIdx.x) < L.count) *L.t[threadIdx.x].unorm = 0.0f;
}

// The launches of one step: parameters grouped by dtype, kMaxTensors per launch.
template <bool k8bit, class Param>
void run(const char* op, const optim::Step& step, const float* lr, const Param* params, size_t count,
         const float* qmap1, const float* qmap2) {
  const Call call(op, params[0].g);
  const bool norm = step.max_unorm > 0.0f;
  bool device_step = lr != nullptr;
  for (size_t i = 0; i < count; ++i) device_step = device_step || params[i].step_count.has_value();
  for (DType dt : {DType::F32, DType::F16, DType::BF16}) {
    std::vector<const Param*> group;
    for (size_t i = 0; i < count; ++i)
      if (params[i].g.dtype == dt) group.push_back(&params[i]);
    for (size_t g0 = 0; g0 < group.size(); g0 += kMaxTensors) {
      Launch L{};
      for (size_t k = g0; k < group.size() && L.count < kMaxTensors; ++k) {
        const Param& q = *group[k];
        DevTensor& t = L.t[L.count++];
        const int64_t n = q.g.numel();
        const uintptr_t gp_align = dt == DType::F32 ? 16 : 8, state_align = k8bit ? 4 : 16, state_size = k8bit ? 1 : 4;
        t.g = q.g.data, t.p = q.p.data, t.s1 = q.state1.data, t.s2 = q.state2 ? q.state2->data : nullptr;
        if constexpr (k8bit) t.absmax1 = q.absmax1.template ptr<float>(), t.absmax2 = q.absmax2 ? q.absmax2->template ptr<float>() : nullptr;
        t.unorm = norm ? q.unorm_vec->template ptr<float>() : nullptr;
        t.step = q.step_count ? q.step_count->template ptr<const float>() : nullptr;
        t.n = n;
        t.first = L.blocks;
        t.param_norm = q.param_norm;
        t.vec = (aligned(q.g.data, gp_align) && aligned(q.p.data, gp_align) ? kVecGP : 0u) |
                (aligned(q.state1.data, state_align) ? kVecS1 : 0u) |
                (q.state2 && aligned(q.state2->data, state_align) ? kVecS2 : 0u) |
                (aligned(static_cast<const char*>(q.state1.data) + n * state_size, state_align) ? kVecSlow : 0u);
        L.blocks += ceil_div(n, kOptimizerBlocksize);
      }
      const auto launch = [&](auto kernel, const char* what) {
        kernel<<<call.grid(L.blocks, kWarps, k8bit ? 8 : 32), kThreads, 0, call.stream()>>>(L, step, lr, qmap1, qmap2);
        call.check_launch(what);
      };
      dispatch_float(dt, [&](auto tt) {
        constexpr DType T = decltype(tt)::value;
        optim::dispatch_kind(step.kind, [&](auto kk) {
          constexpr Optimizer K = decltype(kk)::value;
          if constexpr (optim::clips_update(K)) {
            if (norm) {
              zero_unorm_kernel<<<1, kMaxTensors, 0, call.stream()>>>(L);
              call.check_launch("zero_unorm_kernel");
              if (L.blocks > 0) {
                if (device_step) launch(optimizer_kernel<T, K, k8bit, true, true>, "optimizer_kernel (norm pass)");
                else launch(optimizer_kernel<T, K, k8bit, true, false>, "optimizer_kernel (norm pass)");
              }
            }
          }
          if (L.blocks == 0) return;
          if (device_step) launch(optimizer_kernel<T, K, k8bit, false, true>, "optimizer_kernel");
          else launch(optimizer_kernel<T, K, k8bit, false, false>, "optimizer_kernel");
        });
      });
    }
  }
}

void optimizer_32bit(const optim::Step& step, const float* lr, const OptimizerState32* params, size_t count) {
  run<false>("optimizer_update_32bit", step, lr, params, count, nullptr, nullptr);
}

void optimizer_8bit(const optim::Step& step, const float* lr, const TensorView& qmap1,
                    const std::optional<TensorView>& qmap2, const OptimizerState8bit* params, size_t count) {
  run<true>("optimizer_update_8bit_blockwise", step, lr, params, count, qmap1.ptr<const float>(),
            qmap2 ? qmap2->ptr<const float>() : nullptr);
}

}  // namespace

const OptimBackend* optim_backend() {
  static const OptimBackend b{optimizer_32bit, optimizer_8bit};
  return &b;
}

}  // namespace nybble::cuda
