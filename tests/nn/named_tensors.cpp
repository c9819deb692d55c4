// A layer's tensors by name: MergedLinear and MergedFFN name the model's experts and bases, the policies'
// parameters and the router's, with their logical shapes; loading by name writes the very memory the layer reads
// (a forward after loading every tensor by name equals one given the same values directly); saving reads it back;
// every error path (unknown name, wrong shape, wrong size, non-finite or unrepresentable values, a taken name,
// rows that are not adjacent, operands of the wrong shape) names what is wrong.
#include "camex/nn/named_tensors.hpp"

#include "camex/merge/curvature_aware.hpp"
#include "camex/merge/domain.hpp"
#include "camex/nn/merged_ffn.hpp"
#include "camex/nn/merged_linear.hpp"
#include "camex/route/noisy_top_k.hpp"
#include "testing.hpp"

#include <random>
#include <string>
#include <vector>

using namespace camex;
using namespace camex::testing;

namespace {

using Policy = CurvatureAware<double, Space>;
using Gate = NoisyTopKGate<double, Space>;
using PaddingFlags = Matrix<std::uint8_t, Space>;
constexpr std::size_t n = 3, in = 4, out = 5, hidden = 6;
constexpr RoutingLayout layout{.sequences = 2, .length = 3};

std::vector<std::string> names_of(const NamedTensors<double, Space>& named) {
  std::vector<std::string> names;
  for (const auto& e : named.entries()) names.push_back(e.name);
  return names;
}

/// `prefix` + every parameter name of `parameters`.
template <class Parameters>
std::vector<std::string> prefixed(const std::string& prefix, const Parameters& parameters) {
  std::vector<std::string> names;
  for (const auto& p : parameters) names.push_back(prefix + p.name);
  return names;
}

std::vector<std::string> joined(std::initializer_list<std::vector<std::string>> parts) {
  std::vector<std::string> all;
  for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
  return all;
}

ExpertStorage<double, Space> storage(std::size_t rows, std::size_t cols) {
  return {Matrix<double, Space>("experts", n, rows * cols), Matrix<double, Space>("base", 1, rows * cols)};
}

struct Linear {
  Policy weights{layer_problem(layout, n, {out, in}), {.rank = 2}};
  Policy bias{layer_problem(layout, n, {out, 1}), {.rank = 1}};
  Gate router{in, n, layout, {.k = 2}, 7};
  MergedLinear<Policy, Gate> layer{weights, &bias, router, layout};
  ExpertStorage<double, Space> w = storage(out, in), b = storage(out, 1);
};

}  // namespace

BOOST_AUTO_TEST_SUITE(named_tensors)

BOOST_AUTO_TEST_CASE(merged_linear_names_every_tensor_with_its_shape) {
  Linear l;
  const auto named = l.layer.tensors(l.w, l.b);
  const auto expected = joined({{"weight.experts", "weight.base"}, prefixed("weight.", l.weights.parameters()),
                                {"bias.experts", "bias.base"}, prefixed("bias.", l.bias.parameters()),
                                prefixed("router.", l.router.parameters())});
  BOOST_TEST(names_of(named) == expected, boost::test_tools::per_element());
  BOOST_TEST(l.weights.parameters().size() > 0);  // the curvature factors are among them
  BOOST_TEST(named.at("weight.experts").shape == (std::vector<std::size_t>{n, out, in}), boost::test_tools::per_element());
  BOOST_TEST(named.at("weight.base").shape == (std::vector<std::size_t>{out, in}), boost::test_tools::per_element());
  BOOST_TEST(named.at("bias.experts").shape == (std::vector<std::size_t>{n, out}), boost::test_tools::per_element());
  BOOST_TEST(named.at("bias.base").shape == (std::vector<std::size_t>{out}), boost::test_tools::per_element());
  BOOST_TEST(named.at("router.w_gate").shape == (std::vector<std::size_t>{n * in}), boost::test_tools::per_element());
  BOOST_TEST(named.at("weight.experts").values.data() == l.w.experts.data());
  BOOST_TEST(named.at("router.w_gate").values.data() == l.router.gate_weights().data());

  MergedLinear<Policy, Gate> unbiased(l.weights, nullptr, l.router, layout);
  const auto without_bias = unbiased.tensors(l.w);
  BOOST_TEST(names_of(without_bias) ==
                 joined({{"weight.experts", "weight.base"}, prefixed("weight.", l.weights.parameters()),
                         prefixed("router.", l.router.parameters())}),
             boost::test_tools::per_element());
}

