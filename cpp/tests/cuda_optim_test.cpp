// cuda_optim_test.cpp — the CUDA optimizer steps against the CPU oracle (NYBBLE_CPU_ISA=ref):
// every optimizer, dtype and awkward size (1, 255, 256, 257, 4097, 65537, one past 2^20), with
// NaN/inf/zero gradients, skip_zeros, weight decay, clipping, aligned and misaligned buffers
// (the vector and the scalar paths), on a non-default stream, one parameter at a time and many in
// one call (more than one launch's worth, mixed dtypes, empty parameters), and with the step
// counts and the learning rate read on the device (Note [Device scalars]).
// p, states, codes and absmax must equal the oracle's bit for bit (any NaN matching any NaN).
// With max_unorm the update norm is a sum of fp32 atomics on the GPU (Note [Update norm]):
// unorm_vec then agrees within 1e-4 relative (fp32 summation error over thousands of atomics),
// and p within that much of its step.
// Every test skips when no GPU is visible.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_test_util.hpp"
#include "optim_test_util.hpp"

namespace nybble {
namespace {

using namespace optim_test;
using test::cuda_check;

// Device copies of a host vector, `shift` bytes past a 256-byte aligned allocation.
class DeviceVec {
 public:
  DeviceVec(const void* host, size_t bytes, size_t shift) : bytes_(bytes), shift_(shift) {
    cuda_check(cudaMalloc(&base_, bytes + shift + 1), "cudaMalloc");
    if (bytes) cuda_check(cudaMemcpy(at(), host, bytes, cudaMemcpyHostToDevice), "upload");
  }
  ~DeviceVec() { cudaFree(base_); }
  DeviceVec(const DeviceVec&) = delete;
  DeviceVec& operator=(const DeviceVec&) = delete;
  void* at() const { return static_cast<uint8_t*>(base_) + shift_; }
  void download(void* host) const {
    if (bytes_) cuda_check(cudaMemcpy(host, at(), bytes_, cudaMemcpyDeviceToHost), "download");
  }

 private:
  void* base_ = nullptr;
  size_t bytes_, shift_;
};

// A Param mirrored on the GPU: views for the ops and the results copied back into `host`.
struct DeviceParam {
  Param host;
  std::unique_ptr<DeviceVec> g, p, f1, f2, q1, q2, a1, a2, unorm;
  cudaStream_t stream;

  DeviceParam(const Param& prm, bool misalign, cudaStream_t s) : host(prm), stream(s) {
    const size_t e = misalign ? size_t(dtype_size(prm.dt)) : 0, e4 = misalign ? 4 : 0, e1 = misalign ? 1 : 0;
    g = std::make_unique<DeviceVec>(prm.g.bytes.data(), prm.g.bytes.size(), e);
    p = std::make_unique<DeviceVec>(prm.p.bytes.data(), prm.p.bytes.size(), e);
    f1 = std::make_unique<DeviceVec>(prm.f1.data(), prm.f1.size() * 4, e4);
    f2 = std::make_unique<DeviceVec>(prm.f2.data(), prm.f2.size() * 4, e4);
    q1 = std::make_unique<DeviceVec>(prm.q1.data(), prm.q1.size(), e1);
    q2 = std::make_unique<DeviceVec>(prm.q2.data(), prm.q2.size(), e1);
    a1 = std::make_unique<DeviceVec>(prm.a1.data(), prm.a1.size() * 4, e4);
    a2 = std::make_unique<DeviceVec>(prm.a2.data(), prm.a2.size() * 4, e4);
    unorm = std::make_unique<DeviceVec>(prm.unorm.data(), 4, 0);
  }
  TensorView view(const DeviceVec& d, DType t, int64_t n) const {
    TensorView v(d.at(), t, {n}, Device::CUDA);
    v.stream = stream;
    return v;
  }
  OptimizerState32 view32() const {
    OptimizerState32 s{.g = view(*g, host.dt, host.n), .p = view(*p, host.dt, host.n),
                       .state1 = view(*f1, DType::F32, int64_t(host.f1.size())), .unorm_vec = view(*unorm, DType::F32, 1),
                       .param_norm = host.param_norm};
    if (two_states(host.o)) s.state2 = view(*f2, DType::F32, host.n);
    return s;
  }
  OptimizerState8bit view8() const {
    OptimizerState8bit s{.g = view(*g, host.dt, host.n), .p = view(*p, host.dt, host.n),
                         .state1 = view(*q1, DType::U8, int64_t(host.q1.size())),
                         .absmax1 = view(*a1, DType::F32, int64_t(host.a1.size())), .unorm_vec = view(*unorm, DType::F32, 1),
                         .param_norm = host.param_norm};
    if (two_states(host.o)) {
      s.state2 = view(*q2, DType::U8, host.n);
      s.absmax2 = view(*a2, DType::F32, int64_t(host.a2.size()));
    }
    return s;
  }
  // The device's results, in a Param.
  Param result() const {
    cuda_check(cudaStreamSynchronize(stream), "cudaStreamSynchronize");
    Param r = host;
    p->download(r.p.bytes.data());
    f1->download(r.f1.data());
    f2->download(r.f2.data());
    q1->download(r.q1.data());
    q2->download(r.q2.data());
    a1->download(r.a1.data());
    a2->download(r.a2.data());
    unorm->download(r.unorm.data());
    return r;
  }
};

class CudaOptim : public test::CudaStreamTest {
 protected:
  void run_gpu(const OptimizerConfig& c, const std::vector<const DeviceParam*>& ds, bool eight) const {
    const bool two = two_states(c.optimizer);
    DeviceVec m1(dynamic_map_signed().data(), 1024, 0), m2(dynamic_map_unsigned().data(), 1024, 0);
    TensorView qmap1(m1.at(), DType::F32, {256}, Device::CUDA), qmap2(m2.at(), DType::F32, {256}, Device::CUDA);
    qmap1.stream = qmap2.stream = stream_;
    if (eight) {
      std::vector<OptimizerState8bit> views;
      for (const DeviceParam* d : ds) views.push_back(d->view8());
      if (views.size() == 1)
        optimizer_update_8bit_blockwise(c, qmap1, two ? std::optional(qmap2) : std::nullopt, views[0]);
      else
        optimizer_update_8bit_blockwise_multi(c, qmap1, two ? std::optional(qmap2) : std::nullopt, views);
    } else {
      std::vector<OptimizerState32> views;
      for (const DeviceParam* d : ds) views.push_back(d->view32());
      if (views.size() == 1) optimizer_update_32bit(c, views[0]);
      else optimizer_update_32bit_multi(c, views);
    }
    cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // before the maps are freed
  }

