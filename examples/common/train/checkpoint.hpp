#pragma once
// Checkpoints of any task: every trainable tensor with both AdamW moments and the step, in one safetensors file
// written atomically, with metadata naming the format, the configuration, the options that define the model's
// tensors, what the task adds (the tokenizer a language model's ids belong to) and the progress line's running sums
// since its last line. Resuming restores all of it, so a resumed run continues exactly as the uninterrupted one
// would have (same backend and thread count), its curves included. Upcycling
// starts a merged model from a dense checkpoint through the task's name map: every tensor the two share by name
// and shape, and each merged MLP tensor's experts and base from the dense tensor the map names.

#include <Kokkos_Core.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <regex>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/io/safetensors.hpp"
#include "common/train/adamw.hpp"
#include "common/train/loss.hpp"
#include "common/train/parameters.hpp"

namespace camex::examples {

template <class T>
HostTensor host_tensor(const std::string& name, const std::vector<std::size_t>& shape, const T* values, std::size_t count) {
  HostTensor t{name, dtype_of<T>(), shape, std::vector<unsigned char>(count * sizeof(T))};
  std::memcpy(t.bytes.data(), values, t.bytes.size());
  return t;
}

template <class T, class Space>
HostTensor host_tensor(const std::string& name, const std::vector<std::size_t>& shape, const typename Parameter<T, Space>::Flat& flat) {
  auto host = Kokkos::create_mirror_view_and_copy(Kokkos::HostSpace{}, flat);
  return host_tensor<T>(name, shape, host.data(), host.extent(0));
}

/// flat <- entries [begin, begin + flat's length) of the file's tensor `name`.
template <class T, class Space>
void load_tensor(const SafetensorsFile& file, const std::string& name, const std::vector<std::size_t>& shape,
                 const typename Parameter<T, Space>::Flat& flat, std::size_t begin = 0) {
  auto host = Kokkos::create_mirror_view(flat);
  const auto* bytes = static_cast<const unsigned char*>(file.tensor(name, dtype_of<T>(), shape));
  std::memcpy(host.data(), bytes + begin * sizeof(T), host.extent(0) * sizeof(T));
  Kokkos::deep_copy(flat, host);
}

/// Both AdamW moments of every tensor, whole, in the tensors' flat order, on the host: what the ranks of a sharded
/// optimiser gather onto rank 0 for a checkpoint.
template <class T>
struct HostMoments {
  Kokkos::View<T*, Kokkos::HostSpace> m, v;
};

/// What identifies a task's checkpoints: their format, the options that define the model's tensors, and the
/// task's own metadata with its check (`check` throws checkpoint_error when a file's metadata does not fit).
struct CheckpointIdentity {
  std::string format;
  nlohmann::json model;
  std::map<std::string, std::string> metadata;
  std::function<void(const SafetensorsFile&, const std::filesystem::path&)> check;
};

/// The losses a progress line averages: their sums over the steps since the last line. A checkpoint keeps them
/// (as exact decimal strings), so a run resumed between two lines averages over the same steps as the uninterrupted
/// one, in the same order.
struct ProgressWindow {
  double loss = 0, aux = 0, accuracy = 0;
  std::uint64_t steps = 0;

  void add(const LossParts& l) {
    loss += l.cross_entropy;
    aux += l.aux;
    accuracy += l.accuracy.value_or(0);
    ++steps;
  }

  void clear() { *this = {}; }

  void write_to(std::map<std::string, std::string>& metadata) const {
    const auto exact = [](double v) {
      char buf[40];
      std::snprintf(buf, sizeof buf, "%.17g", v);
      return std::string(buf);
    };
    metadata["window_steps"] = std::to_string(steps);
    metadata["window_loss"] = exact(loss);
    metadata["window_aux"] = exact(aux);
    metadata["window_accuracy"] = exact(accuracy);
  }

