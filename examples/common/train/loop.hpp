#pragma once
// The training loop of every trainer, over a small task interface (TrainingTask below): initialise, upcycle or
// resume; step (batch, forward, one zeroing, backward, AdamW); report progress, validation at intervals, the
// curves as CSV and PNG; checkpoint atomically; stop with a report and intact checkpoints when the run diverges.
// Everything a step draws (batches, augmentation, router noise, DARE masks) is keyed by (seed, step), so a
// resumed run continues exactly as the uninterrupted one would have (on the same backend and thread count). SIGINT
// and SIGTERM end the run after the step under way, with a checkpoint of it.
//
// Data parallelism (mpirun -np P): every rank holds the whole model and trains on its share of the step's batch
// (the task loads it: common/parallel/batch_share.hpp); the gradients of every trainable tensor are combined into the
// whole batch's (common/parallel/gradient_reduction.hpp: in buckets, each sent as soon as the backward has finished
// it, while the backward goes on) and the losses likewise, so every
// rank takes the same AdamW step (or, with --shard-optimizer, each updates its shard and the ranks exchange the
// updated shards). Rank 0 alone writes the run directory: configuration, curves, checkpoints.

#include <Kokkos_Core.hpp>
#include <camex/core/adaptive_threads.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <csignal>
#include <cmath>
#include <concepts>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/io/atomic_file.hpp"
#include "common/io/safetensors.hpp"
#include "common/parallel/reduction_for.hpp"
#include "common/parallel/optimiser_shards.hpp"
#include "common/parallel/ranks.hpp"
#include "common/train/adamw.hpp"
#include "common/train/checkpoint.hpp"
#include "common/train/config.hpp"
#include "common/train/curves.hpp"
#include "common/train/kernel_profile.hpp"
#include "common/train/loss.hpp"

