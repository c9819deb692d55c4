#pragma once
// Where a model's activations live (llm.c's ActivationTensors): what its last forward computed and what its backward
// accumulates, each part one allocation. Layers declare their buffers with a pointer to the view that will
// hold them; allocate() carves both parts and fills every declared view, so layer code keeps using plain views.
// The gradients part is zeroed once per step, before the backward (zero_gradients), and every backward adds into
// it: a gradient that two consumers feed (a residual stream, a tied embedding) is a sum with no special case.
//
// Buffers a layer overwrites before reading (its backward's scratch) go with the values, so the one zeroing
// touches only what is accumulated.

#include <Kokkos_Core.hpp>

#include <cstddef>
#include <string>
#include <vector>

#include <camex/core/error.hpp>

#include "common/nn/tensor.hpp"

namespace camex::examples {

template <class T, class Space>
class ActivationArena {
 public:
  enum class Part { values, gradients };

  /// Declares `*target` as a [rows, cols] buffer of `part`; the view is set by allocate(). The object holding
  /// `target` must stay where it is until then.
  void add(Part part, std::size_t rows, std::size_t cols, Mat<T, Space>* target) {
    declare(part, rows, cols).matrix = target;
  }
  void add(Part part, std::size_t size, Vec<T, Space>* target) { declare(part, size, 1).vector = target; }

  /// One allocation per part; every declared view then points into it (each buffer 64-byte aligned).
  void allocate() {
    if (allocated_) throw argument_error("ActivationArena::allocate", "this", "an arena not yet allocated", "allocated");
    values_ = Vec<T, Space>("activations", size_[0]);
    gradients_ = Vec<T, Space>("activation_gradients", size_[1]);
    for (const Declared& d : declared_) {
      T* at = (d.part == Part::values ? values_ : gradients_).data() + d.offset;
      if (d.matrix) *d.matrix = Mat<T, Space>(at, d.rows, d.cols);
      if (d.vector) *d.vector = Vec<T, Space>(at, d.rows);
    }
    declared_.clear();
    allocated_ = true;
  }

  /// The step's one zeroing of everything the backward accumulates into.
  void zero_gradients(const Space& space) const { Kokkos::deep_copy(space, gradients_, T(0)); }

  std::size_t bytes(Part part) const { return size_[part == Part::values ? 0 : 1] * sizeof(T); }

 private:
  struct Declared {
    Part part;
    std::size_t rows, cols, offset;
    Mat<T, Space>* matrix = nullptr;
    Vec<T, Space>* vector = nullptr;
  };

  Declared& declare(Part part, std::size_t rows, std::size_t cols) {
    if (allocated_) throw argument_error("ActivationArena::add", "part", "a buffer declared before allocate()", "allocated");
    constexpr std::size_t align = 64 / sizeof(T) > 0 ? 64 / sizeof(T) : 1;
    std::size_t& size = size_[part == Part::values ? 0 : 1];
    declared_.push_back({part, rows, cols, size});
    size += (rows * cols + align - 1) / align * align;
    return declared_.back();
  }

  std::vector<Declared> declared_;
  std::size_t size_[2] = {0, 0};
  bool allocated_ = false;
  Vec<T, Space> values_, gradients_;
};

}  // namespace camex::examples
