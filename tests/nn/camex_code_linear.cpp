// The CAMEx-code preset against that layer's math written out here in double from docs/algorithms.md (§2.1, §2.3, §4.3,
// §4.5), at small sizes: every segment's own gates by the noisy softmax (k = n) on the mean of all its positions
// (padding included), segment s merging with segment s - 1's gates and segment 0 with its own, detached; the sign
// agreement of the raw deltas masking the curvature transform built as explicit Kronecker products; the balancing
// loss over every segment's gates with coefficient 1e-5. The output and the auxiliary loss are compared directly;
// every gradient (tokens, experts, bases, router weights, the weights' and the bias's curvature factors) against
// central differences of the reference, with segment 0's gates held fixed, which is what detached means.
#include "camex/nn/camex_code_linear.hpp"

#include "camex/core/random.hpp"
#include "finite_difference.hpp"
#include "testing.hpp"

#include <cmath>
#include <random>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

using PaddingFlags = Matrix<std::uint8_t, Space>;

// S = 2 sequences of L = 8 tokens in segments of T = 4; I = 4 = 2 x 2 inputs, O = 6 = 2 x 3 outputs; n = 3
// experts; rank 2.
constexpr std::size_t S = 2, L = 8, T = 4, I = 4, O = 6, n = 3, rank = 2, G = S * L / T;
constexpr std::size_t o1 = 2, o2 = 3, i1 = 2, i2 = 2;
const CamexCodeOptions options{.rank = rank, .segment = T, .balance_coefficient = 1e-5};

/// Everything the layer reads, in double on the host.
struct State {
  HostMatrix x, experts_w, base_w, experts_b, base_b;
  HostMatrix w_gate, w_noise;        // [n, I]
  std::vector<HostMatrix> factors;   // weights' A, B, C, D then the bias's P, Q: [rank * n * d * d] each as [1, .]
};

HostMatrix kron(const HostMatrix& a, const HostMatrix& b) {
  HostMatrix out(a.rows() * b.rows(), a.cols() * b.cols());
  for (Eigen::Index r = 0; r < a.rows(); ++r)
    for (Eigen::Index c = 0; c < a.cols(); ++c) out.block(r * b.rows(), c * b.cols(), b.rows(), b.cols()) = a(r, c) * b;
  return out;
}

/// Factor (rho, i) of a stack [rank, n, d, d].
HostMatrix factor(const HostMatrix& stack, std::size_t rho, std::size_t i, std::size_t d) {
  return Eigen::Map<const HostMatrix>(stack.data() + (rho * n + i) * d * d, static_cast<Eigen::Index>(d),
                                      static_cast<Eigen::Index>(d));
}

int sign(double v) { return (v > 0) - (v < 0); }

double cv_squared(const std::vector<double>& v) {
  double mean = 0;
  for (const double x : v) mean += x;
  mean /= static_cast<double>(v.size());
  double var = 0;
  for (const double x : v) var += (x - mean) * (x - mean);
  var /= static_cast<double>(v.size() - 1);
  return var / (mean * mean + 1e-10);
}

/// The merged delta rows m_i .* M_i(tau_i), [n, rows * cols], for the [n, rows * cols] experts around `base`.
HostMatrix masked_transformed(const HostMatrix& experts, const HostMatrix& base, std::size_t rows, std::size_t cols,
                              const HostMatrix* a, const HostMatrix* b, const HostMatrix* c, const HostMatrix* d) {
  const auto R = static_cast<Eigen::Index>(rows), C = static_cast<Eigen::Index>(cols);
  HostMatrix sum = HostMatrix::Zero(R, C), out(n, R * C);
  std::vector<HostMatrix> tau;
  for (std::size_t i = 0; i < n; ++i) {
    HostMatrix t = experts.row(i) - base;
    tau.push_back(Eigen::Map<const HostMatrix>(t.data(), R, C));
    sum += tau.back();
  }
  for (std::size_t i = 0; i < n; ++i) {
    HostMatrix m = HostMatrix::Zero(R, C);
    for (std::size_t rho = 0; rho < rank; ++rho) {
      const HostMatrix left = kron(factor(*a, rho, i, o1), factor(*b, rho, i, o2));
      const HostMatrix right = cols == 1 ? HostMatrix::Identity(1, 1) : kron(factor(*c, rho, i, i1), factor(*d, rho, i, i2));
      m += left * tau[i] * right.transpose();
    }
    for (Eigen::Index k = 0; k < m.size(); ++k)
      if (sign(tau[i].data()[k]) != sign(sum.data()[k])) m.data()[k] = 0;
    out.row(i) = Eigen::Map<const HostMatrix>(m.data(), 1, R * C);
  }
  return out;
}