namespace camex::examples {

/// A validation pass: the mean loss and the task's metric (perplexity, accuracy).
struct Evaluation {
  double loss = std::nan("");
  double metric = std::nan("");
};

/// What the loop needs of a task (smoe_lm's LmTask, smoe_vit's VitTask):
///   Model: forward on the task's loaded batch, zero_gradients, backward (telling which of its backward_groups()
///   are final as it goes), tensors(), arena().initialise(seed);
///   the configuration; the share of each batch this process trains on; the training batch of a step (that
///   share of it); a validation pass (over every rank's share, combined); what a step processes (the whole
///   batch) and its model FLOPs; the checkpoint identity and the map upcycling uses; the dump of one step for the PyTorch twin; the
///   lines a user reads.
template <class Task>
concept TrainingTask = requires(Task& task, const Task& c, typename Task::Model& model, const TrainSpace& space,
                                const StepContext& step, std::uint64_t n, const std::string& name) {
  typename Task::Model;
  { c.config() } -> std::convertible_to<const TrainerConfig<typename Task::ModelConfig>&>;
  { c.share() } -> std::convertible_to<BatchShare>;
  { task.load_training_batch(n) };
  { task.forward(model, space, step) } -> std::same_as<LossParts>;
  { task.evaluate(model, space) } -> std::same_as<Evaluation>;
  { c.items_per_step() } -> std::convertible_to<double>;
  { c.flops_per_item() } -> std::convertible_to<double>;
  { c.curve_columns() } -> std::same_as<CurveColumns>;
  { c.checkpoint_identity() } -> std::same_as<CheckpointIdentity>;
  { c.dense_name(name) } -> std::same_as<std::optional<std::string>>;
  { task.dump_batch(model) } -> std::same_as<std::vector<HostTensor>>;
  { c.describe(n) } -> std::same_as<std::string>;
  { c.evaluation_text(Evaluation{}) } -> std::same_as<std::string>;
  { c.summary(Evaluation{}) } -> std::same_as<std::string>;
  { c.title() } -> std::same_as<std::string>;
  { task.finish(model, space, Evaluation{}) } -> std::same_as<std::string>;
};

inline std::string clock_text(double seconds) {
  const long s = std::lround(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  return buf;
}

inline std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

/// Turns SIGINT and SIGTERM into a request the loop reads between steps (it then checkpoints and returns), for as
/// long as it lives; the previous handlers come back after. A second signal of the same kind finds the default
/// action again and ends the process at once, for a user who will not wait for the step.
class StopOnSignals {
 public:
  StopOnSignals() {
    struct sigaction action {};
    action.sa_handler = [](int signal) { requested_ = signal; };
    sigemptyset(&action.sa_mask);
    action.sa_flags = SA_RESETHAND | SA_RESTART;
    requested_ = 0;
    for (std::size_t i = 0; i < 2; ++i) sigaction(signals_[i], &action, &previous_[i]);
  }
  ~StopOnSignals() {
    for (std::size_t i = 0; i < 2; ++i) sigaction(signals_[i], &previous_[i], nullptr);
  }
  StopOnSignals(const StopOnSignals&) = delete;
  StopOnSignals& operator=(const StopOnSignals&) = delete;

  /// The signal that asked the run to stop, or 0.
  static int requested() { return requested_; }

 private:
  static inline volatile std::sig_atomic_t requested_ = 0;
  static constexpr int signals_[2] = {SIGINT, SIGTERM};
  struct sigaction previous_[2] {};
};

/// A run whose loss, gradients, activations or optimiser state stopped being finite. Thrown before the step's
/// checkpoint is written, so every checkpoint written so far stays as it was.
class training_diverged : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The report of a diverged run: the step, what became non-finite, the likely cause, and the last good checkpoint.
[[noreturn]] inline void diverged(double lr, std::uint64_t step, const std::string& what, const std::filesystem::path& checkpoint,
                                  std::uint64_t checkpoint_step) {
  char rate[32];
  std::snprintf(rate, sizeof rate, "%g", lr);
  std::string message = "training diverged at step " + std::to_string(step) + ": " + what +
                        ". The likely cause is a learning rate too high for this model (--lr " + rate +
                        "): lower it, lengthen the warm-up (--warmup) or tighten the clipping (--clip). ";
  if (!checkpoint.empty())
    message += "The last good checkpoint, " + checkpoint.string() + " (after step " + std::to_string(checkpoint_step) +
               "), is intact: --resume it with other options.";
  else
    message += "No checkpoint was written before it.";
  throw training_diverged(message);
}

/// The whole batch's losses from every rank's (each weighted by its share), alike on every rank.
inline LossParts combined(const Ranks& ranks, const BatchShare& share, const LossParts& mine) {
  if (ranks.size() == 1) return mine;
  double parts[3] = {mine.cross_entropy, mine.aux, mine.accuracy.value_or(0)};
  ranks.weighted_sum(parts, share.weight());
  LossParts all{.cross_entropy = parts[0], .aux = parts[1], .accuracy = std::nullopt};
  if (mine.accuracy) all.accuracy = parts[2];
  return all;
}

/// One forward and backward of step `step`'s batch, written with the parameters for an independent check (the
/// task's twin.py compare): "param/<name>", "grad/<name>", the task's batch and outputs, the losses.
/// In a run of several processes the gradients and losses are the whole batch's (combined across ranks) and the
/// batch itself, spread over the ranks, is left out; rank 0 writes.
template <TrainingTask Task>
int dump_step(Task& task, typename Task::Model& model, const AdamW<TrainScalar, TrainSpace>& adam,
              const std::vector<std::size_t>& bounds, const Ranks& ranks, std::uint64_t step, const std::string& format) {
  const TrainSpace space;
  const auto& c = task.config();
  GradientReductionFor<TrainScalar, TrainSpace> reduction(ranks, adam.tensors(), share_weights(ranks, task.share().whole), bounds);
  task.load_training_batch(step);
  model.zero_gradients(space);
  LossParts loss = task.forward(model, space, {.seed = c.optimiser.seed, .step = step, .stream = 0, .training = true});
  std::vector<HostTensor> out;
  if (ranks.size() == 1) out = task.dump_batch(model);
  model.backward(space);
  reduction.complete(space);
  loss = combined(ranks, task.share(), loss);
  if (!ranks.leader()) return 0;
  for (const auto& t : adam.tensors()) {
    out.push_back(host_tensor<TrainScalar, TrainSpace>("param/" + t.name, t.shape, t.flat.value));
    out.push_back(host_tensor<TrainScalar, TrainSpace>("grad/" + t.name, t.shape, t.flat.gradient));
  }
  nlohmann::json config = c;
  write_safetensors(c.run.dump_step, out,
                    {{"format", format}, {"config", config.dump()}, {"step", std::to_string(step)},
                     {"seed", std::to_string(c.optimiser.seed)}, {"cross_entropy", exact(loss.cross_entropy)},
                     {"aux", exact(loss.aux)}, {"ranks", std::to_string(ranks.size())}});
  std::printf("wrote step %llu's parameters, batch, losses (cross-entropy %.6f, aux %.3e) and gradients to %s\n",
              static_cast<unsigned long long>(step), loss.cross_entropy, loss.aux, c.run.dump_step.c_str());
  return 0;
}

/// Trains `model` on `task` (or, with --dump-step, writes one step for the twin in format `dump_format`).
template <TrainingTask Task>
int train(Task& task, std::unique_ptr<typename Task::Model> model_owner, const std::string& dump_format, const Ranks& ranks) {
  const TrainSpace space;
  auto& model = *model_owner;
  const auto& c = task.config();
  const auto& o = c.optimiser;
  const auto& r = c.run;
  model.arena().initialise(o.seed);
  const auto tensors = model.tensors();
  std::size_t parameters = 0;
  for (const auto& t : tensors) parameters += t.flat.value.extent(0);
  std::vector<std::size_t> lengths;
  for (const auto& t : tensors) lengths.push_back(t.flat.value.extent(0));
  // The ranks' shards start and end on AdamW's norm chunks, so that a shard of the optimiser has the unsharded bits.
  const auto cuts = norm_chunk_bounds(lengths, AdamW<TrainScalar, TrainSpace>::norm_chunk);
  const auto bounds = shard_bounds(cuts, ranks.size());
  const bool sharded = r.shard_optimizer && ranks.size() > 1;
  const ReductionPlan plan{.result = sharded ? ReducedGradients::own_shard : ReducedGradients::everywhere,
                           .groups = model.backward_groups(),
                           .bucket_entries = static_cast<std::size_t>(r.bucket_mb * 1e6 / sizeof(TrainScalar))};
  GradientReductionFor<TrainScalar, TrainSpace> reduction(ranks, tensors, share_weights(ranks, task.share().whole), bounds, plan);
  AdamW<TrainScalar, TrainSpace> adam(tensors, {.learning_rate = o.lr, .weight_decay = o.weight_decay, .clip = o.clip,
                                                .warmup = o.warmup, .total = o.steps, .final_fraction = o.final_lr_fraction},
                                      sharded ? std::optional(reduction.shard()) : std::nullopt);
  OptimiserShards<TrainScalar, TrainSpace> shards(ranks, reduction, adam, cuts, bounds, sharded);
  const CheckpointIdentity identity = task.checkpoint_identity();
  const std::filesystem::path out(r.out);
  const bool writes = ranks.leader();
  // Past a file-size limit (RLIMIT_FSIZE) a write then fails with EFBIG, which the checkpoint's writer reports,
  // instead of SIGXFSZ ending the process without a word.
  std::signal(SIGXFSZ, SIG_IGN);
  std::uint64_t start = 0;
  const std::filesystem::path checkpoint = out / "checkpoint.safetensors";
  std::filesystem::path last_checkpoint;  // the last checkpoint this run wrote or resumed from, and its step
  std::uint64_t checkpointed = 0;
  ProgressWindow window;
  if (!r.resume.empty()) {
    start = load_checkpoint(r.resume, identity, adam, window);
    last_checkpoint = r.resume;
    checkpointed = start;
    std::printf("resumed from %s at step %llu\n", r.resume.c_str(), static_cast<unsigned long long>(start));
  } else if (!r.upcycle_from.empty()) {
    const std::size_t set = upcycle<TrainScalar, TrainSpace>(r.upcycle_from, identity, tensors,
                                                             [&](const std::string& name) { return task.dense_name(name); });
    std::printf("upcycled %zu tensors from %s\n", set, r.upcycle_from.c_str());
  }
  if (!r.dump_step.empty()) return dump_step(task, model, adam, bounds, ranks, start, dump_format);
  const CurveColumns columns = task.curve_columns();
  const double flops_per_item = task.flops_per_item(), items_per_step = task.items_per_step();
  std::printf("%s\n", task.describe(parameters).c_str());
  if (ranks.size() > 1)
    std::printf("data parallel: %d processes share each step's batch (--batch %zu, rank 0 trains on %zu of it); each sends "
                "%.2f MB of gradients a step in %zu buckets%s; rank 0 holds %.2f MB of AdamW moments\n",
                ranks.size(), task.share().whole, task.share().count,
                static_cast<double>(reduction.values_sent_per_step() * sizeof(TrainScalar)) / 1e6, reduction.buckets(),
                sharded ? " (their shards' sums, then its updated shard of the parameters)" : "",
                2e-6 * static_cast<double>(adam.owned().size() * sizeof(TrainScalar)));
  if (r.plan) {
    // A ring all-reduce, and the reduce-scatter and all-gather here, send 2 (P - 1) / P of the gradients per rank.
    std::printf("plan: %zu gradient entries (%.2f MB) a step; on P processes each sends 2 (P - 1) / P of them: %.2f MB at "
                "P = 2, %.2f MB at P = 8\n",
                parameters, 1e-6 * static_cast<double>(parameters * sizeof(TrainScalar)),
                1e-6 * static_cast<double>(parameters * sizeof(TrainScalar)),
                1e-6 * (2.0 * 7 / 8) * static_cast<double>(parameters * sizeof(TrainScalar)));
    return 0;
  }
  if (writes) {
    std::filesystem::create_directories(out);
    nlohmann::json config = c;
    write_text_atomically(out / "config.json", config.dump(2) + "\n");
  }
  std::optional<CurveLog> curves;
  if (writes) curves.emplace(out / "curves.csv", columns, start);
  std::fflush(stdout);

  if (r.profile) KernelProfile::start();
  using Clock = std::chrono::steady_clock;
  const auto began = Clock::now();
  auto window_began = began;
  std::uint64_t timed_steps = 0;  // steps of this process since its last progress line
  Evaluation last_valid;
  const StopOnSignals signals;
  double train_seconds = 0, train_items = 0;  // steps only, evaluation excluded
  const HostThreads width = r.host_threads == "all"           ? HostThreads::all
                            : r.host_threads == "all-but-one" ? HostThreads::all_but_one
                                                              : HostThreads::automatic;  // validate_shared checked it
  AdaptiveThreads<TrainSpace> threads({.choice = width});
  std::uint64_t width_switches = 0;
  for (std::uint64_t step = start; step < o.steps; ++step) {
    task.load_training_batch(step);
    LossParts loss;
    double rate = 0, norm = 0;
    threads.run(space, [&](const TrainSpace& on) {
      try {
        loss = task.forward(model, on, {.seed = o.seed, .step = step, .stream = 0, .training = true});
      } catch (const argument_error& e) {
        // The merged layers reject non-finite tokens (their routing means) and routing scores: the model's own
        // activations, computed from finite parameters, overflowed.
        if (e.argument() != "x" && e.argument() != "scores") throw;
        diverged(o.lr, step, std::string("the activations became non-finite (") + e.what() + ")", last_checkpoint, checkpointed);
      }
      if (!std::isfinite(loss.cross_entropy) || !std::isfinite(loss.aux))
        diverged(o.lr, step, "the loss became " + exact(loss.cross_entropy) + " (auxiliary " + exact(loss.aux) + ")",
                 last_checkpoint, checkpointed);
      model.zero_gradients(on);
      model.backward(on, [&](std::size_t group) { reduction.gradients_ready(on, group); });
      reduction.complete(on);
      loss = combined(ranks, task.share(), loss);
      rate = adam.next_rate();
      const double gradient_norm = shards.gradient_norm(on);
      if (!std::isfinite(gradient_norm))
        diverged(o.lr, step, "the gradient norm became " + exact(gradient_norm), last_checkpoint, checkpointed);
      norm = adam.step(on, gradient_norm);
      if (const std::uint64_t overflows = shards.last_step_overflows())
        diverged(o.lr, step,
                 "the AdamW update left " + std::to_string(overflows) +
                     " parameters or moments non-finite (a gradient norm of " + exact(gradient_norm) +
                     ", whose squares exceed the float range)",
                 last_checkpoint, checkpointed);
      if (sharded) reduction.all_gather_values(on);
    });
    if (threads.chooser().switches() != width_switches) {
      width_switches = threads.chooser().switches();
      const int all = static_cast<int>(space.concurrency()), used = threads.chooser().narrow() ? all - 1 : all;
      std::printf("step %llu: %d of %d threads from here on: %.1f ms a step against %.1f on %d\n",
                  static_cast<unsigned long long>(step + 1), used, all, 1e3 * threads.chooser().tried_seconds(),
                  1e3 * threads.chooser().compared_seconds(), used == all ? all - 1 : all);
    }
    window.add(loss);
    ++timed_steps;
    const std::uint64_t done = step + 1;
    const bool last = done == o.steps, log_now = done % r.log_every == 0 || last;
    const bool eval_now = done % r.eval_every == 0 || last;
    if (log_now) {
      space.fence();
      const auto now = Clock::now();
      const double window_seconds = std::chrono::duration<double>(now - window_began).count();
      const double window_items = static_cast<double>(timed_steps) * items_per_step;
      train_seconds += window_seconds;
      train_items += window_items;
      const double ms = 1e3 * window_seconds / static_cast<double>(timed_steps);
      const double items_per_s = window_items / window_seconds;
      const double eta = static_cast<double>(o.steps - done) * ms / 1e3;
      const auto steps = static_cast<double>(window.steps);
      CurveRow row{.step = done, .train_loss = window.loss / steps, .aux_loss = window.aux / steps,
                   .learning_rate = rate, .grad_norm = norm, .items_per_second = items_per_s, .ms_per_step = ms};
      if (eval_now) {
        KernelProfile::pause();  // evaluation is not a training step's time
        last_valid = task.evaluate(model, space);
        if (r.profile) KernelProfile::resume();
        row.valid_loss = last_valid.loss;
        row.valid_metric = last_valid.metric;
      }
      char accuracy[32] = "";
      if (loss.accuracy) std::snprintf(accuracy, sizeof accuracy, " | acc %.3f", window.accuracy / steps);
      std::printf("step %6llu/%llu | loss %.4f%s | aux %.2e | lr %.2e | |g| %.3f | %8.0f %s/s | %7.1f ms/step | ETA %s%s\n",
                  static_cast<unsigned long long>(done), static_cast<unsigned long long>(o.steps), row.train_loss, accuracy,
                  row.aux_loss, rate, norm, items_per_s, columns.unit.c_str(), ms, clock_text(eta).c_str(),
                  eval_now ? (" | " + task.evaluation_text(last_valid)).c_str() : "");
      std::fflush(stdout);
      if (curves) {
        curves->add(row);
        curves->write();
      }
      window_began = Clock::now();  // evaluation time is not counted as training time
      window.clear();
      timed_steps = 0;
    }
    // Every rank stops after the same step, whichever of them the signal reached.
    const int stop_signal = static_cast<int>(ranks.max(static_cast<std::uint64_t>(StopOnSignals::requested())));
    if (last || done == r.stop_after || stop_signal != 0 || (r.checkpoint_every > 0 && done % r.checkpoint_every == 0)) {
      if (sharded) {
        const HostMoments<TrainScalar> moments = shards.gather_moments();  // every rank sends; rank 0 holds them
        if (writes) save_checkpoint(checkpoint, identity, nlohmann::json(c), adam, window, &moments);
      } else if (writes) {
        save_checkpoint(checkpoint, identity, nlohmann::json(c), adam, window);
      }
      last_checkpoint = checkpoint;
      checkpointed = done;
    }
    if (stop_signal != 0 && !last) {
      std::printf("stopped by %s after step %llu; continue with --resume %s\n", stop_signal == SIGINT ? "SIGINT" : "SIGTERM",
                  static_cast<unsigned long long>(done), checkpoint.c_str());
      std::fflush(stdout);
      return 128 + stop_signal;
    }
    if (done == r.stop_after) {
      std::printf("stopped after step %llu (--stop-after); continue with --resume %s\n",
                  static_cast<unsigned long long>(done), checkpoint.c_str());
      return 0;
    }
  }
  KernelProfile::pause();
  if (start >= o.steps) last_valid = task.evaluate(model, space);
  if (o.steps > start && ranks.size() > 1)
    std::printf("gradient reduction: %.2f ms a step on rank 0, %.2f of them after the backward (what it did not hide), "
                "%.2f in MPI (the transfers, and waiting for the slowest rank), the rest packing and the ordered sums\n",
                1e3 * reduction.seconds() / static_cast<double>(std::max<std::size_t>(1, reduction.calls())),
                1e3 * reduction.after_backward_seconds() / static_cast<double>(std::max<std::size_t>(1, reduction.calls())),
                1e3 * reduction.mpi_seconds() / static_cast<double>(std::max<std::size_t>(1, reduction.calls())));
  if (r.profile && o.steps > start && writes) {
    std::printf("%s", KernelProfile::report(train_seconds, o.steps - start).c_str());
    write_atomically(out / "kernels.csv", [&](std::ofstream& f) {
      f << "category,ms_per_step,share_of_step\n";
      double kernels = 0;
      for (const auto& category : KernelProfile::by_category()) {
        kernels += category.second;
        f << '"' << category.first << "\"," << 1e3 * category.second / static_cast<double>(o.steps - start) << ','
          << category.second / train_seconds << '\n';
      }
      f << "\"outside kernels\"," << 1e3 * (train_seconds - kernels) / static_cast<double>(o.steps - start) << ','
        << (train_seconds - kernels) / train_seconds << '\n';
    });
  }
  std::string png;
  if (r.plot && curves)
    png = curves->plot(out / "curves.png", task.title(),
                      "cross-entropy (nats per " + columns.items.substr(0, columns.items.size() - 1) + ")");
  const double rate = train_seconds > 0 ? train_items / train_seconds : 0.0;
  std::printf("%s after %llu steps, %.1f s; training %.0f %s/s = %.1f GFLOP/s of model FLOPs\n",
              task.summary(last_valid).c_str(), static_cast<unsigned long long>(o.steps),
              std::chrono::duration<double>(Clock::now() - began).count(), rate, columns.items.c_str(),
              flops_per_item * rate / 1e9);
  std::printf("%s", task.finish(model, space, last_valid).c_str());
  std::printf("curves: %s%s\ncheckpoint: %s\n", (out / "curves.csv").c_str(), png.empty() ? "" : (" and " + png).c_str(),
              checkpoint.c_str());
  return 0;
}

}  // namespace camex::examples
