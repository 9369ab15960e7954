#include "layers/basic.h"

#include <cmath>

#include "autograd/functions/elementwise.h"
#include "autograd/functions/embedding.h"
#include "autograd/functions/layout.h"
#include "autograd/functions/matmul.h"

namespace coil::layers {

Linear::Linear(int64_t in, int64_t out, bool has_bias, Generator& gen, LinearInit init,
               DType param_dtype)
    : in_features(in), out_features(out) {
  COIL_CHECK(in > 0 && out > 0, "Linear: sizes must be positive, got in={} out={}", in, out);
  Tensor w = init.std > 0 ? init_normal({out, in}, init.std * init.scale, gen, param_dtype)
                          : init_uniform({out, in}, init.scale / std::sqrt(double(in)), gen,
                                         param_dtype);
  weight = register_parameter("weight", w);
  if (has_bias) bias = register_parameter("bias", Tensor::zeros({out}, param_dtype), true);
}

Variable Linear::forward(const Variable& x) const {
  DType cd = compute_dtype();
  return autograd::linear(to_compute(x), weight->compute(cd), bias ? bias->compute(cd) : Variable());
}

Variable Linear::forward_no_bias(const Variable& x) const {
  return autograd::linear(to_compute(x), weight->compute(compute_dtype()));
}

std::vector<Variable> Linear::forward_split(const Variable& x, const std::vector<int64_t>& sizes) const {
  DType cd = compute_dtype();
  return autograd::linear_split(to_compute(x), weight->compute(cd), bias ? bias->compute(cd) : Variable(), sizes);
}

Embedding::Embedding(int64_t num, int64_t dim, Generator& gen, double std, DType param_dtype)
    : num(num), dim(dim) {
  COIL_CHECK(num > 0 && dim > 0, "Embedding: sizes must be positive, got {} x {}", num, dim);
  weight = register_parameter("weight", init_normal({num, dim}, std, gen, param_dtype));
}

Variable Embedding::forward(const Tensor& ids) const { return autograd::embedding(weight->var, ids); }

Norm::Norm(NormKind kind, int64_t dim, double eps, DType param_dtype)
    : is_layer_norm(kind == NormKind::layernorm), dim(dim), eps(eps) {
  weight = register_parameter("weight", Tensor::ones({dim}, param_dtype), true);
  if (is_layer_norm) bias = register_parameter("bias", Tensor::zeros({dim}, param_dtype), true);
}

// Norm weights go to the op in x's dtype, except on the GPU, where the kernels take the fp32
// master directly (no cast, and the reference's precision: fp32 norm weights under bf16).
Variable Norm::w(const Variable& x) const {
  if (x.device().is_cuda() && weight->var.dtype() == DType::f32) return weight->var;
  return weight->compute(x.dtype());
}
Variable Norm::b(const Variable& x) const {
  if (!bias) return Variable();
  if (x.device().is_cuda() && bias->var.dtype() == DType::f32) return bias->var;
  return bias->compute(x.dtype());
}

Variable Norm::forward(const Variable& x) const {
  return is_layer_norm ? autograd::layer_norm(x, w(x), b(x), eps) : autograd::rms_norm(x, w(x), eps);
}

autograd::NormResidual Norm::forward_residual(const Variable& x, const Variable& residual) const {
  return is_layer_norm ? autograd::add_layer_norm(x, residual, w(x), b(x), eps)
                       : autograd::add_rms_norm(x, residual, w(x), eps);
}

MLP::MLP(const ModelConfig& cfg, Generator& gen, LinearInit fc1_init, LinearInit fc2_init,
         DType param_dtype)
    : swiglu(cfg.mlp == MlpKind::swiglu), hidden(cfg.mlp_hidden_size()) {
  COIL_CHECK(cfg.mlp != MlpKind::none, "MLP: model.mlp is none (a block without an MLP builds none)");
  fc1 = register_module("fc1", std::make_shared<Linear>(cfg.d_model, swiglu ? 2 * hidden : hidden,
                                                        cfg.bias, gen, fc1_init, param_dtype));
  fc2 = register_module("fc2",
                        std::make_shared<Linear>(hidden, cfg.d_model, cfg.bias, gen, fc2_init, param_dtype));
}

Variable MLP::forward(const Variable& x) const {
  if (swiglu) return fc2->forward(autograd::swiglu(fc1->forward(x)));
  DType cd = compute_dtype();
  auto bias_of = [cd](const Linear& l) { return l.bias ? l.bias->compute(cd) : Variable(); };
  return autograd::gelu_mlp(to_compute(x), fc1->weight->compute(cd), bias_of(*fc1), fc2->weight->compute(cd),
                            bias_of(*fc2));
}

}  // namespace coil::layers