  /// The window a checkpoint holds; an empty one where it holds none (a checkpoint written on a progress line).
  static ProgressWindow read_from(const SafetensorsFile& file, const std::filesystem::path& path) {
    ProgressWindow w;
    if (!file.has_metadata("window_steps")) return w;
    try {
      w.steps = std::stoull(file.metadata("window_steps"));
      w.loss = std::stod(file.metadata("window_loss"));
      w.aux = std::stod(file.metadata("window_aux"));
      w.accuracy = std::stod(file.metadata("window_accuracy"));
    } catch (const std::logic_error&) {
      throw checkpoint_error("'" + path.string() + "' has a progress window that is not numbers (metadata window_*)");
    }
    return w;
  }
};

/// Writes the checkpoint: the moments from `adam`, which must own every entry, or from `gathered`, every shard's.
template <class T, class Space>
void save_checkpoint(const std::filesystem::path& path, const CheckpointIdentity& id, const nlohmann::json& config,
                     const AdamW<T, Space>& adam, const ProgressWindow& window, const HostMoments<T>* gathered = nullptr) {
  if (!gathered && !adam.owns_everything())
    throw std::logic_error("save_checkpoint: an optimiser shard holds part of the moments; gather them first");
  std::vector<HostTensor> tensors;
  const auto& list = adam.tensors();
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto& t = list[i];
    tensors.push_back(host_tensor<T, Space>(t.name, t.shape, t.flat.value));
    if (gathered) {
      const std::size_t at = adam.flat_offset(i), n = t.flat.value.extent(0);
      tensors.push_back(host_tensor<T>("adamw.m/" + t.name, t.shape, gathered->m.data() + at, n));
      tensors.push_back(host_tensor<T>("adamw.v/" + t.name, t.shape, gathered->v.data() + at, n));
    } else {
      const auto part = adam.owned_part(i);
      tensors.push_back(host_tensor<T, Space>("adamw.m/" + t.name, t.shape, part.m));
      tensors.push_back(host_tensor<T, Space>("adamw.v/" + t.name, t.shape, part.v));
    }
  }
  std::map<std::string, std::string> metadata = id.metadata;
  metadata["format"] = id.format;
  metadata["step"] = std::to_string(adam.steps_taken());
  metadata["config"] = config.dump();
  metadata["model"] = id.model.dump();
  window.write_to(metadata);
  write_safetensors(path, tensors, metadata);
}

/// Restores the parameters, the moments (of the part an optimiser shard owns), the step count and the progress
/// window; returns the step.
template <class T, class Space>
std::uint64_t load_checkpoint(const std::filesystem::path& path, const CheckpointIdentity& id, AdamW<T, Space>& adam,
                              ProgressWindow& window) {
  const SafetensorsFile file(path);
  if (file.metadata("format") != id.format)
    throw checkpoint_error("'" + path.string() + "' is a '" + file.metadata("format") + "' file, expected " + id.format);
  if (id.check) id.check(file, path);
  const auto saved = nlohmann::json::parse(file.metadata("model"));
  if (saved != id.model)
    throw checkpoint_error("'" + path.string() + "' holds a model configured " + saved.dump() + "; this run is " + id.model.dump());
  const auto& list = adam.tensors();
  for (std::size_t i = 0; i < list.size(); ++i) {
    const auto& t = list[i];
    load_tensor<T, Space>(file, t.name, t.shape, t.flat.value);
    const auto part = adam.owned_part(i);  // a shard reads the moments of its part
    load_tensor<T, Space>(file, "adamw.m/" + t.name, t.shape, part.m, part.begin);
    load_tensor<T, Space>(file, "adamw.v/" + t.name, t.shape, part.v, part.begin);
  }
  const std::uint64_t step = std::stoull(file.metadata("step"));
  adam.set_steps_taken(step);
  window = ProgressWindow::read_from(file, path);
  return step;
}

/// The dense tensor a merged MLP tensor starts from: "<prefix>mlp.{fc,proj}.{weight,bias}.{experts,base}" comes
/// from "<prefix>mlp.{fc,proj}.{weight,bias}" (the CAMEx code's upcycling); nothing for any other name.
inline std::optional<std::string> dense_mlp_tensor(const std::string& name) {
  static const std::regex merged(R"((.*\.mlp\.(fc|proj)\.(weight|bias))\.(experts|base))");
  std::smatch m;
  if (!std::regex_match(name, m, merged)) return std::nullopt;
  return m[1].str();
}

/// Copies a dense checkpoint into the model: tensors of the same name and shape as they are, and every tensor the
/// map sends to a dense one ([n, ...] experts or [1, ...] base) from n copies of it. Returns how many model
/// tensors were set.
template <class T, class Space>
std::size_t upcycle(const std::filesystem::path& path, const CheckpointIdentity& id,
                    const std::vector<NamedTensor<T, Space>>& tensors,
                    const std::function<std::optional<std::string>(const std::string&)>& dense_name) {
  const SafetensorsFile file(path);
  if (id.check) id.check(file, path);
  std::size_t set = 0;
  for (const auto& t : tensors) {
    if (file.contains(t.name)) {
      load_tensor<T, Space>(file, t.name, t.shape, t.flat.value);
      ++set;
    } else if (const auto dense = dense_name(t.name)) {
      const std::vector<std::size_t> dense_shape(t.shape.begin() + 1, t.shape.end());
      const unsigned char* source = file.tensor(*dense, dtype_of<T>(), dense_shape);
      std::size_t per = 1;
      for (const std::size_t e : dense_shape) per *= e;
      auto host = Kokkos::create_mirror_view(t.flat.value);
      for (std::size_t copy = 0; copy < t.shape[0]; ++copy) std::memcpy(host.data() + copy * per, source, per * sizeof(T));
      Kokkos::deep_copy(t.flat.value, host);
      ++set;
    }
  }
  if (set == 0)
    throw checkpoint_error("'" + path.string() + "' shares no tensor with this model: expected a dense " + id.format + " checkpoint");
  return set;
}

}  // namespace camex::examples
