// nybble/optim.hpp — optimizer updates (spec §4.3): one step of Adam/AdamW/LAMB, AdEMAMix,
// SGD-momentum/LARS, RMSprop, Adagrad and Lion over fp32 states or 8-bit blockwise states.
//
// Tensors are caller-owned TensorViews, contiguous, all on one device with one stream; p and the
// states are updated in place. g and p share a float dtype (f32/f16/bf16); p is computed in fp32
// and rounded to its dtype once per step. The math, and where nybble departs from the reference,
// is documented with the oracle (cpu/ref/optim_rules.hpp); in short:
// - Weight decay is decoupled (p * (1 - lr * wd) after the update) for Adam, LAMB and AdEMAMix,
//   decoupled before the update for Lion, and added to the gradient (g + wd * p) for momentum,
//   LARS, RMSprop and Adagrad, as the reference's CUDA kernels do.
// - max_unorm > 0 (LAMB, LARS; also Adam, momentum, RMSprop) clips the update to
//   max_unorm * param_norm, in 32-bit and in 8-bit (the reference has no 8-bit clipping). The
//   step then makes two passes over the data: the first sums the squared update into unorm_vec,
//   the second applies it, scaled.
// - 8-bit states (§4.3 "8-bit blockwise"): blocks of kOptimizerBlocksize elements, state1 (and
//   AdEMAMix's second EMA) coded with a signed map, state2 with an unsigned one; each block's
//   absmax is recomputed after the update. A gradient that is NaN or ±inf zeroes the element's
//   states and leaves its parameter unchanged. AdEMAMix uses the [2, nblocks] absmax layout.
// - skip_zeros: elements whose gradient is exactly zero are left as they are (parameter and
//   states; an 8-bit state keeps its value, requantized with its block's new absmax), in every
//   kernel (the reference ignores the flag in AdEMAMix-32 and in its 8-bit 2-state kernel).
//
// The _multi forms update a list of parameters with the same hyperparameters in one pass (one
// parallel region on the CPU, one launch per dtype and group of parameters on a GPU); each
// parameter's result is exactly what the single-tensor form gives.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include "nybble/tensor_view.hpp"

namespace nybble {

// The reference's optimizer names (str2optimizer): lamb runs the Adam update and lars the
// momentum update, both usually with max_unorm > 0.
enum class Optimizer : uint8_t { Adam, AdEMAMix, Momentum, RMSprop, Adagrad, Lion, LAMB, LARS };

// "adam", "ademamix", "momentum", "rmsprop", "adagrad", "lion", "lamb", "lars".
std::string_view optimizer_name(Optimizer o);
// The inverse; throws nybble::Error (ErrorKind::Value) for any other name.
Optimizer optimizer_from_name(std::string_view name);

// Adam, LAMB and AdEMAMix keep two states (AdEMAMix's state1 holds two EMAs); the others one.
constexpr bool optimizer_has_state2(Optimizer o) {
  return o == Optimizer::Adam || o == Optimizer::LAMB || o == Optimizer::AdEMAMix;
}

// 8-bit optimizer states are quantized in blocks of this many elements (§4.1).
inline constexpr int64_t kOptimizerBlocksize = 256;

// One step's hyperparameters, named as in the reference's ops (§6). The 1-state optimizers read
// beta1 as their coefficient (momentum, RMSprop's alpha) and Lion reads beta1 and beta2.
struct OptimizerConfig {
  Optimizer optimizer = Optimizer::Adam;
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float beta3 = 0.9999f;  // AdEMAMix's slow EMA
  float alpha = 5.0f;     // AdEMAMix's mixing weight
  float eps = 1e-8f;
  float weight_decay = 0.0f;
  int64_t step = 1;  // 1-based count of this step (bias correction; momentum starts from g at 1)
  float lr = 1e-3f;
  float gnorm_scale = 1.0f;  // the gradient is multiplied by this first
  bool skip_zeros = false;
  // > 0: the update u is scaled by min(1, limit / ||u||), limit = max_unorm * param_norm (plus
  // eps for the 1-state optimizers). Adam, LAMB, momentum, LARS and RMSprop only.
  float max_unorm = 0.0f;
  // Note [Device scalars]: f32 [1] on the parameters' device. When given, the step reads its
  // learning rate there, when it runs (a GPU reads it in the kernel: nothing waits for the host),
  // instead of `lr`. With each parameter's step_count, a GPU step is a fixed sequence of launches
  // over fixed addresses that a CUDA graph can capture and replay with new values.
  std::optional<TensorView> lr_tensor = std::nullopt;
};

// One parameter of optimizer_update_32bit: n = p.numel() elements.
struct OptimizerState32 {
  TensorView g;       // f32/f16/bf16, n elements
  TensorView p;       // g's dtype, n elements
  TensorView state1;  // f32, n elements; AdEMAMix: 2n ([2, *p.shape]: fast EMA, then slow EMA)
  std::optional<TensorView> state2 = std::nullopt;     // f32, n elements: Adam, LAMB, AdEMAMix only
  std::optional<TensorView> unorm_vec = std::nullopt;  // f32 [1], required when max_unorm > 0: receives sum(u^2)
  float param_norm = 0.0f;              // ||p||_2 before the step, when max_unorm > 0
  // f32 [1] on p's device: this step's 1-based count, read when the step runs, instead of
  // config.step (torch's capturable step tensor, advanced by the caller; Note [Device scalars]).
  // A CPU step checks that it is >= 1; a GPU step cannot look at it before it runs.
  std::optional<TensorView> step_count = std::nullopt;
};

// One parameter of optimizer_update_8bit_blockwise: n = p.numel() elements, nb = ceil(n / 256).
struct OptimizerState8bit {
  TensorView g;        // f32/f16/bf16, n elements
  TensorView p;        // g's dtype, n elements
  TensorView state1;   // u8, n codes into qmap1; AdEMAMix: 2n ([2, *p.shape])
  TensorView absmax1;  // f32, nb; AdEMAMix: 2 * nb ([2, nb]: row 1 scales the slow EMA)
  std::optional<TensorView> state2 = std::nullopt;   // u8, n codes into qmap2: Adam, LAMB, AdEMAMix only
  std::optional<TensorView> absmax2 = std::nullopt;  // f32, nb: with state2
  std::optional<TensorView> unorm_vec = std::nullopt;
  float param_norm = 0.0f;
  std::optional<TensorView> step_count = std::nullopt;  // as OptimizerState32's
};

void optimizer_update_32bit(const OptimizerConfig& config, const OptimizerState32& param);
void optimizer_update_32bit_multi(const OptimizerConfig& config, const std::vector<OptimizerState32>& params);

// qmap1: f32 [256], ascending, signed (dynamic_map_signed()); qmap2: f32 [256], ascending,
// unsigned (dynamic_map_unsigned()), required with state2. Both on the parameters' device.
void optimizer_update_8bit_blockwise(const OptimizerConfig& config, const TensorView& qmap1,
                                     const std::optional<TensorView>& qmap2, const OptimizerState8bit& param);
void optimizer_update_8bit_blockwise_multi(const OptimizerConfig& config, const TensorView& qmap1,
                                           const std::optional<TensorView>& qmap2,
                                           const std::vector<OptimizerState8bit>& params);

}  // namespace nybble
