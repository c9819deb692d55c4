#pragma once
// A layer's tensors by name (docs/layers.md, "Tensors by name"): the experts and bases the model keeps, the merge
// policies' parameters and the router's, each a flat view of its entries with its logical shape. Weights from a
// checkpoint or another framework go in by name and come out by name, shape-checked, without knowing where the
// layer keeps what. The views alias the model's, the policies' and the router's own memory: loading writes there.
// A layer's tensors() takes the model's storage of each merged tensor as an ExpertStorage (nn/expert_tensors.hpp).

#include <Kokkos_Core.hpp>

#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "camex/core/error.hpp"
#include "camex/core/step.hpp"
#include "camex/core/views.hpp"

namespace camex {

template <class Scalar, class ExecSpace>
class NamedTensors {
 public:
  using Flat = Kokkos::View<Scalar*, typename ExecSpace::memory_space, Kokkos::MemoryTraits<Kokkos::Unmanaged>>;
  struct Entry {
    std::string name;
    std::vector<std::size_t> shape;  ///< row-major; the product is values.extent(0)
    Flat values;
  };

  /// Adds a tensor; throws argument_error for a name already taken or a shape whose size is not the view's.
  void add(std::string name, std::vector<std::size_t> shape, Flat values) {
    constexpr const char* fn = "camex::NamedTensors::add";
    if (find(name) != nullptr) throw argument_error(fn, "name", "a name not yet taken", concat('"', name, '"'));
    if (size_of(shape) != values.extent(0))
      throw argument_error(fn, "shape", concat("a shape of ", values.extent(0), " entries (the view's)"),
                           concat(describe(shape), " (", size_of(shape), " entries)"));
    entries_.push_back({std::move(name), std::move(shape), values});
  }

  /// Adds the rows [0, rows) of a row-major matrix whose rows are contiguous and adjacent, as one tensor.
  template <RowMajorMatrix M>
  void add_matrix(std::string name, std::vector<std::size_t> shape, const M& matrix) {
    if (matrix.extent(0) > 1 && static_cast<std::size_t>(row_stride(matrix)) != matrix.extent(1))
      throw argument_error("camex::NamedTensors::add_matrix", "matrix",
                           concat("adjacent rows (row stride ", matrix.extent(1), ") for tensor \"", name, '"'),
                           concat("row stride ", row_stride(matrix)));
    add(std::move(name), std::move(shape), Flat(matrix.data(), matrix.size()));
  }

  /// Adds a policy's or a router's parameters, each named `prefix` + its own name; a parameter without a
  /// shape is a vector of its entries.
  void add_parameters(const std::string& prefix, const std::vector<Parameter<Scalar, ExecSpace>>& parameters) {
    for (const auto& p : parameters) add(prefix + p.name, {p.value.extent(0)}, p.value);
  }

  const std::vector<Entry>& entries() const { return entries_; }

  /// The tensor called `name`; throws argument_error listing every name there is.
  const Entry& at(std::string_view name) const {
    if (const Entry* e = find(name)) return *e;
    throw argument_error("camex::NamedTensors::at", "name", concat("one of ", names()), concat('"', name, '"'));
  }

  /// Writes `values` (row-major, of `shape`, any floating type, on the host) into the tensor called `name`.
  /// Throws argument_error for an unknown name, another shape, or a value that is not finite or not
  /// representable in Scalar.
  template <std::floating_point U>
  void load(const ExecSpace& space, std::string_view name, std::span<const std::size_t> shape,
            std::span<const U> values) const {
    constexpr const char* fn = "camex::NamedTensors::load";
    const Entry& e = at(name);
    if (!std::ranges::equal(shape, e.shape))
      throw argument_error(fn, "shape", concat(describe(e.shape), " for \"", e.name, '"'),
                           describe(std::vector<std::size_t>(shape.begin(), shape.end())));
    if (values.size() != e.values.extent(0))
      throw argument_error(fn, "values", concat(e.values.extent(0), " entries for \"", e.name, '"'),
                           concat(values.size(), " entries"));
    Kokkos::View<Scalar*, Kokkos::HostSpace> host(Kokkos::view_alloc(Kokkos::WithoutInitializing, "camex::load"),
                                                  values.size());
    for (std::size_t k = 0; k < values.size(); ++k) {
      host(k) = static_cast<Scalar>(values[k]);
      if (!std::isfinite(host(k)))
        throw argument_error(fn, "values", concat("finite values that ", sizeof(Scalar) == 4 ? "float" : "double",
                                                  " represents, for \"", e.name, '"'),
                             concat("entry ", k, " = ", values[k]));
    }
    Kokkos::deep_copy(space, e.values, host);
    space.fence();
  }

  /// The tensor called `name`, row-major on the host (its shape is at(name).shape).
  std::vector<Scalar> save(const ExecSpace& space, std::string_view name) const {
    const Entry& e = at(name);
    std::vector<Scalar> out(e.values.extent(0));
    Kokkos::deep_copy(space, Kokkos::View<Scalar*, Kokkos::HostSpace, Kokkos::MemoryTraits<Kokkos::Unmanaged>>(out.data(), out.size()),
                      e.values);
    space.fence();
    return out;
  }

 private:
  const Entry* find(std::string_view name) const {
    for (const auto& e : entries_)
      if (e.name == name) return &e;
    return nullptr;
  }

  std::string names() const {
    std::string out;
    for (const auto& e : entries_) out += (out.empty() ? "\"" : ", \"") + e.name + '"';
    return out.empty() ? "(no tensors)" : out;
  }

  static std::size_t size_of(const std::vector<std::size_t>& shape) {
    std::size_t size = 1;
    for (const std::size_t d : shape) size *= d;
    return size;
  }

  static std::string describe(const std::vector<std::size_t>& shape) {
    std::string out = "[";
    for (std::size_t k = 0; k < shape.size(); ++k) out += (k ? ", " : "") + std::to_string(shape[k]);
    return out + ']';
  }

  std::vector<Entry> entries_;
};

}  // namespace camex
