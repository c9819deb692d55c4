// A ViT's input and pooling layers against Eigen in double and central differences (tolerance: layer_testing.hpp):
// patches cut row-major and put back, the patch embedding (patches, then a linear map) with the class token and
// positions, for patch sizes 4 and 7 on 28 x 28 images and with and without a class token; pooling by the class
// token and by the mean; and the errors.
#include "common/vision/patch_embedding.hpp"

#include "../nn/layer_testing.hpp"

using namespace camex;
using namespace camex::testing;

namespace {

constexpr std::size_t images = 2, side = 28, channels = 3;

/// The patches of an image batch [B, 28 x 28] as Eigen cuts them: patch (i, j), pixel (u, v).
HostMatrix reference_patches(const HostMatrix& x, std::size_t p) {
  const std::size_t across = side / p, per = across * across;
  HostMatrix out(images * per, p * p);
  for (std::size_t b = 0; b < images; ++b)
    for (std::size_t i = 0; i < across; ++i)
      for (std::size_t j = 0; j < across; ++j)
        for (std::size_t u = 0; u < p; ++u)
          for (std::size_t v = 0; v < p; ++v)
            out(b * per + i * across + j, u * p + v) = x(b, (i * p + u) * side + j * p + v);
  return out;
}

}  // namespace

BOOST_AUTO_TEST_CASE(patches_embedding_and_tokens) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    for (const std::size_t p : {4u, 7u})
      for (const bool cls : {true, false}) {
        BOOST_TEST_CONTEXT("patch " << p << (cls ? ", class token" : ", no class token")) {
          const examples::PatchGrid grid{.rows = side, .cols = side, .patch = p};
          const std::size_t per = grid.patches(), l = per + (cls ? 1 : 0);
          std::vector<Operand> operands{{"images", random_matrix(images, side * side, gen)},
                                        {"weight", random_matrix(channels, p * p, gen)},
                                        {"bias", random_matrix(1, channels, gen)},
                                        {"cls", random_matrix(1, channels, gen)},
                                        {"pos", random_matrix(l, channels, gen)}};
          if (!cls) operands[3].differentiable = false;
          const auto reference = [&](const std::vector<HostMatrix>& v) {
            const HostMatrix tokens = (reference_patches(v[0], p) * v[1].transpose()).rowwise() + v[2].row(0);
            HostMatrix x(images * l, channels);
            for (std::size_t b = 0; b < images; ++b)
              for (std::size_t t = 0; t < l; ++t)
                x.row(b * l + t) = (cls && t == 0 ? v[3].row(0) : tokens.row(b * per + t - (cls ? 1 : 0))) + v[4].row(t);
            return x;
          };
          const auto forward = [&](const std::vector<HostMatrix>& v, Matrix<double, Space>* patches_out = nullptr,
                                   Matrix<double, Space>* tokens_out = nullptr) {
            Matrix<double, Space> patches("patches", images * per, p * p), tokens("tokens", images * per, channels),
                x("x", images * l, channels);
            examples::patchify(Space{}, grid, to_device<double>(v[0]), patches);
            examples::linear_forward(Space{}, patches, to_device<double>(v[1]), to_device_vector<double>(v[2]), tokens);
            examples::tokens_forward(Space{}, tokens, cls ? to_device<double>(v[3]) : Matrix<double, Space>(),
                                     to_device<double>(v[4]), x);
            if (patches_out) *patches_out = patches;
            if (tokens_out) *tokens_out = tokens;
            return to_host(x);
          };
          std::vector<HostMatrix> values;
          for (const auto& o : operands) values.push_back(o.value);
          BOOST_TEST(relative_error(forward(values), reference(values)) <= 1e-13);
          check_layer_gradients(
              operands, [&](const std::vector<HostMatrix>& v) { return forward(v); },
              [&](const std::vector<HostMatrix>& v, const HostMatrix& r) {
                Matrix<double, Space> patches, tokens;
                forward(v, &patches, &tokens);
                // Each gradient the check reads starts at 0.5 and the backward adds to it; the intermediate ones
                // (the patch tokens', the patches') start at 0, as the step's zeroing leaves them.
                const auto held = [](std::size_t rows, std::size_t cols) { return HostMatrix::Constant(rows, cols, 0.5); };
                Matrix<double, Space> d_tokens("d_tokens", images * per, channels), d_patches("d_patches", images * per, p * p);
                auto d_cls = to_device<double>(held(1, channels));
                auto d_pos = to_device<double>(held(l, channels));
                auto d_images = to_device<double>(held(images, side * side));
                auto d_weight = to_device<double>(held(channels, p * p));
                auto d_bias = to_device_vector<double>(held(1, channels));
                examples::tokens_backward(Space{}, to_device<double>(r), d_tokens, cls ? d_cls : Matrix<double, Space>(), d_pos);
                examples::linear_backward(Space{}, patches, to_device<double>(v[1]), d_tokens, d_patches, d_weight, d_bias);
                examples::unpatchify_add(Space{}, grid, d_patches, d_images);
                return std::vector<HostMatrix>{to_host(d_images) - held(images, side * side),
                                               to_host(d_weight) - held(channels, p * p),
                                               vector_to_host(d_bias) - held(1, channels), to_host(d_cls) - held(1, channels),
                                               to_host(d_pos) - held(l, channels)};
              },
              gen);
        }
      }
  }
}

