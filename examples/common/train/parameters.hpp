#pragma once
// Where a model's trainable numbers live. The model's own tensors (embeddings, norms, attention, dense and expert
// weights) are slices of one arena of values and one arena of gradients; a library component that owns its
// parameters (curvature factors, routers: camex::Parameter views from parameters()) is listed beside them. The
// optimiser state is one arena per moment over all of them (train/adamw.hpp), and checkpoints name every tensor.

#include <camex/core/error.hpp>
#include <camex/core/step.hpp>

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "common/nn/tensor.hpp"

namespace camex::examples {

/// One named tensor of the model, flattened: values and gradient, its logical shape, and whether weight decay
/// applies (matrices do; biases, norm gains and library parameters near their identity init do not).
template <class T, class Space>
struct NamedTensor {
  std::string name;
  std::vector<std::size_t> shape;
  Parameter<T, Space> flat;
  bool decay = false;
};

/// How a tensor starts: zeros, ones, or N(0, std^2).
struct Init {
  enum class Kind { zeros, ones, normal } kind = Kind::zeros;
  double std = 0;
  static Init zeros() { return {}; }
  static Init ones() { return {Kind::ones, 0}; }
  static Init normal(double std) { return {Kind::normal, std}; }
};

/// Declare every tensor (add), then allocate once; views into the arenas stay valid for the arena's lifetime.
template <class T, class Space>
class ParameterArena {
 public:
  /// Declares a tensor of `rows x cols` (a vector: rows = 1 and a one-entry shape); returns its index.
  std::size_t add(std::string name, std::vector<std::size_t> shape, bool decay, Init init) {
    if (allocated()) throw argument_error("ParameterArena::add", "name", "a tensor declared before allocate()", name);
    std::size_t size = 1;
    for (const std::size_t e : shape) size *= e;
    specs_.push_back({std::move(name), std::move(shape), offset_, size, decay, init});
    offset_ += size;
    return specs_.size() - 1;
  }

  void allocate() {
    values_ = Vec<T, Space>("parameters", offset_);
    gradients_ = Vec<T, Space>("gradients", offset_);
  }
  bool allocated() const { return values_.extent(0) == offset_ && offset_ > 0; }
  std::size_t size() const { return offset_; }
  /// Tensors declared so far.
  std::size_t count() const { return specs_.size(); }

  /// Tensor i as [rows, cols] (a vector as [1, n]).
  Mat<T, Space> value(std::size_t i) const { return matrix(values_, i); }
  Mat<T, Space> gradient(std::size_t i) const { return matrix(gradients_, i); }
  Vec<T, Space> value_vector(std::size_t i) const { return vector(values_, i); }
  Vec<T, Space> gradient_vector(std::size_t i) const { return vector(gradients_, i); }

  /// Every tensor as declared, drawn on the host in declaration order from one generator: the same values on
  /// every backend and thread count.
  void initialise(std::uint64_t seed) {
    auto host = Kokkos::create_mirror_view(values_);
    std::mt19937_64 gen(seed);
    for (const Spec& s : specs_) {
      std::normal_distribution<double> normal(0.0, s.init.std);
      for (std::size_t k = 0; k < s.size; ++k)
        host(s.offset + k) = s.init.kind == Init::Kind::ones     ? T(1)
                             : s.init.kind == Init::Kind::normal ? static_cast<T>(normal(gen))
                                                                 : T(0);
    }
    Kokkos::deep_copy(values_, host);
  }

  void zero_gradients(const Space& space) const { Kokkos::deep_copy(space, gradients_, T(0)); }

  const Vec<T, Space>& values() const { return values_; }
  const Vec<T, Space>& gradients() const { return gradients_; }

  std::vector<NamedTensor<T, Space>> tensors() const {
    std::vector<NamedTensor<T, Space>> out;
    for (std::size_t i = 0; i < specs_.size(); ++i)
      out.push_back({specs_[i].name, specs_[i].shape,
                     {specs_[i].name, typename Parameter<T, Space>::Flat(values_.data() + specs_[i].offset, specs_[i].size),
                      typename Parameter<T, Space>::Flat(gradients_.data() + specs_[i].offset, specs_[i].size)},
                     specs_[i].decay});
    return out;
  }

 private:
  struct Spec {
    std::string name;
    std::vector<std::size_t> shape;
    std::size_t offset, size;
    bool decay;
    Init init;
  };

  Mat<T, Space> matrix(const Vec<T, Space>& arena, std::size_t i) const {
    const Spec& s = specs_.at(i);
    const std::size_t rows = s.shape.size() == 1 ? 1 : s.shape[0];
    return Mat<T, Space>(arena.data() + s.offset, rows, s.size / rows);
  }
  Vec<T, Space> vector(const Vec<T, Space>& arena, std::size_t i) const {
    const Spec& s = specs_.at(i);
    return Vec<T, Space>(arena.data() + s.offset, s.size);
  }

  std::vector<Spec> specs_;
  std::size_t offset_ = 0;
  Vec<T, Space> values_, gradients_;
};

}  // namespace camex::examples
