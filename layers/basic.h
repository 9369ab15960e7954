// The basic layers: Linear, Embedding, RMSNorm, LayerNorm and the MLPs (GELU, SwiGLU).
// Parameters are created on the CPU from a Generator, in the master dtype (f32; f64 for
// gradient checks), so CPU and GPU initializations agree; move a model with Module::to.
#pragma once
#include <memory>

#include "autograd/functions/norm.h"
#include "layers/model_config.h"
#include "layers/module.h"

namespace coil::layers {

// How a Linear's weight is drawn. std == 0: PyTorch's default U(+-1/sqrt(in)) (kaiming
// uniform, a = sqrt(5)); std > 0: N(0, std). Either is then multiplied by `scale`.
// Biases start at zero (the reference's _init_weights and GPT-2 both zero them).
struct LinearInit {
  double std = 0.0;
  double scale = 1.0;
};

// y = x W^T + b, W [out, in] ("weight"), b [out] ("bias", optional).
class Linear : public Module {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias, Generator& gen,
         LinearInit init = {}, DType param_dtype = DType::f32);
  Variable forward(const Variable& x) const;           // in the compute dtype
  Variable forward_no_bias(const Variable& x) const;  // the weight alone (dt_proj)
  // forward(x) split along its last dim into pieces of the given sizes, computed as one
  // product per block of the weight's rows (autograd::linear_split): the pieces are separate
  // tensors, so no copy of the output is made to split it (Mamba's in_proj into x and z).
  std::vector<Variable> forward_split(const Variable& x, const std::vector<int64_t>& sizes) const;
  int64_t in_features, out_features;
  std::shared_ptr<Parameter> weight, bias;  // bias null when absent
};

// weight [num, dim] ("weight"), N(0, std). The lookup gathers from the master weight and
// returns the rows in the master dtype (fp32): the residual stream starts from exact rows, as
// the reference's under autocast; the first block's norm output is cast to the compute dtype.
class Embedding : public Module {
 public:
  Embedding(int64_t num, int64_t dim, Generator& gen, double std = 0.02,
            DType param_dtype = DType::f32);
  Variable forward(const Tensor& ids) const;
  int64_t num, dim;
  std::shared_ptr<Parameter> weight;
};

// A norm over the last dim: RMSNorm ("weight", ones) or LayerNorm ("weight" ones, "bias"
// zeros); both have no weight decay. forward_residual is the pre-norm block's fused
// add + norm (see autograd/functions/norm.h): residual may be undefined (first block).
class Norm : public Module {
 public:
  Norm(NormKind kind, int64_t dim, double eps, DType param_dtype = DType::f32);
  Variable forward(const Variable& x) const;
  autograd::NormResidual forward_residual(const Variable& x, const Variable& residual) const;
  bool is_layer_norm;
  int64_t dim;
  double eps;
  std::shared_ptr<Parameter> weight, bias;  // bias null for RMSNorm

 private:
  Variable w(const Variable& x) const;
  Variable b(const Variable& x) const;
};

// The MLP of a block. gelu: fc2(gelu_tanh(fc1(x))), fc1 [hidden, d], with biases per
// config.bias (autograd::gelu_mlp: gelu in the GPU products' epilogues). swiglu (the
// reference's GatedMLP): fc1 [2*hidden, d] fused; its output is split into halves (y, gate)
// and fc2(y * silu(gate)) is returned (autograd::swiglu: one kernel on fc1's output, no split
// copies); no biases unless config.bias.
class MLP : public Module {
 public:
  MLP(const ModelConfig& cfg, Generator& gen, LinearInit fc1_init, LinearInit fc2_init,
      DType param_dtype = DType::f32);
  Variable forward(const Variable& x) const;
  bool swiglu;
  int64_t hidden;
  std::shared_ptr<Linear> fc1, fc2;
};

}  // namespace coil::layers