/// Every segment's own gates [G, n] (the code's gates before the shift), from the means over all T positions.
HostMatrix segment_gates(const State& s, const StepContext& step) {
  const CounterRng rng(step.seed, step.step);
  HostMatrix gates(G, n);
  for (std::size_t r = 0; r < G; ++r) {
    const HostMatrix mean = s.x.middleRows(static_cast<Eigen::Index>(r * T), T).colwise().mean();
    std::vector<double> logit(n);
    double top = -INFINITY;
    for (std::size_t j = 0; j < n; ++j) {
      const double clean = (mean * s.w_gate.row(j).transpose())(0, 0), raw = (mean * s.w_noise.row(j).transpose())(0, 0);
      const double sigma = std::log1p(std::exp(raw)) + 0.01;
      logit[j] = clean + rng.normal({step.stream + 2, static_cast<std::uint32_t>(j), r}) * sigma;
      top = std::max(top, logit[j]);
    }
    double total = 0;
    for (std::size_t j = 0; j < n; ++j) total += std::exp(logit[j] - top);
    for (std::size_t j = 0; j < n; ++j) gates(r, j) = std::exp(logit[j] - top) / total;
  }
  return gates;
}

/// y [S L, O] and the auxiliary loss; segment 0's merges use `frozen`'s rows where given (the detach).
std::pair<HostMatrix, double> reference(const State& s, const StepContext& step, const HostMatrix* frozen) {
  const HostMatrix gates = segment_gates(s, step);
  const HostMatrix dw = masked_transformed(s.experts_w, s.base_w, O, I, &s.factors[0], &s.factors[1], &s.factors[2], &s.factors[3]);
  const HostMatrix db = masked_transformed(s.experts_b, s.base_b, O, 1, &s.factors[4], &s.factors[5], nullptr, nullptr);
  HostMatrix y(S * L, O);
  const std::size_t per = L / T;
  for (std::size_t g = 0; g < G; ++g) {
    const bool first = g % per == 0;
    const HostMatrix scores = first ? (frozen ? frozen->row(g) : gates.row(g)) : gates.row(g - 1);
    const HostMatrix w_flat = s.base_w + scores * dw, b = s.base_b + scores * db;
    const HostMatrix W = Eigen::Map<const HostMatrix>(w_flat.data(), O, I);
    for (std::size_t t = g * T; t < (g + 1) * T; ++t)
      y.row(static_cast<Eigen::Index>(t)) = (W * s.x.row(static_cast<Eigen::Index>(t)).transpose()).transpose() + b;
  }
  std::vector<double> importance(n, 0.0), load(n, 0.0);
  for (std::size_t r = 0; r < G; ++r)
    for (std::size_t j = 0; j < n; ++j) {
      importance[j] += gates(r, j);
      load[j] += gates(r, j) > 0 ? 1.0 : 0.0;
    }
  return {y, options.balance_coefficient * (cv_squared(importance) + cv_squared(load))};
}

/// Copies the host state's router weights and curvature factors into the layer's parameters.
void upload(CamexCodeLinear<double, Space>& layer, const State& s) {
  const auto params = layer.parameters();
  BOOST_REQUIRE_EQUAL(params.size(), 8u);  // A, B, C, D; bias P, Q; w_gate, w_noise
  const HostMatrix* sources[8] = {&s.factors[0], &s.factors[1], &s.factors[2], &s.factors[3],
                                  &s.factors[4], &s.factors[5], &s.w_gate,     &s.w_noise};
  for (std::size_t k = 0; k < 8; ++k) {
    auto host = Kokkos::create_mirror_view(params[k].value);
    BOOST_REQUIRE_EQUAL(host.extent(0), static_cast<std::size_t>(sources[k]->size()));
    for (std::size_t e = 0; e < host.extent(0); ++e) host(e) = sources[k]->data()[e];
    Kokkos::deep_copy(params[k].value, host);
  }
}

State random_state(std::mt19937_64& gen) {
  State s{random_matrix(S * L, I, gen),     random_matrix(n, O * I, gen),      random_matrix(1, O * I, gen),
          random_matrix(n, O, gen),         random_matrix(1, O, gen),          random_matrix(n, I, gen, -0.8, 0.8),
          random_matrix(n, I, gen, -0.5, 0.5), {}};
  // Identity factors (the preset's init) moved off the identity, so every factor's gradient is exercised.
  for (const std::size_t d : {o1, o2, i1, i2, o1, o2}) {
    HostMatrix stack = 0.3 * random_matrix(1, static_cast<Eigen::Index>(rank * n * d * d), gen);
    for (std::size_t b = 0; b < rank * n; ++b)
      for (std::size_t a = 0; a < d; ++a) stack(0, static_cast<Eigen::Index>(b * d * d + a * d + a)) += 1.0;
    s.factors.push_back(stack);
  }
  return s;
}

}  // namespace

BOOST_AUTO_TEST_SUITE(camex_code_linear)