  std::mt19937_64 rng_{test::test_seed()};
};

// The GPU's result against the oracle's: bit for bit, except p and unorm_vec of a clipped step.
::testing::AssertionResult matches(const OptimizerConfig& c, const Param& start, const Param& ref, const Param& gpu) {
  if (!(c.max_unorm > 0.0f)) return same_bits(ref, gpu);
  Param a = gpu;  // the states do not depend on the clipping factor: compare them bit for bit
  a.p = ref.p;
  a.unorm = ref.unorm;
  if (auto r = same_bits(ref, a); !r) return r;
  // A NaN or inf gradient in 32-bit makes the sum NaN or inf on both.
  const bool same_norm = (std::isnan(ref.unorm[0]) && std::isnan(gpu.unorm[0])) || ref.unorm[0] == gpu.unorm[0];
  if (!same_norm && !(std::abs(double(gpu.unorm[0]) - ref.unorm[0]) <= 1e-4 * std::abs(double(ref.unorm[0]))))
    return ::testing::AssertionFailure() << "unorm_vec " << gpu.unorm[0] << " vs " << ref.unorm[0];
  for (int64_t i = 0; i < ref.n; ++i) {
    const double want = ref.p.get(i), got = gpu.p.get(i), step = want - start.p.get(i);
    const double ulp = double(std::nextafter(float(std::abs(want)), INFINITY)) - std::abs(want);
    if ((std::isnan(want) && std::isnan(got)) || got == want) continue;
    if (!(std::abs(got - want) <= 1e-4 * std::abs(step) + 2 * ulp))
      return ::testing::AssertionFailure() << "p[" << i << "]: " << got << " vs " << want << " (step " << step << ")";
  }
  return ::testing::AssertionSuccess();
}

TEST_F(CudaOptim, EveryOptimizerDtypeAndSize) {
  SCOPED_TRACE(test::seed_note());
  int variant = 0;
  for (bool eight : {false, true})
    for (Optimizer o : kAll)
      for (DType dt : test::kFloatTypes)
        for (int64_t n : kSizes) {
          ++variant;
          SCOPED_TRACE(name_of(o, dt, n, eight, variant));
          const OptimizerConfig c = config_for(o, variant);
          const Param start(o, dt, n, eight, rng_, variant % 2 == 0);
          const DeviceParam d(start, variant % 5 == 3, stream_);
          Param ref = start;
          step(c, ref);
          run_gpu(c, {&d}, eight);
          ASSERT_TRUE(matches(c, start, ref, d.result()));
        }
}

TEST_F(CudaOptim, LargeTensor) {
  SCOPED_TRACE(test::seed_note());
  const int64_t n = (int64_t{1} << 20) + 5;
  for (bool eight : {false, true})
    for (Optimizer o : {Optimizer::AdEMAMix, Optimizer::LAMB}) {
      SCOPED_TRACE(std::string(optimizer_name(o)) + (eight ? " 8-bit" : " 32-bit"));
      const OptimizerConfig c = config_for(o, 7);
      const Param start(o, DType::BF16, n, eight, rng_, true);
      const DeviceParam d(start, false, stream_);
      Param ref = start;
      step(c, ref);
      run_gpu(c, {&d}, eight);
      EXPECT_TRUE(matches(c, start, ref, d.result()));
    }
}

// One call over more parameters than one launch takes, of every dtype, empty ones included: each
// parameter's result is the oracle's single-parameter step.
TEST_F(CudaOptim, ManyParametersInOneCall) {
  SCOPED_TRACE(test::seed_note());
  for (bool eight : {false, true})
    for (Optimizer o : {Optimizer::Adam, Optimizer::LARS, Optimizer::AdEMAMix, Optimizer::Lion}) {
      SCOPED_TRACE(std::string(optimizer_name(o)) + (eight ? " 8-bit" : " 32-bit"));
      const OptimizerConfig c = config_for(o, 1);
      std::vector<Param> starts;
      std::vector<std::unique_ptr<DeviceParam>> devs;
      std::vector<const DeviceParam*> ptrs;
      for (int k = 0; k < 100; ++k) {
        const int64_t n = k % 17 == 0 ? 0 : static_cast<int64_t>(rng_() % 3000) + 1;
        starts.emplace_back(o, test::kFloatTypes[k % 3], n, eight, rng_, k % 2 == 0);
      }
      for (int k = 0; k < 100; ++k) {
        devs.push_back(std::make_unique<DeviceParam>(starts[size_t(k)], k % 7 == 3, stream_));
        ptrs.push_back(devs.back().get());
      }
      run_gpu(c, ptrs, eight);
      for (size_t k = 0; k < starts.size(); ++k) {
        Param ref = starts[k];
        step(c, ref);
        ASSERT_TRUE(matches(c, starts[k], ref, devs[k]->result())) << "param " << k << " of " << starts.size();
      }
    }
}

// Device scalars: each parameter's step count and the learning rate read from GPU memory give
// what the oracle gives with those values as the config's step and lr, for counts that differ
// between the parameters of one call (the first step's rule included).
TEST_F(CudaOptim, StepCountsAndLrOnTheDevice) {
  SCOPED_TRACE(test::seed_note());
  const std::vector<float> counts = {1.0f, 7.0f, 1000.0f};
  const float lr = 3e-4f;
  int variant = 0;
  for (bool eight : {false, true})
    for (Optimizer o : kAll) {
      SCOPED_TRACE(std::string(optimizer_name(o)) + (eight ? " 8-bit" : " 32-bit"));
      OptimizerConfig c = config_for(o, ++variant);
      c.max_unorm = 0.0f;  // a clipped step takes host norms; the scalars are tested without it
      DeviceVec lr_dev(&lr, 4, 0);
      c.lr_tensor = TensorView(lr_dev.at(), DType::F32, {1}, Device::CUDA);
      c.lr_tensor->stream = stream_;
      std::vector<Param> starts;
      std::vector<std::unique_ptr<DeviceParam>> devs;
      std::vector<std::unique_ptr<DeviceVec>> count_devs;
      for (size_t k = 0; k < counts.size(); ++k) {
        starts.emplace_back(o, test::kFloatTypes[k % 3], 1000 + 300 * int64_t(k), eight, rng_, true);
        devs.push_back(std::make_unique<DeviceParam>(starts.back(), false, stream_));
        count_devs.push_back(std::make_unique<DeviceVec>(&counts[k], 4, 0));
      }
      const auto count_view = [&](size_t k) {
        TensorView v(count_devs[k]->at(), DType::F32, {1}, Device::CUDA);
        v.stream = stream_;
        return v;
      };
      DeviceVec m1(dynamic_map_signed().data(), 1024, 0), m2(dynamic_map_unsigned().data(), 1024, 0);
      TensorView qmap1(m1.at(), DType::F32, {256}, Device::CUDA), qmap2(m2.at(), DType::F32, {256}, Device::CUDA);
      qmap1.stream = qmap2.stream = stream_;
      const auto qmap2_opt = two_states(o) ? std::optional(qmap2) : std::nullopt;
      if (eight) {
        std::vector<OptimizerState8bit> views;
        for (size_t k = 0; k < devs.size(); ++k) {
          views.push_back(devs[k]->view8());
          views.back().step_count = count_view(k);
        }
        optimizer_update_8bit_blockwise_multi(c, qmap1, qmap2_opt, views);
      } else {
        std::vector<OptimizerState32> views;
        for (size_t k = 0; k < devs.size(); ++k) {
          views.push_back(devs[k]->view32());
          views.back().step_count = count_view(k);
        }
        optimizer_update_32bit_multi(c, views);
      }
      cuda_check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      for (size_t k = 0; k < starts.size(); ++k) {
        OptimizerConfig host = c;
        host.lr_tensor = std::nullopt;
        host.lr = lr;
        host.step = int64_t(counts[k]);
        Param ref = starts[k];
        step(host, ref);
        ASSERT_TRUE(same_bits(ref, devs[k]->result())) << "count " << counts[k];
      }
    }
}

}  // namespace
}  // namespace nybble
