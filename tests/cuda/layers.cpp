// Compiled by nvcc only (scripts/check-cuda-build): the SMEAR router in a MergedLinear, the MergedFFN, the CAMEx
// code's linear layer and a dynamic-merging chain's layer policy, in float; a layer's tensors by name.
#include "layers.hpp"

#include <span>
#include <vector>

namespace camex::cuda_check {

void layers() {
  using T = float;
  const std::size_t n = 3, in = 4, hidden = 8, out = 6;
  SmearRouter<T, Space> smear(in, n, segments, {.expert_dropout = 0.1});
  merged_linear<Domain<T, Space>>(smear, [&](TensorShape s) { return Domain<T, Space>(problem(n, s)); });

  DynamicChain<T, Space> chain(2, problem(n, {out, in}), {});
  auto router = noisy_top_k<T>(n);
  MergedLinear dynamic(chain.layer(1), nullptr, router, segments);
  linear_steps(dynamic);

  CamexCodeLinear<T, Space> code(out, in, n, 2, 8);
  linear_steps(code.layer());

  Ties<T, Space> fc(problem(n, {hidden, in})), proj(problem(n, {out, hidden}));
  MergedFFN ffn(fc, nullptr, proj, nullptr, router, segments);
  const auto ws = make_workspace<Space>(ffn.workspace_bytes());
  const std::size_t tokens = segments.tokens();
  Matrix<T, Space> x("x", tokens, in), y("y", tokens, out), d_x("d_x", tokens, in);
  Matrix<T, Space> e1("e1", n, hidden * in), b1("b1", 1, hidden * in), e2("e2", n, out * hidden), b2("b2", 1, out * hidden);
  const StepContext step{.seed = 1, .step = 1, .stream = 0, .training = true};
  const double aux = ffn.forward(Space{}, step, x, {}, {e1, b1}, std::nullopt, {e2, b2}, std::nullopt, y, ws);
  ffn.backward(Space{}, y, aux, d_x, {e1, b1}, std::nullopt, {e2, b2}, std::nullopt, ws);
  const auto named = ffn.tensors({e1, b1}, std::nullopt, {e2, b2}, std::nullopt);
  const std::vector<float> ones(n * hidden * in, 1.0f);
  named.load(Space{}, "fc.weight.experts", named.at("fc.weight.experts").shape, std::span<const float>(ones));
  named.save(Space{}, "router.w_gate");
}

}  // namespace camex::cuda_check
