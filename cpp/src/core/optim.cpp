// core/optim.cpp — the optimizer entry points (nybble/optim.hpp): validate every parameter, derive
// the step's scalars once (optim::Step), then hand GPU parameters to the CUDA launchers
// (cuda/backend.hpp OptimBackend) or run the CPU kernel set over the blocks of all parameters in
// one parallel region (two with max_unorm: Note [Update norm] in cpu/ref/optim_rules.hpp).
#include "nybble/optim.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <string>
#include <vector>

#include "core/dispatch.hpp"
#include "core/thread_pool.hpp"
#include "core/validate.hpp"
#include "cpu/ref/optim_rules.hpp"

namespace nybble {
namespace {

using core::backend_for;
using core::check_dtype;
using core::check_float;
using core::check_numel;
using core::check_tensor;
using core::describe;
using core::fail;

constexpr std::array<std::string_view, 8> kNames = {"adam", "ademamix", "momentum", "rmsprop",
                                                    "adagrad", "lion", "lamb", "lars"};
constexpr int64_t kBs = kOptimizerBlocksize;
// Blocks per chunk of the thread pool: enough elements that scheduling costs nothing.
constexpr int64_t kGrainBlocks = (int64_t{1} << 15) / kBs;

const TensorView* opt(const std::optional<TensorView>& t) { return t ? &*t : nullptr; }

std::string fmt(float v) { return std::to_string(v); }

// A device scalar (Note [Device scalars]): f32, one element.
void check_scalar(const char* op, const char* arg, const std::optional<TensorView>& t, const char* meaning) {
  if (!t) return;
  check_tensor(op, arg, *t);
  check_dtype(op, arg, *t, {DType::F32});
  check_numel(op, arg, *t, 1, meaning);
}

void check_config(const char* op, const OptimizerConfig& c) {
  check_scalar(op, "lr_tensor", c.lr_tensor, "the learning rate");
  if (static_cast<size_t>(c.optimizer) >= kNames.size())
    fail(ErrorKind::Value, op, "optimizer = " + std::to_string(static_cast<int>(c.optimizer)), "is not an Optimizer");
  if (c.step < 1) fail(ErrorKind::Value, op, "step = " + std::to_string(c.step), "must be >= 1 (steps count from 1)");
  if (!(c.max_unorm >= 0.0f) || std::isinf(c.max_unorm))
    fail(ErrorKind::Value, op, "max_unorm = " + fmt(c.max_unorm), "must be finite and >= 0 (0 disables clipping)");
  if (c.max_unorm > 0.0f && !optim::clips_update(optim::kernel_kind(c.optimizer)))
    fail(ErrorKind::Value, op, "max_unorm = " + fmt(c.max_unorm),
         "is not supported for " + std::string(optimizer_name(c.optimizer)) +
             " (update-norm clipping applies to adam, lamb, momentum, lars and rmsprop; use 0)");
}

optim::Step make_step(const OptimizerConfig& c) {
  optim::Step s{};
  s.kind = optim::kernel_kind(c.optimizer);
  s.beta1 = c.beta1, s.beta2 = c.beta2, s.beta3 = c.beta3, s.alpha = c.alpha, s.eps = c.eps;
  s.gnorm_scale = c.gnorm_scale, s.weight_decay = c.weight_decay;
  s.one_minus_beta1 = 1.0f - c.beta1;
  s.one_minus_beta2 = 1.0f - c.beta2;
  s.one_minus_beta3 = 1.0f - c.beta3;
  s.skip_zeros = c.skip_zeros;
  s.max_unorm = c.max_unorm;
  return optim::at_step(s, static_cast<double>(c.step), c.lr);
}

const float* lr_device(const OptimizerConfig& c) { return c.lr_tensor ? c.lr_tensor->ptr<const float>() : nullptr; }

// The parameter's name in messages: "optimizer_update_32bit" or "..._multi (params[3])".
std::string param_op(const char* op, size_t index, bool multi) {
  return multi ? std::string(op) + " (params[" + std::to_string(index) + "])" : std::string(op);
}

// g and p: one float dtype, one element count n (returned).
int64_t check_grad_param(const char* op, const TensorView& g, const TensorView& p) {
  check_tensor(op, "g", g);
  check_float(op, "g", g);
  check_tensor(op, "p", p);
  check_dtype(op, "p", p, {g.dtype});
  check_numel(op, "p", p, g.numel(), "one per element of g");
  return g.numel();
}

// A state that the optimizer has (`has`) must be given, one that it lacks must not be.
void check_presence(const char* op, const OptimizerConfig& c, const char* arg, const TensorView* t, bool has) {
  if (has && t == nullptr)
    fail(ErrorKind::Value, op, std::string(arg) + " = None", "must be given for " + std::string(optimizer_name(c.optimizer)));
  if (!has && t != nullptr)
    fail(ErrorKind::Value, op, std::string(arg) + " = " + describe(*t),
         "must not be given for " + std::string(optimizer_name(c.optimizer)) + " (it keeps one state)");
}

void check_unorm(const char* op, const OptimizerConfig& c, const std::optional<TensorView>& unorm_vec, float param_norm) {
  if (!(c.max_unorm > 0.0f)) return;  // unorm_vec and param_norm are not read
  if (!unorm_vec) fail(ErrorKind::Value, op, "unorm_vec = None", "must be given when max_unorm = " + fmt(c.max_unorm) + " > 0");
  check_tensor(op, "unorm_vec", *unorm_vec);
  check_dtype(op, "unorm_vec", *unorm_vec, {DType::F32});
  check_numel(op, "unorm_vec", *unorm_vec, 1, "the sum of the squared update");
  if (!(param_norm >= 0.0f) || std::isinf(param_norm))
    fail(ErrorKind::Value, op, "param_norm = " + fmt(param_norm), "must be finite and >= 0 when max_unorm > 0");
}

void check_code_map(const char* op, const char* arg, const TensorView& t) {
  check_tensor(op, arg, t);
  check_dtype(op, arg, t, {DType::F32});
  check_numel(op, arg, t, 256, "an 8-bit code map");
}

const cuda::Backend* check_param32(const char* op, const OptimizerConfig& c, const OptimizerState32& t) {
  const int64_t n = check_grad_param(op, t.g, t.p);
  const bool ademamix = c.optimizer == Optimizer::AdEMAMix;
  check_tensor(op, "state1", t.state1);
  check_dtype(op, "state1", t.state1, {DType::F32});
  check_numel(op, "state1", t.state1, ademamix ? 2 * n : n, ademamix ? "two EMAs per element of p" : "one per element of p");
  check_presence(op, c, "state2", opt(t.state2), optimizer_has_state2(c.optimizer));
  if (t.state2) {
    check_tensor(op, "state2", *t.state2);
    check_dtype(op, "state2", *t.state2, {DType::F32});
    check_numel(op, "state2", *t.state2, n, "one per element of p");
  }
  check_unorm(op, c, t.unorm_vec, t.param_norm);
  check_scalar(op, "step_count", t.step_count, "the step's count");
  const TensorView* unorm = c.max_unorm > 0.0f ? opt(t.unorm_vec) : nullptr;
  return backend_for(op, {{"g", &t.g}, {"p", &t.p}, {"state1", &t.state1}, {"state2", opt(t.state2)}, {"unorm_vec", unorm},
                          {"step_count", opt(t.step_count)}, {"lr_tensor", opt(c.lr_tensor)}});
}

const cuda::Backend* check_param8(const char* op, const OptimizerConfig& c, const TensorView& qmap1,
                                  const std::optional<TensorView>& qmap2, const OptimizerState8bit& t) {
  const int64_t n = check_grad_param(op, t.g, t.p), nb = num_blocks(n, kBs);
  const bool ademamix = c.optimizer == Optimizer::AdEMAMix, two = optimizer_has_state2(c.optimizer);
  check_tensor(op, "state1", t.state1);
  check_dtype(op, "state1", t.state1, {DType::U8});
  check_numel(op, "state1", t.state1, ademamix ? 2 * n : n, ademamix ? "two EMA codes per element of p" : "one code per element of p");
  check_tensor(op, "absmax1", t.absmax1);
  check_dtype(op, "absmax1", t.absmax1, {DType::F32});
  check_numel(op, "absmax1", t.absmax1, ademamix ? 2 * nb : nb,
              ademamix ? "[2, ceil(n / 256)]: one per block of 256 for each EMA" : "one per block of 256 elements");
  check_presence(op, c, "state2", opt(t.state2), two);
  check_presence(op, c, "absmax2", opt(t.absmax2), two);
  if (two) {
    check_tensor(op, "state2", *t.state2);
    check_dtype(op, "state2", *t.state2, {DType::U8});
    check_numel(op, "state2", *t.state2, n, "one code per element of p");
    check_tensor(op, "absmax2", *t.absmax2);
    check_dtype(op, "absmax2", *t.absmax2, {DType::F32});
    check_numel(op, "absmax2", *t.absmax2, nb, "one per block of 256 elements");
  }
  check_unorm(op, c, t.unorm_vec, t.param_norm);
  check_scalar(op, "step_count", t.step_count, "the step's count");
  const TensorView* unorm = c.max_unorm > 0.0f ? opt(t.unorm_vec) : nullptr;
  return backend_for(op, {{"g", &t.g}, {"p", &t.p}, {"state1", &t.state1}, {"absmax1", &t.absmax1},
                          {"state2", opt(t.state2)}, {"absmax2", opt(t.absmax2)}, {"unorm_vec", unorm},
                          {"qmap1", &qmap1}, {"qmap2", opt(qmap2)}, {"step_count", opt(t.step_count)},
                          {"lr_tensor", opt(c.lr_tensor)}});
}

// All parameters of a multi call on one device and stream: checks params[i] against params[0]
// and returns the backend they share.
template <class Param, class Check>
const cuda::Backend* check_params(const char* op, const std::vector<Param>& params, Check&& check) {
  const cuda::Backend* cu = nullptr;
  for (size_t i = 0; i < params.size(); ++i) {
    const std::string pop = param_op(op, i, std::string_view(op).ends_with("_multi"));
    cu = check(pop.c_str(), params[i]);
    backend_for(pop.c_str(), {{"params[0].g", &params[0].g}, {"g", &params[i].g}});
  }
  return cu;
}

// The CPU run: kernel(steps[i], args[i], unorm, b0, b1) over the blocks of every parameter, first
// the norm pass when clipping (unorm_out[i] gets the sum, args[i].update_scale the factor).
template <class Args, class Kernel>
void run_cpu(const std::vector<optim::Step>& steps, std::vector<Args>& args, const std::vector<float*>& unorm_out,
             const std::vector<float>& param_norm, Kernel kernel) {
  std::vector<int64_t> first(args.size() + 1, 0);  // block offsets of the parameters
  for (size_t i = 0; i < args.size(); ++i) first[i + 1] = first[i] + num_blocks(args[i].n, kBs);
  const int64_t total = first.back();
  // Calls piece(i, b0, b1) for the blocks [B0, B1) of the concatenation, parameter by parameter.
  const auto for_each_piece = [&](int64_t B0, int64_t B1, auto&& piece) {
    auto i = static_cast<size_t>(std::upper_bound(first.begin(), first.end(), B0) - first.begin() - 1);
    for (; B0 < B1; ++i) {
      const int64_t end = std::min(B1, first[i + 1]);
      if (end > B0) piece(i, B0 - first[i], end - first[i]);
      B0 = std::max(B0, end);
    }
  };
  if (steps[0].max_unorm > 0.0f) {
    std::vector<double> sums(static_cast<size_t>(total));
    core::parallel_for(total, kGrainBlocks, [&](int64_t B0, int64_t B1) {
      for_each_piece(B0, B1, [&](size_t i, int64_t b0, int64_t b1) {
        kernel(steps[i], args[i], sums.data() + first[i] + b0, b0, b1);
      });
    });
    for (size_t i = 0; i < args.size(); ++i) {
      double sum = 0.0;
      for (int64_t b = first[i]; b < first[i + 1]; ++b) sum += sums[static_cast<size_t>(b)];
      *unorm_out[i] = static_cast<float>(sum);
      args[i].update_scale = optim::trust_scale(steps[i], *unorm_out[i], param_norm[i]);
    }
  }
  core::parallel_for(total, kGrainBlocks, [&](int64_t B0, int64_t B1) {
    for_each_piece(B0, B1, [&](size_t i, int64_t b0, int64_t b1) { kernel(steps[i], args[i], nullptr, b0, b1); });
  });
}

// The CPU's Step of every parameter: s, or at the counts and learning rate of the device scalars
// (host memory here, read now).
template <class Param>
std::vector<optim::Step> cpu_steps(const char* op, const OptimizerConfig& c, const optim::Step& s,
                                   const std::vector<Param>& params) {
  const float lr = c.lr_tensor ? *c.lr_tensor->template ptr<const float>() : c.lr;
  std::vector<optim::Step> steps;
  for (size_t i = 0; i < params.size(); ++i) {
    if (!params[i].step_count) {
      steps.push_back(c.lr_tensor ? optim::at_step(s, s.t, lr) : s);
      continue;
    }
    const float t = *params[i].step_count->template ptr<const float>();
    if (!(t >= 1.0f) || std::isinf(t) || t != std::floor(t))
      fail(ErrorKind::Value, param_op(op, i, std::string_view(op).ends_with("_multi")).c_str(),
           "step_count = " + fmt(t), "must be a whole number >= 1 (steps count from 1)");
    steps.push_back(optim::at_step(s, t, lr));
  }
  return steps;
}

template <class Param>
void unorm_targets(const OptimizerConfig& c, const std::vector<Param>& params, std::vector<float*>& out,
                   std::vector<float>& norms) {
  for (const Param& t : params) {
    out.push_back(c.max_unorm > 0.0f ? t.unorm_vec->template ptr<float>() : nullptr);
    norms.push_back(t.param_norm);
  }
}

void update_32bit(const char* op, const OptimizerConfig& c, const std::vector<OptimizerState32>& params) {
  check_config(op, c);
  const cuda::Backend* cu = check_params(op, params, [&](const char* pop, const OptimizerState32& t) {
    return check_param32(pop, c, t);
  });
  if (params.empty()) return;
  const optim::Step s = make_step(c);
  if (cu != nullptr) return cuda::optim_backend()->optimizer_32bit(s, lr_device(c), params.data(), params.size());
  const std::vector<optim::Step> steps = cpu_steps(op, c, s, params);
  std::vector<cpu::Optim32Args> args;
  for (const auto& t : params)
    args.push_back({t.g.dtype, t.g.numel(), t.g.data, t.p.data, t.state1.ptr<float>(),
                    t.state2 ? t.state2->ptr<float>() : nullptr, 1.0f});
  std::vector<float*> unorm;
  std::vector<float> norms;
  unorm_targets(c, params, unorm, norms);
  run_cpu(steps, args, unorm, norms, core::cpu_kernels().optimizer_32bit);
}

void update_8bit(const char* op, const OptimizerConfig& c, const TensorView& qmap1, const std::optional<TensorView>& qmap2,
                 const std::vector<OptimizerState8bit>& params) {
  check_config(op, c);
  check_code_map(op, "qmap1", qmap1);
  check_presence(op, c, "qmap2", opt(qmap2), optimizer_has_state2(c.optimizer));
  if (qmap2) check_code_map(op, "qmap2", *qmap2);
  const cuda::Backend* cu = check_params(op, params, [&](const char* pop, const OptimizerState8bit& t) {
    return check_param8(pop, c, qmap1, qmap2, t);
  });
  if (params.empty()) return;
  const optim::Step s = make_step(c);
  if (cu != nullptr) return cuda::optim_backend()->optimizer_8bit(s, lr_device(c), qmap1, qmap2, params.data(), params.size());
  const std::vector<optim::Step> steps = cpu_steps(op, c, s, params);
  std::vector<cpu::Optim8Args> args;
  for (const auto& t : params)
    args.push_back({t.g.dtype, t.g.numel(), t.g.data, t.p.data, t.state1.ptr<uint8_t>(),
                    t.state2 ? t.state2->ptr<uint8_t>() : nullptr, t.absmax1.ptr<float>(),
                    t.absmax2 ? t.absmax2->ptr<float>() : nullptr, qmap1.ptr<const float>(),
                    qmap2 ? qmap2->ptr<const float>() : nullptr, 1.0f});
  std::vector<float*> unorm;
  std::vector<float> norms;
  unorm_targets(c, params, unorm, norms);
  run_cpu(steps, args, unorm, norms, core::cpu_kernels().optimizer_8bit);
}

}  // namespace

std::string_view optimizer_name(Optimizer o) {
  const auto i = static_cast<size_t>(o);
  return i < kNames.size() ? kNames[i] : "?";
}

Optimizer optimizer_from_name(std::string_view name) {
  for (size_t i = 0; i < kNames.size(); ++i)
    if (kNames[i] == name) return static_cast<Optimizer>(i);
  throw Error(ErrorKind::Value, "optimizer name = '" + std::string(name) +
                                    "' is unknown (must be adam, ademamix, momentum, rmsprop, adagrad, lion, lamb or lars)");
}

void optimizer_update_32bit(const OptimizerConfig& config, const OptimizerState32& param) {
  update_32bit("optimizer_update_32bit", config, {param});
}

void optimizer_update_32bit_multi(const OptimizerConfig& config, const std::vector<OptimizerState32>& params) {
  update_32bit("optimizer_update_32bit_multi", config, params);
}

void optimizer_update_8bit_blockwise(const OptimizerConfig& config, const TensorView& qmap1,
                                     const std::optional<TensorView>& qmap2, const OptimizerState8bit& param) {
  update_8bit("optimizer_update_8bit_blockwise", config, qmap1, qmap2, {param});
}

void optimizer_update_8bit_blockwise_multi(const OptimizerConfig& config, const TensorView& qmap1,
                                           const std::optional<TensorView>& qmap2,
                                           const std::vector<OptimizerState8bit>& params) {
  update_8bit("optimizer_update_8bit_blockwise_multi", config, qmap1, qmap2, params);
}

}  // namespace nybble
