// Softmax cross-entropy over rows: the summed loss and the rows whose largest logit is the target against Eigen in
// double (ties counted for the first largest), the probabilities left in place, and d_logits against central
// differences of the mean loss (tolerance: layer_testing.hpp).
#include "common/nn/softmax_cross_entropy.hpp"

#include "layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

BOOST_AUTO_TEST_CASE(loss_hits_and_gradient) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    constexpr std::size_t rows = 6, classes = 5;
    HostMatrix logits = random_matrix(rows, classes, gen, -3, 3);
    logits(5, 1) = logits(5, 3) = logits.row(5).maxCoeff() + 1;  // a tie: the first of them is the prediction
    std::vector<std::int32_t> targets{0, 1, 2, 3, 4, 3};
    const auto device_targets = device_token_ids(targets);
    const Kokkos::View<double*, Space::memory_space> row_terms("row_terms", examples::cross_entropy_row_terms(rows));
    double loss = 0, correct = 0;
    HostMatrix probabilities(rows, classes);
    for (std::size_t t = 0; t < rows; ++t) {
      const double top = logits.row(t).maxCoeff();
      const HostMatrix e = (logits.row(t).array() - top).exp().matrix();
      probabilities.row(t) = e / e.sum();
      loss -= std::log(probabilities(t, targets[t]));
      Eigen::Index best = 0;
      logits.row(t).maxCoeff(&best);
      correct += best == targets[t];
    }
    BOOST_TEST(correct < static_cast<double>(rows));  // the tie at row 5 is not a hit
    auto device = to_device<double>(logits);
    const auto sums = examples::softmax_cross_entropy_forward(Space{}, device, device_targets, row_terms);
    BOOST_TEST(std::abs(sums.loss - loss) <= 1e-12 * loss);
    BOOST_TEST(sums.correct == correct);
    BOOST_TEST(relative_error(to_host(device), probabilities) <= 1e-14);

    std::vector<Operand> operands{{"logits", logits}};
    const auto mean_loss = [&](const std::vector<HostMatrix>& v) {
      auto d = to_device<double>(v[0]);
      return HostMatrix::Constant(1, 1, examples::softmax_cross_entropy_forward(Space{}, d, device_targets, row_terms).loss / rows);
    };
    check_layer_gradients(
        operands, mean_loss,
        [&](const std::vector<HostMatrix>& v, const HostMatrix& r) {
          auto d = to_device<double>(v[0]);
          examples::softmax_cross_entropy_forward(Space{}, d, device_targets, row_terms);
          examples::softmax_cross_entropy_backward(Space{}, d, device_targets, r(0, 0));
          return std::vector<HostMatrix>{to_host(d)};
        },
        gen);
    require_argument_error([&] { examples::softmax_cross_entropy_forward(Space{}, device, device_token_ids({1, 2}), row_terms); },
                           "targets", {"6 entries (the logits' rows)", "2 entries"});
    const Kokkos::View<double*, Space::memory_space> short_terms("row_terms", examples::cross_entropy_row_terms(rows) - 1);
    require_argument_error([&] { examples::softmax_cross_entropy_forward(Space{}, device, device_targets, short_terms); },
                           "row_terms", {"14 doubles (2 N + 2)", "13 doubles"});
  }
}