BOOST_AUTO_TEST_CASE(pooling) {
  std::mt19937_64 gen(test_seed());
  CAMEX_TEST_CONTEXT() {
    constexpr std::size_t length = 5;
    for (const auto pooling : {examples::Pooling::class_token, examples::Pooling::mean}) {
      BOOST_TEST_CONTEXT((pooling == examples::Pooling::mean ? "mean" : "class token")) {
        std::vector<Operand> operands{{"x", random_matrix(images * length, channels, gen)}};
        const auto forward = [&](const std::vector<HostMatrix>& v) {
          Matrix<double, Space> pooled("pooled", images, channels);
          examples::pool_forward(Space{}, pooling, length, to_device<double>(v[0]), pooled);
          return to_host(pooled);
        };
        HostMatrix expected(images, channels);
        for (std::size_t b = 0; b < images; ++b)
          expected.row(b) = pooling == examples::Pooling::mean ? HostMatrix(operands[0].value.middleRows(b * length, length).colwise().mean())
                                                               : HostMatrix(operands[0].value.row(b * length));
        BOOST_TEST(relative_error(forward({operands[0].value}), expected) <= 1e-15);
        check_layer_gradients(
            operands, forward,
            [&](const std::vector<HostMatrix>&, const HostMatrix& r) {
              const HostMatrix held = HostMatrix::Constant(images * length, channels, 0.5);
              auto d_x = to_device<double>(held);
              examples::pool_backward(Space{}, pooling, length, to_device<double>(r), d_x);
              return std::vector<HostMatrix>{to_host(d_x) - held};
            },
            gen);
      }
    }
  }
}

BOOST_AUTO_TEST_CASE(errors) {
  CAMEX_TEST_CONTEXT() {
    const examples::PatchGrid odd{.rows = 28, .cols = 28, .patch = 5};
    Matrix<float, Space> images("images", 2, 28 * 28), patches("patches", 2 * 49, 16), wrong("wrong", 2 * 49, 15);
    require_argument_error([&] { examples::patchify(Space{}, odd, images, patches); }, "patch",
                           {"a divisor of the image's 28 x 28", "given 5"});
    const examples::PatchGrid grid{.rows = 28, .cols = 28, .patch = 4};
    require_argument_error([&] { examples::patchify(Space{}, grid, images, wrong); }, "patches", {"[98, 16]", "[98, 15]"});
    Matrix<float, Space> tokens("tokens", 98, 3), pos("pos", 50, 3), x("x", 99, 3);
    require_argument_error([&] { examples::tokens_forward(Space{}, tokens, Matrix<float, Space>("cls", 1, 3), pos, x); }, "x",
                           {"[100, 3]", "[99, 3]"});
  }
}