BOOST_AUTO_TEST_CASE(preset_is_the_camex_code_layer) {
  CamexCodeLinear<double, Space> layer(O, I, n, S, 512);  // two segments of the code's 256 tokens
  const RoutingLayout& l = layer.routing_layout();
  BOOST_TEST((l.granularity == Granularity::causal_segment && l.segment == 256u && l.padding == Padding::include &&
              l.gate_rows == GateRows::per_segment));
  BOOST_TEST(layer.router().options().k == n);
  BOOST_TEST(layer.router().options().balance_coefficient == 1e-5);
  BOOST_TEST(layer.router().options().noisy);
  BOOST_TEST((layer.weight_policy().mask().variant == TiesVariant::sign_agreement));
  BOOST_TEST(layer.weight_policy().transform().rank() == 8u);
  BOOST_TEST(layer.weight_policy().merge_options().alpha == 1.0);
  BOOST_TEST(layer.bias_policy() != nullptr);
}

BOOST_AUTO_TEST_CASE(output_loss_and_gradients_match_the_reference) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    CamexCodeLinear<double, Space> layer(O, I, n, S, L, options, 1);
    State s = random_state(gen);
    upload(layer, s);
    // The last three tokens of sequence 1 are padding: the code's means count them anyway.
    PaddingFlags padding("padding", S, L);
    auto host_padding = Kokkos::create_mirror_view(padding);
    for (std::size_t q = 0; q < S; ++q)
      for (std::size_t t = 0; t < L; ++t) host_padding(q, t) = q == 1 && t >= L - 3 ? 0 : 1;
    Kokkos::deep_copy(padding, host_padding);
    const auto ws = make_workspace<Space>(layer.workspace_bytes());
    const StepContext step{.seed = 9, .step = 4, .stream = 3, .training = true};

    const auto forward = [&] {
      const auto x = to_device<double>(s.x), ew = to_device<double>(s.experts_w), bw = to_device<double>(s.base_w);
      const auto eb = to_device<double>(s.experts_b), bb = to_device<double>(s.base_b);
      Matrix<double, Space> y("y", S * L, O);
      const double aux = layer.forward(Space{}, step, x, padding, {ew, bw}, ExpertTensors<double, Space>{eb, bb}, y, ws);
      return std::make_pair(to_host(y), aux);
    };
    const auto [y, aux] = forward();
    const auto [y_ref, aux_ref] = reference(s, step, nullptr);
    // Double: a few dozen roundings of unit-size terms per entry.
    BOOST_TEST((y - y_ref).cwiseAbs().maxCoeff() <= 1e-12 * std::max(1.0, y_ref.cwiseAbs().maxCoeff()));
    BOOST_TEST(std::abs(aux - aux_ref) <= 1e-12 * aux_ref);
    BOOST_TEST(aux_ref > 0.0);

    const HostMatrix d_y = random_matrix(S * L, O, gen);
    const double d_aux = 3e4;  // brings the 1e-5 loss's gradient to the scale of the rest
    Matrix<double, Space> d_x("d_x", S * L, I), d_ew("d_ew", n, O * I), d_bw("d_bw", 1, O * I), d_eb("d_eb", n, O),
        d_bb("d_bb", 1, O);
    layer.backward(Space{}, to_device<double>(d_y), d_aux, d_x, {d_ew, d_bw}, ExpertGradients<double, Space>{d_eb, d_bb}, ws);
    std::vector<std::vector<double>> param_grads;
    for (const auto& p : layer.parameters()) param_grads.push_back(host_values(p.gradient));

    const HostMatrix frozen = segment_gates(s, step);
    const auto objective = [&] {
      const auto [yr, auxr] = reference(s, step, &frozen);
      return (yr.array() * d_y.array()).sum() + d_aux * auxr;
    };
    GradientCheck check(objective);
    check.matrix(s.x, to_host(d_x));
    check.matrix(s.experts_w, to_host(d_ew));
    check.matrix(s.base_w, to_host(d_bw));
    check.matrix(s.experts_b, to_host(d_eb));
    check.matrix(s.base_b, to_host(d_bb));
    HostMatrix* sources[8] = {&s.factors[0], &s.factors[1], &s.factors[2], &s.factors[3],
                              &s.factors[4], &s.factors[5], &s.w_gate,     &s.w_noise};
    for (std::size_t k = 0; k < 8; ++k)
      check.matrix(*sources[k], Eigen::Map<const HostMatrix>(param_grads[k].data(), sources[k]->rows(), sources[k]->cols()));
    // Central differences of a smooth function away from sign changes (random inputs): truncation O(h^2) and
    // rounding O(eps / h) of objectives of size ~10, about 1e-8; the bound leaves a factor of 10.
    BOOST_TEST(check.worst() <= 1e-7 * std::max(1.0, check.scale()),
               "worst " << check.worst() << " of gradients up to " << check.scale());
    BOOST_TEST(check.scale() > 1e-1);
  }
}

BOOST_AUTO_TEST_CASE(rejects_a_segment_that_does_not_divide_the_sequence) {
  require_argument_error([] { CamexCodeLinear<float, Space>(O, I, n, S, 100); }, "options.segment",
                         {"dividing the sequence length 100", "256"});
}

BOOST_AUTO_TEST_SUITE_END()