BOOST_AUTO_TEST_CASE(loading_by_name_writes_what_the_layer_reads) {
  std::mt19937_64 gen(test_seed());
  Linear by_name, direct;
  const auto named = by_name.layer.tensors(by_name.w, by_name.b);
  const auto direct_named = direct.layer.tensors(direct.w, direct.b);
  for (const auto& e : named.entries()) {
    const HostMatrix values = random_matrix(1, e.values.extent(0), gen, -0.5, 0.5);
    const std::span<const double> flat(values.data(), values.size());
    named.load(Space{}, e.name, e.shape, flat);
    // The same values written straight into the other layer's memory, past the names.
    Kokkos::deep_copy(direct_named.at(e.name).values,
                      Kokkos::View<const double*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(values.data(), values.size()));
    const auto saved = named.save(Space{}, e.name);
    BOOST_TEST(saved == std::vector<double>(flat.begin(), flat.end()), boost::test_tools::per_element());
  }
  const auto x = to_device<double>(random_matrix(layout.tokens(), in, gen));
  const StepContext step{.seed = 3, .step = 1, .stream = 0, .training = true};
  const auto forward = [&](Linear& l) {
    const auto workspace = make_workspace<Space>(l.layer.workspace_bytes());
    Matrix<double, Space> y("y", layout.tokens(), out);
    l.layer.forward(Space{}, step, x, PaddingFlags(), {l.w.experts, l.w.base}, ExpertTensors<double, Space>{l.b.experts, l.b.base},
                    y, workspace);
    return to_host(y);
  };
  const HostMatrix got = forward(by_name), want = forward(direct);
  BOOST_TEST((got - want).cwiseAbs().maxCoeff() == 0.0);
  // Loaded values are the layer's: the experts matrix itself holds them.
  const HostMatrix experts = to_host(by_name.w.experts);
  const auto saved = named.save(Space{}, "weight.experts");
  for (std::size_t k = 0; k < saved.size(); ++k) BOOST_TEST(experts(k / (out * in), k % (out * in)) == saved[k]);
}

BOOST_AUTO_TEST_CASE(merged_ffn_names_both_maps_and_the_router) {
  using Ffn = MergedFFN<Policy, Gate>;
  Policy fc{layer_problem(layout, n, {hidden, in}), {.rank = 1}}, fc_bias{layer_problem(layout, n, {hidden, 1}), {.rank = 1}};
  Policy proj{layer_problem(layout, n, {out, hidden}), {.rank = 1}};
  Gate router{in, n, layout, {.k = 2}, 7};
  Ffn layer(fc, &fc_bias, proj, nullptr, router, layout);
  const auto fc_w = storage(hidden, in), fc_b = storage(hidden, 1), proj_w = storage(out, hidden);
  const auto named = layer.tensors(fc_w, fc_b, proj_w, std::nullopt);
  BOOST_TEST(names_of(named) ==
                 joined({{"fc.weight.experts", "fc.weight.base"}, prefixed("fc.weight.", fc.parameters()),
                         {"fc.bias.experts", "fc.bias.base"}, prefixed("fc.bias.", fc_bias.parameters()),
                         {"proj.weight.experts", "proj.weight.base"}, prefixed("proj.weight.", proj.parameters()),
                         prefixed("router.", router.parameters())}),
             boost::test_tools::per_element());
  BOOST_TEST(named.at("proj.weight.experts").shape == (std::vector<std::size_t>{n, out, hidden}),
             boost::test_tools::per_element());
  require_argument_error([&] { layer.tensors(fc_w, fc_b, proj_w, storage(out, 1)); }, "proj_bias",
                         {"camex::MergedFFN::tensors", "none (the layer has no bias policy)"});
}

BOOST_AUTO_TEST_CASE(errors_name_what_is_wrong) {
  Linear l;
  const auto named = l.layer.tensors(l.w, l.b);
  const std::vector<double> ten(10, 0.5);
  const std::vector<std::size_t> base_shape{out, in};
  require_argument_error([&] { named.at("weight.expert"); }, "name",
                         {"one of \"weight.experts\", \"weight.base\"", "\"router.w_noise\"", "given \"weight.expert\""});
  require_argument_error([&] { named.load(Space{}, "weight.base", std::vector<std::size_t>{in, out}, std::span<const double>(ten)); },
                         "shape", {"[5, 4] for \"weight.base\"", "given [4, 5]"});
  require_argument_error([&] { named.load(Space{}, "weight.base", base_shape, std::span<const double>(ten)); }, "values",
                         {"20 entries for \"weight.base\"", "given 10 entries"});
  std::vector<double> twenty(20, 0.25);
  twenty[7] = std::nan("");
  require_argument_error([&] { named.load(Space{}, "weight.base", base_shape, std::span<const double>(twenty)); }, "values",
                         {"finite values", "entry 7 = nan"});
  require_argument_error([&] { l.layer.tensors(storage(out, in + 1), l.b); }, "weights.experts",
                         {"camex::MergedLinear::tensors", "given [3, 25]"});
  require_argument_error([&] { l.layer.tensors(l.w, std::nullopt); }, "bias", {"the bias tensors"});
  require_argument_error([&] { l.layer.tensors({l.w.experts, {}}, l.b); }, "weights.base", {"[1, 20]"});

  NamedTensors<float, Space> floats;
  Matrix<float, Space> m("m", 2, 3);
  floats.add_matrix("m", {2, 3}, m);
  require_argument_error([&] { floats.add_matrix("m", {2, 3}, m); }, "name", {"a name not yet taken", "given \"m\""});
  require_argument_error([&] { floats.add_matrix("wide", {3, 2, 2}, m); }, "shape", {"6 entries", "given [3, 2, 2] (12 entries)"});
  const auto strided = Kokkos::subview(m, Kokkos::ALL, std::pair<std::size_t, std::size_t>(0, 2));
  require_argument_error([&] { floats.add_matrix("columns", {2, 2}, strided); }, "matrix", {"row stride 2", "given row stride 3"});
  const std::vector<double> huge{1.0, 2.0, 1e300, 4.0, 5.0, 6.0};
  require_argument_error([&] { floats.load(Space{}, "m", std::vector<std::size_t>{2, 3}, std::span<const double>(huge)); },
                         "values", {"float represents", "entry 2 = 1e+300"});
}

BOOST_AUTO_TEST_SUITE_END()
