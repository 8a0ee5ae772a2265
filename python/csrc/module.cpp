// python/csrc/module.cpp — the nanobind extension nybble._C: turns torch (or DLPack) tensors into
// TensorViews, releases the GIL around every kernel and maps nybble::Error to Python exceptions.
// It computes nothing itself; the torch layer (python/nybble/_ops.py) allocates every output.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <optional>
#include <string>
#include <vector>

#include "nybble/nybble.hpp"

namespace nb = nanobind;
using nybble::TensorView;

namespace {

// A tensor argument: a torch.Tensor, read through its attributes (data_ptr, dtype, shape,
// stride, device: several times cheaper than torch's __dlpack__, which otherwise dominates a
// small call), or any other object nanobind imports as an array (DLPack, buffer protocol).
using Array = nb::handle;
using DLArray = nb::ndarray<nb::ro>;  // any dtype, device and layout; checked in to_view

nybble::DType to_dtype(const nb::dlpack::dtype& t) {
  using Code = nb::dlpack::dtype_code;
  const auto code = static_cast<Code>(t.code);
  if (t.lanes == 1) {
    if (code == Code::Float && t.bits == 32) return nybble::DType::F32;
    if (code == Code::Float && t.bits == 16) return nybble::DType::F16;
    if (code == Code::Bfloat && t.bits == 16) return nybble::DType::BF16;
    if (code == Code::UInt && t.bits == 8) return nybble::DType::U8;
    if (code == Code::Int && t.bits == 8) return nybble::DType::I8;
    if (code == Code::Int && t.bits == 32) return nybble::DType::I32;
    if (code == Code::Int && t.bits == 64) return nybble::DType::I64;
  }
  throw nybble::Error(nybble::ErrorKind::Type, "tensor dtype (DLPack code " + std::to_string(t.code) + ", " +
                                                   std::to_string(t.bits) + " bits) is not supported by nybble");
}

void set_shape(TensorView& v, size_t ndim, auto&& shape_at, auto&& stride_at) {
  if (ndim > static_cast<size_t>(nybble::kMaxDims))
    throw nybble::Error(nybble::ErrorKind::Value, "tensor has " + std::to_string(ndim) +
                                                      " dimensions (nybble supports at most 8)");
  v.ndim = static_cast<int32_t>(ndim);
  for (size_t i = 0; i < ndim; ++i) {
    v.shape[i] = shape_at(i);
    v.strides[i] = stride_at(i);
  }
}

TensorView dlpack_view(const DLArray& a) {
  TensorView v;
  v.data = const_cast<void*>(a.data());
  v.dtype = to_dtype(a.dtype());
  set_shape(v, a.ndim(), [&](size_t i) { return static_cast<int64_t>(a.shape(i)); }, [&](size_t i) { return a.stride(i); });
  const int dev = a.device_type();
  if (dev == nb::device::cpu::value) {
    v.device = nybble::Device::CPU;
  } else if (dev == nb::device::cuda::value || dev == nb::device::cuda_managed::value) {
    v.device = nybble::Device::CUDA;
  } else {
    throw nybble::Error(nybble::ErrorKind::Value, "tensor device (DLPack type " + std::to_string(dev) +
                                                      ") is not supported: nybble runs on cpu and cuda");
  }
  v.device_index = a.device_id();
  return v;
}

// torch's Tensor type and dtypes, looked up once (torch is imported before any tensor arrives).
struct Torch {
  nb::handle tensor_type;
  std::vector<std::pair<nb::handle, nybble::DType>> dtypes;
};

const Torch* torch_types() {
  static const Torch* t = [] {
    auto* r = new Torch;  // lives as long as the process: the handles stay valid while torch is loaded
    nb::module_ torch = nb::module_::import_("torch");
    r->tensor_type = nb::object(torch.attr("Tensor")).release();
    const std::pair<const char*, nybble::DType> names[] = {
        {"float32", nybble::DType::F32}, {"float16", nybble::DType::F16}, {"bfloat16", nybble::DType::BF16},
        {"uint8", nybble::DType::U8},    {"int8", nybble::DType::I8},     {"int32", nybble::DType::I32},
        {"int64", nybble::DType::I64}};
    for (const auto& [name, dt] : names) r->dtypes.emplace_back(nb::object(torch.attr(name)).release(), dt);
    return r;
  }();
  return t;
}

std::string py_str(nb::handle h) { return nb::cast<std::string>(nb::steal<nb::str>(PyObject_Str(h.ptr()))); }

TensorView torch_view(nb::handle h, const Torch& torch) {
  TensorView v;
  v.data = reinterpret_cast<void*>(nb::cast<uintptr_t>(h.attr("data_ptr")()));
  const nb::object dtype = h.attr("dtype");
  bool known = false;
  for (const auto& [d, dt] : torch.dtypes)
    if (dtype.is(d)) v.dtype = dt, known = true;
  if (!known)
    throw nybble::Error(nybble::ErrorKind::Type,
                        "tensor dtype " + py_str(dtype) + " is not supported by nybble");
  const nb::tuple shape = nb::borrow<nb::tuple>(h.attr("shape"));
  const nb::tuple strides = nb::borrow<nb::tuple>(h.attr("stride")());
  set_shape(v, nb::len(shape), [&](size_t i) { return nb::cast<int64_t>(shape[i]); },
            [&](size_t i) { return nb::cast<int64_t>(strides[i]); });
  if (nb::cast<bool>(h.attr("is_cuda"))) {
    v.device = nybble::Device::CUDA;
    v.device_index = nb::cast<int>(h.attr("get_device")());
  } else if (nb::cast<bool>(h.attr("is_cpu"))) {
    v.device = nybble::Device::CPU;
  } else {
    throw nybble::Error(nybble::ErrorKind::Value, "tensor device " + py_str(h.attr("device")) +
                                                      " is not supported: nybble runs on cpu and cuda");
  }
  return v;
}

// A non-owning view of a tensor; the caller keeps the tensor alive for the call. `stream` is the
// cudaStream_t (as an integer) that CUDA kernels on this tensor run on: the torch layer passes
// torch's current stream; 0 for CPU tensors.
TensorView to_view(Array a, uintptr_t stream) {
  const Torch* torch = nb::hasattr(a, "data_ptr") ? torch_types() : nullptr;
  TensorView v = torch && PyObject_IsInstance(a.ptr(), torch->tensor_type.ptr()) == 1 ? torch_view(a, *torch)
                                                                                    : dlpack_view(nb::cast<DLArray>(a));
  v.stream = reinterpret_cast<void*>(stream);
  return v;
}

std::optional<TensorView> to_view(const std::optional<Array>& a, uintptr_t stream) {
  if (!a) return std::nullopt;
  return to_view(*a, stream);
}

nybble::QuantType to_quant_type(const std::string& s) {
  if (s == "nf4") return nybble::QuantType::NF4;
  if (s == "fp4") return nybble::QuantType::FP4;
  throw nybble::Error(nybble::ErrorKind::Value, "quant_type = '" + s + "' is not supported (must be 'nf4' or 'fp4')");
}

// Scales of a 4-bit tensor: absmax alone, or (with nested_absmax) the double-quantized form whose
// offset stays a one-element tensor on the data's device (read there by the kernel: no sync).
nybble::BlockScales to_scales(const Array& absmax, const std::optional<Array>& nested_absmax,
                              const std::optional<Array>& nested_code, const std::optional<Array>& offset,
                              int64_t nested_blocksize, uintptr_t stream) {
  nybble::BlockScales s{to_view(absmax, stream), std::nullopt};
  if (nested_absmax) {
    if (!nested_code || !offset)
      throw nybble::Error(nybble::ErrorKind::Value,
                          "nested_absmax was given without nested_code and offset (all three are needed)");
    s.nested = nybble::NestedAbsmax{to_view(*nested_absmax, stream), to_view(*nested_code, stream), 0.0f,
                                    nested_blocksize, to_view(*offset, stream)};
  }
  return s;
}

std::vector<float> table(const float* p, size_t n) { return std::vector<float>(p, p + n); }

// The code tables as lists of floats (the torch layer turns them into fp32 tensors).
std::vector<float> code_table(const std::string& name) {
  if (name == "nf4") return table(nybble::kNF4Code.data(), 16);
  if (name == "fp4") return table(nybble::kFP4QuantMap.data(), 16);
  if (name == "dynamic_signed") return table(nybble::dynamic_map_signed().data(), 256);
  if (name == "dynamic_unsigned") return table(nybble::dynamic_map_unsigned().data(), 256);
  throw nybble::Error(nybble::ErrorKind::Value, "code_table: name = '" + name +
                                                    "' is unknown (nf4, fp4, dynamic_signed, dynamic_unsigned)");
}

// One optimizer step's hyperparameters, in the order of the optimizer ops' schemas (§6).
nybble::OptimizerConfig optimizer_config(const std::string& name, float max_unorm, float beta1, float beta2,
                                         float beta3, float alpha, float eps, float weight_decay, int64_t step,
                                         float lr, float gnorm_scale, bool skip_zeros) {
  return {.optimizer = nybble::optimizer_from_name(name), .beta1 = beta1, .beta2 = beta2, .beta3 = beta3,
          .alpha = alpha, .eps = eps, .weight_decay = weight_decay, .step = step, .lr = lr,
          .gnorm_scale = gnorm_scale, .skip_zeros = skip_zeros, .max_unorm = max_unorm};
}

// The tensor lists of a multi-tensor optimizer call: one entry per parameter. A list that is
// None (a state the optimizer does not keep) gives std::nullopt for every parameter.
using ArrayList = std::vector<Array>;
using OptionalArrayList = std::optional<ArrayList>;

void check_list_length(const char* name, size_t got, size_t want) {
  if (got != want)
    throw nybble::Error(nybble::ErrorKind::Value, std::string(name) + " has " + std::to_string(got) +
                                                      " entries, g has " + std::to_string(want) +
                                                      " (one per parameter)");
}

std::optional<TensorView> list_item(const OptionalArrayList& list, size_t i, uintptr_t stream) {
  if (!list) return std::nullopt;
  return to_view((*list)[i], stream);
}

void check_lists(size_t n, const ArrayList& p, const ArrayList& state1, const OptionalArrayList& state2,
                 const OptionalArrayList& unorm_vec, const std::vector<float>& param_norm,
                 const OptionalArrayList& step_count) {
  check_list_length("p", p.size(), n);
  check_list_length("state1", state1.size(), n);
  if (state2) check_list_length("state2", state2->size(), n);
  if (unorm_vec) check_list_length("unorm_vec", unorm_vec->size(), n);
  if (step_count) check_list_length("step_count", step_count->size(), n);
  if (!param_norm.empty()) check_list_length("param_norm", param_norm.size(), n);
}

float norm_item(const std::vector<float>& param_norm, size_t i) { return param_norm.empty() ? 0.0f : param_norm[i]; }

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "nybble's C++ kernels (internal: use nybble.functional or torch.ops.nybble)";

  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const nybble::Error& e) {
      PyObject* type = e.kind() == nybble::ErrorKind::Type    ? PyExc_TypeError
                       : e.kind() == nybble::ErrorKind::Value ? PyExc_ValueError
                                                              : PyExc_RuntimeError;
      PyErr_SetString(type, e.what());
    }
  });

  using nb::arg;

  m.def("quantize_4bit", [](const Array& A, const Array& packed, const Array& absmax, int64_t blocksize,
                            const std::string& qt, uintptr_t stream) {
          const auto q = to_quant_type(qt);
          const auto a = to_view(A, stream), p = to_view(packed, stream), s = to_view(absmax, stream);
          nb::gil_scoped_release release;
          nybble::quantize_4bit(a, p, s, blocksize, q);
        }, arg("A"), arg("packed"), arg("absmax"), arg("blocksize"), arg("quant_type"), arg("stream") = 0);

  m.def("dequantize_4bit", [](const Array& packed, const Array& absmax, const std::optional<Array>& nested_absmax,
                              const std::optional<Array>& nested_code, const std::optional<Array>& offset,
                              int64_t nested_blocksize, int64_t blocksize, const std::string& qt, const Array& out, uintptr_t stream) {
          const auto q = to_quant_type(qt);
          const auto s = to_scales(absmax, nested_absmax, nested_code, offset, nested_blocksize, stream);
          const auto p = to_view(packed, stream), o = to_view(out, stream);
          nb::gil_scoped_release release;
          nybble::dequantize_4bit(p, s, blocksize, q, o);
        }, arg("packed"), arg("absmax"), arg("nested_absmax").none(), arg("nested_code").none(), arg("offset").none(),
        arg("nested_blocksize"), arg("blocksize"), arg("quant_type"), arg("out"), arg("stream") = 0);

  m.def("gemm_4bit", [](const Array& A, const Array& packed, const Array& absmax, const std::optional<Array>& nested_absmax,
                        const std::optional<Array>& nested_code, const std::optional<Array>& offset,
                        int64_t nested_blocksize, int64_t blocksize, const std::string& qt, const std::optional<Array>& bias, const Array& out, uintptr_t stream) {
          const auto q = to_quant_type(qt);
          const auto s = to_scales(absmax, nested_absmax, nested_code, offset, nested_blocksize, stream);
          const auto a = to_view(A, stream), p = to_view(packed, stream), o = to_view(out, stream);
          const auto b = to_view(bias, stream);
          nb::gil_scoped_release release;
          nybble::gemm_4bit(a, p, s, blocksize, q, b, o);
        }, arg("A"), arg("packed"), arg("absmax"), arg("nested_absmax").none(), arg("nested_code").none(), arg("offset").none(),
        arg("nested_blocksize"), arg("blocksize"), arg("quant_type"), arg("bias").none(), arg("out"), arg("stream") = 0);

  m.def("gemm_4bit_grad", [](const Array& G, const Array& packed, const Array& absmax, const std::optional<Array>& nested_absmax,
                             const std::optional<Array>& nested_code, const std::optional<Array>& offset,
                             int64_t nested_blocksize, int64_t blocksize, const std::string& qt, const Array& out, uintptr_t stream) {
          const auto q = to_quant_type(qt);
          const auto s = to_scales(absmax, nested_absmax, nested_code, offset, nested_blocksize, stream);
          const auto g = to_view(G, stream), p = to_view(packed, stream), o = to_view(out, stream);
          nb::gil_scoped_release release;
          nybble::gemm_4bit_grad(g, p, s, blocksize, q, o);
        }, arg("G"), arg("packed"), arg("absmax"), arg("nested_absmax").none(), arg("nested_code").none(), arg("offset").none(),
        arg("nested_blocksize"), arg("blocksize"), arg("quant_type"), arg("out"), arg("stream") = 0);

  m.def("quantize_blockwise", [](const Array& A, const Array& code, const Array& out, const Array& absmax, int64_t bs, uintptr_t stream) {
          const auto a = to_view(A, stream), c = to_view(code, stream), o = to_view(out, stream), s = to_view(absmax, stream);
          nb::gil_scoped_release release;
          nybble::quantize_blockwise(a, c, o, s, bs);
        }, arg("A"), arg("code"), arg("out"), arg("absmax"), arg("blocksize"), arg("stream") = 0);

  m.def("dequantize_blockwise", [](const Array& codes, const Array& absmax, const Array& code, int64_t bs, const Array& out, uintptr_t stream) {
          const auto q = to_view(codes, stream), s = to_view(absmax, stream), c = to_view(code, stream), o = to_view(out, stream);
          nb::gil_scoped_release release;
          nybble::dequantize_blockwise(q, s, c, bs, o);
        }, arg("codes"), arg("absmax"), arg("code"), arg("blocksize"), arg("out"), arg("stream") = 0);

  m.def("int8_vectorwise_quant", [](const Array& A, float threshold, const Array& CA, const Array& row_stats,
                                    const std::optional<Array>& outlier_cols, uintptr_t stream) {
          const auto a = to_view(A, stream), c = to_view(CA, stream), s = to_view(row_stats, stream);
          const auto o = to_view(outlier_cols, stream);
          nb::gil_scoped_release release;
          nybble::int8_vectorwise_quant(a, threshold, c, s, o);
        }, arg("A"), arg("threshold"), arg("CA"), arg("row_stats"), arg("outlier_cols").none(), arg("stream") = 0);

  m.def("int8_vectorwise_dequant", [](const Array& CA, const Array& stats, const Array& out, uintptr_t stream) {
          const auto c = to_view(CA, stream), s = to_view(stats, stream), o = to_view(out, stream);
          nb::gil_scoped_release release;
          nybble::int8_vectorwise_dequant(c, s, o);
        }, arg("CA"), arg("stats"), arg("out"), arg("stream") = 0);

  m.def("int8_linear_matmul", [](const Array& A, const Array& B, const Array& out, uintptr_t stream) {
          const auto a = to_view(A, stream), b = to_view(B, stream), o = to_view(out, stream);
          nb::gil_scoped_release release;
          nybble::int8_linear_matmul(a, b, o);
        }, arg("A"), arg("B"), arg("out"), arg("stream") = 0);

  m.def("int8_mm_dequant", [](const Array& acc, const Array& row_stats, const Array& col_stats,
                              const std::optional<Array>& bias, const Array& out, uintptr_t stream) {
          const auto a = to_view(acc, stream), r = to_view(row_stats, stream), c = to_view(col_stats, stream), o = to_view(out, stream);
          const auto b = to_view(bias, stream);
          nb::gil_scoped_release release;
          nybble::int8_mm_dequant(a, r, c, b, o);
        }, arg("acc"), arg("row_stats"), arg("col_stats"), arg("bias").none(), arg("out"), arg("stream") = 0);

  // Optimizer steps (nybble/optim.hpp), in place. The single forms take the reference's op
  // arguments; the _multi forms take one list entry per parameter (param_norm: empty, or one per
  // parameter when max_unorm > 0) and update them all in one call.
  m.def("optimizer_update_32bit", [](const std::string& name, const Array& g, const Array& p, const Array& state1,
                                     const std::optional<Array>& state2, const std::optional<Array>& unorm_vec,
                                     float max_unorm, float param_norm, float beta1, float beta2, float beta3,
                                     float alpha, float eps, float weight_decay, int64_t step, float lr,
                                     float gnorm_scale, bool skip_zeros, uintptr_t stream) {
          const auto c = optimizer_config(name, max_unorm, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                                          gnorm_scale, skip_zeros);
          const nybble::OptimizerState32 t{to_view(g, stream), to_view(p, stream), to_view(state1, stream),
                                           to_view(state2, stream), to_view(unorm_vec, stream), param_norm};
          nb::gil_scoped_release release;
          nybble::optimizer_update_32bit(c, t);
        }, arg("optimizer_name"), arg("g"), arg("p"), arg("state1"), arg("state2").none(), arg("unorm_vec").none(),
        arg("max_unorm"), arg("param_norm"), arg("beta1"), arg("beta2"), arg("beta3"), arg("alpha"), arg("eps"),
        arg("weight_decay"), arg("step"), arg("lr"), arg("gnorm_scale"), arg("skip_zeros"), arg("stream") = 0);

  m.def("optimizer_update_32bit_multi", [](const std::string& name, const ArrayList& g, const ArrayList& p,
                                           const ArrayList& state1, const OptionalArrayList& state2,
                                           const OptionalArrayList& unorm_vec, const std::vector<float>& param_norm,
                                           float max_unorm, float beta1, float beta2, float beta3, float alpha,
                                           float eps, float weight_decay, int64_t step, float lr, float gnorm_scale,
                                           bool skip_zeros, const OptionalArrayList& step_count,
                                           const std::optional<Array>& lr_tensor, uintptr_t stream) {
          auto c = optimizer_config(name, max_unorm, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                                    gnorm_scale, skip_zeros);
          c.lr_tensor = to_view(lr_tensor, stream);
          check_lists(g.size(), p, state1, state2, unorm_vec, param_norm, step_count);
          std::vector<nybble::OptimizerState32> params;
          for (size_t i = 0; i < g.size(); ++i)
            params.push_back({to_view(g[i], stream), to_view(p[i], stream), to_view(state1[i], stream),
                              list_item(state2, i, stream), list_item(unorm_vec, i, stream), norm_item(param_norm, i),
                              list_item(step_count, i, stream)});
          nb::gil_scoped_release release;
          nybble::optimizer_update_32bit_multi(c, params);
        }, arg("optimizer_name"), arg("g"), arg("p"), arg("state1"), arg("state2").none(), arg("unorm_vec").none(),
        arg("param_norm"), arg("max_unorm"), arg("beta1"), arg("beta2"), arg("beta3"), arg("alpha"), arg("eps"),
        arg("weight_decay"), arg("step"), arg("lr"), arg("gnorm_scale"), arg("skip_zeros"),
        arg("step_count").none() = nb::none(), arg("lr_tensor").none() = nb::none(), arg("stream") = 0);

  m.def("optimizer_update_8bit_blockwise", [](const std::string& name, const Array& g, const Array& p,
                                              const Array& state1, const std::optional<Array>& state2, float beta1,
                                              float beta2, float beta3, float alpha, float eps, int64_t step, float lr,
                                              const Array& qmap1, const std::optional<Array>& qmap2,
                                              const Array& absmax1, const std::optional<Array>& absmax2,
                                              float weight_decay, float gnorm_scale, bool skip_zeros, uintptr_t stream) {
          const auto c = optimizer_config(name, 0.0f, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                                          gnorm_scale, skip_zeros);
          const auto q1 = to_view(qmap1, stream);
          const auto q2 = to_view(qmap2, stream);
          const nybble::OptimizerState8bit t{to_view(g, stream), to_view(p, stream), to_view(state1, stream),
                                             to_view(absmax1, stream), to_view(state2, stream), to_view(absmax2, stream)};
          nb::gil_scoped_release release;
          nybble::optimizer_update_8bit_blockwise(c, q1, q2, t);
        }, arg("optimizer_name"), arg("g"), arg("p"), arg("state1"), arg("state2").none(), arg("beta1"), arg("beta2"),
        arg("beta3"), arg("alpha"), arg("eps"), arg("step"), arg("lr"), arg("qmap1"), arg("qmap2").none(),
        arg("absmax1"), arg("absmax2").none(), arg("weight_decay"), arg("gnorm_scale"), arg("skip_zeros"),
        arg("stream") = 0);

  m.def("optimizer_update_8bit_blockwise_multi", [](const std::string& name, const ArrayList& g, const ArrayList& p,
                                                    const ArrayList& state1, const OptionalArrayList& state2,
                                                    float beta1, float beta2, float beta3, float alpha, float eps,
                                                    int64_t step, float lr, const Array& qmap1,
                                                    const std::optional<Array>& qmap2, const ArrayList& absmax1,
                                                    const OptionalArrayList& absmax2, float weight_decay,
                                                    float gnorm_scale, bool skip_zeros,
                                                    const OptionalArrayList& unorm_vec,
                                                    const std::vector<float>& param_norm, float max_unorm,
                                                    const OptionalArrayList& step_count,
                                                    const std::optional<Array>& lr_tensor, uintptr_t stream) {
          auto c = optimizer_config(name, max_unorm, beta1, beta2, beta3, alpha, eps, weight_decay, step, lr,
                                    gnorm_scale, skip_zeros);
          c.lr_tensor = to_view(lr_tensor, stream);
          check_lists(g.size(), p, state1, state2, unorm_vec, param_norm, step_count);
          check_list_length("absmax1", absmax1.size(), g.size());
          if (absmax2) check_list_length("absmax2", absmax2->size(), g.size());
          const auto q1 = to_view(qmap1, stream);
          const auto q2 = to_view(qmap2, stream);
          std::vector<nybble::OptimizerState8bit> params;
          for (size_t i = 0; i < g.size(); ++i)
            params.push_back({to_view(g[i], stream), to_view(p[i], stream), to_view(state1[i], stream),
                              to_view(absmax1[i], stream), list_item(state2, i, stream), list_item(absmax2, i, stream),
                              list_item(unorm_vec, i, stream), norm_item(param_norm, i), list_item(step_count, i, stream)});
          nb::gil_scoped_release release;
          nybble::optimizer_update_8bit_blockwise_multi(c, q1, q2, params);
        }, arg("optimizer_name"), arg("g"), arg("p"), arg("state1"), arg("state2").none(), arg("beta1"), arg("beta2"),
        arg("beta3"), arg("alpha"), arg("eps"), arg("step"), arg("lr"), arg("qmap1"), arg("qmap2").none(),
        arg("absmax1"), arg("absmax2").none(), arg("weight_decay"), arg("gnorm_scale"), arg("skip_zeros"),
        arg("unorm_vec").none(), arg("param_norm"), arg("max_unorm"), arg("step_count").none() = nb::none(),
        arg("lr_tensor").none() = nb::none(), arg("stream") = 0);

  // Paged buffers: zero-filled managed memory as a 1-D uint8 CUDA tensor of `device` that frees
  // the memory when torch releases the tensor; the torch layer views it as the dtype it needs.
  m.def("managed_empty", [](int64_t nbytes, int device) {
          void* p = nybble::managed_alloc(nbytes, device);
          nb::capsule owner(p, [](void* q) noexcept { nybble::managed_free(q); });
          const size_t shape[1] = {static_cast<size_t>(nbytes)};
          return nb::ndarray<nb::pytorch, uint8_t, nb::ndim<1>>(p, 1, shape, owner, nullptr, nb::dtype<uint8_t>(),
                                                                 nb::device::cuda::value, device);
        }, arg("nbytes"), arg("device"));
  m.def("managed_prefetch", [](const Array& t, int device, uintptr_t stream) {
          const auto v = to_view(t, stream);
          nb::gil_scoped_release release;
          nybble::managed_prefetch(v.data, v.nbytes(), device, v.stream);
        }, arg("tensor"), arg("device"), arg("stream") = 0);
  m.def("code_table", &code_table, arg("name"));
  m.def("set_num_threads", &nybble::set_num_threads, arg("n"));
  m.def("get_num_threads", &nybble::get_num_threads);
  m.def("cpu_isa", &nybble::cpu_isa);
  m.def("set_cpu_isa", &nybble::set_cpu_isa, arg("isa"));
  m.def("cpu_features", &nybble::cpu_features);
  m.def("version", &nybble::version);
  m.def("cuda_built", &nybble::cuda_built);
  m.def("cuda_device_count", &nybble::cuda_device_count);
}
