#include "dcpp/tools/async_demo.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <thread>

#include "dcpp/async_checkpointer.h"
#include "dcpp/base/exception_barrier.h"
#include "dcpp/tools/demo_state.h"

namespace dcpp::tools {
namespace {

using namespace demo;  // the shared synthetic state (demo_state.h)
using Clock = std::chrono::steady_clock;

// The compute of a training step: a small dense matmul (it stays in the
// cache, so it competes with a background save for cores, not for memory
// bandwidth), repeated a calibrated number of times.
class Compute {
 public:
  Compute() : a_(kN * kN), b_(kN * kN), c_(kN * kN) {
    for (int i = 0; i < kN * kN; ++i) {
      a_[i] = 0.5f + static_cast<float>(i * 37 % 101) / 202.f;
      b_[i] = static_cast<float>(i * 53 % 103) / 103.f;
    }
  }
  void Run(int64_t iterations) {
    for (int64_t it = 0; it < iterations; ++it) {
      for (int i = 0; i < kN; ++i) {
        float* c = &c_[i * kN];
        std::fill(c, c + kN, 0.f);
        for (int k = 0; k < kN; ++k) {
          const float a = a_[i * kN + k];
          const float* b = &b_[k * kN];
          for (int j = 0; j < kN; ++j) c[j] += a * b[j];
        }
      }
      // Feed a result back so no iteration repeats the previous one. With
      // a in [0.5, 1) and b in [0, 1), 0 <= c < kN: a stays in [0.5, 1), so
      // no value decays into denormals (which would slow the loop tenfold).
      const size_t at = static_cast<size_t>(it % (kN * kN));
      a_[at] = 0.5f + c_[at] / (2.f * kN);
    }
    sink_ = sink_ + c_[0];
  }

 private:
  static constexpr int kN = 48;
  std::vector<float> a_, b_, c_;
  volatile float sink_ = 0;
};

// One rank's part of the training state, at some step.
struct TrainingState {
  Value state;
  std::vector<Tensor> shards;     // in spec order
  std::vector<uint64_t> offsets;  // each shard's global byte offset
  int64_t step = 0;

  // The optimizer's update: every byte of every tensor changes.
  void MoveTo(int64_t to) {
    const uint64_t w = Stamp(step) ^ Stamp(to);
    for (size_t i = 0; i < shards.size(); ++i)
      XorStamp(w, offsets[i], static_cast<uint8_t*>(shards[i].data()), shards[i].nbytes());
    state["step"] = to;
    step = to;
  }
  uint64_t bytes() const {
    uint64_t n = 0;
    for (const Tensor& t : shards) n += t.nbytes();
    return n;
  }
};

Result<TrainingState> MakeTrainingState(const std::vector<Spec>& specs, ProcessGroup& pg) {
  TrainingState ts;
  DCPP_ASSIGN_OR_RETURN(ts.state, MakeRowShardState(specs, pg.size(), pg.rank(), 0, &ts.shards));
  for (const Spec& s : specs) {
    const plan::Box box = PieceBox(s.shape, 0, pg.size(), pg.rank());
    const int64_t row = s.shape.size() > 1 ? s.shape[1] : 1;
    ts.offsets.push_back(static_cast<uint64_t>(box.offsets[0] * row) * ElementSize(s.dtype));
  }
  return ts;
}

// What one rank measured in one loop.
struct RankCheckpoint {
  double step = 0, blocked = 0, stage = 0, write = 0, staged = 0, grew = 0;
  double waited = 0;  // 1: the previous save was still being written at the call
};
struct RankLoop {
  std::vector<double> step_seconds;
  std::vector<double> in_flight;  // per step: index of the save being written, or -1
  std::vector<RankCheckpoint> checkpoints;
  double wall = 0, drain = 0;
};

// Per-rank results travel to rank 0 as raw doubles: every rank runs this
// binary on this machine.
class Packer {
 public:
  void Put(double d) { out_.append(reinterpret_cast<const char*>(&d), sizeof d); }
  void Put(const std::vector<double>& v) {
    Put(static_cast<double>(v.size()));
    for (double d : v) Put(d);
  }
  void Put(const RankLoop& l) {
    Put(l.step_seconds);
    Put(l.in_flight);
    Put(static_cast<double>(l.checkpoints.size()));
    for (const auto& c : l.checkpoints)
      for (double d : {c.step, c.blocked, c.stage, c.write, c.staged, c.grew, c.waited}) Put(d);
    Put(l.wall);
    Put(l.drain);
  }
  std::string& str() { return out_; }

 private:
  std::string out_;
};

class Unpacker {
 public:
  explicit Unpacker(const std::string& in) : in_(in) {}
  double Get() {
    double d = 0;
    if (pos_ + sizeof d <= in_.size()) std::memcpy(&d, in_.data() + pos_, sizeof d);
    pos_ += sizeof d;
    return d;
  }
  std::vector<double> GetVector() {
    std::vector<double> v(static_cast<size_t>(Get()));
    for (double& d : v) d = Get();
    return v;
  }
  RankLoop GetLoop() {
    RankLoop l;
    l.step_seconds = GetVector();
    l.in_flight = GetVector();
    l.checkpoints.resize(static_cast<size_t>(Get()));
    for (auto& c : l.checkpoints)
      for (double* d : {&c.step, &c.blocked, &c.stage, &c.write, &c.staged, &c.grew, &c.waited})
        *d = Get();
    l.wall = Get();
    l.drain = Get();
    return l;
  }

 private:
  const std::string& in_;
  size_t pos_ = 0;
};

// Calibration shared by the ranks (agreed through collectives).
struct Calibration {
  int64_t iterations = 0;  // compute per step
  double update_seconds = 0;
  double compute_seconds = 0;
  double memcpy_seconds = 0;  // this rank's
};

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double d : v) s += d;
  return v.empty() ? 0 : s / static_cast<double>(v.size());
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Every rank's `mine`, reduced with `pick` (std::max or std::min).
Result<double> ReduceOverRanks(ProcessGroup& pg, double mine,
                               const double& (*pick)(const double&, const double&)) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", mine);
  DCPP_ASSIGN_OR_RETURN(auto all, pg.AllGather(text));
  double r = mine;
  for (const auto& s : all) r = pick(r, std::strtod(s.c_str(), nullptr));
  return r;
}

// All ranks at once, as they will run in the loops: the update pass, the
// compute rate (the slowest rank's sets the work), and a single-threaded
// memcpy of the rank's state into preallocated, pre-faulted memory.
Result<Calibration> Calibrate(ProcessGroup& pg, const AsyncDemoOptions& o, TrainingState& ts,
                              Compute& compute) {
  Calibration c;
  double update = 1e9;
  for (int rep = 0; rep < 2; ++rep) {
    DCPP_RETURN_IF_ERROR(pg.Barrier());
    const auto t0 = Clock::now();
    ts.MoveTo(ts.step);  // a full pass that leaves the values as they are
    update = std::min(update, Seconds(t0));
  }
  DCPP_ASSIGN_OR_RETURN(c.update_seconds, ReduceOverRanks(pg, update, std::max<double>));

  compute.Run(4);  // warm up
  DCPP_RETURN_IF_ERROR(pg.Barrier());
  int64_t done = 0;
  const auto t0 = Clock::now();
  while (Seconds(t0) < 0.25) {
    compute.Run(8);
    done += 8;
  }
  DCPP_ASSIGN_OR_RETURN(double rate, ReduceOverRanks(pg, done / Seconds(t0), std::min<double>));
  c.compute_seconds = std::max(0.0, o.step_ms / 1000.0 - c.update_seconds);
  c.iterations = static_cast<int64_t>(std::llround(c.compute_seconds * rate));

  const uint64_t bytes = ts.bytes();
  std::unique_ptr<uint8_t[]> dst(new uint8_t[std::max<uint64_t>(bytes, 1)]);
  std::memset(dst.get(), 1, bytes);  // faults every page in
  // The median of a few copies, as the stall it is compared with is the
  // median of a few saves.
  std::vector<double> copies;
  for (int rep = 0; rep < 5; ++rep) {
    DCPP_RETURN_IF_ERROR(pg.Barrier());
    const auto t = Clock::now();
    uint64_t at = 0;
    for (const Tensor& s : ts.shards) {
      std::memcpy(dst.get() + at, s.data(), s.nbytes());
      at += s.nbytes();
    }
    copies.push_back(Seconds(t));
    // Reading the copy back keeps it from being optimized away.
    const Tensor& last = ts.shards.back();
    if (last.nbytes() > 0 &&
        std::memcmp(dst.get() + bytes - last.nbytes(), last.data(), last.nbytes()) != 0)
      return InternalError("demo: memcpy produced different bytes");
  }
  c.memcpy_seconds = Median(copies);
  return c;
}

std::string StepDir(const std::string& dir, bool async, int step) {
  char name[32];
  std::snprintf(name, sizeof name, "/step_%06d", step);
  return dir + (async ? "/async" : "/sync") + name;
}

// One training loop on one rank, from step 0 to o.steps.
Status TrainLoop(ProcessGroup& pg, const AsyncDemoOptions& o, const Calibration& cal,
                 TrainingState& ts, Compute& compute, AsyncCheckpointer* checkpointer,
                 const std::string& dir, RankLoop* out) {
  const bool async = checkpointer != nullptr;
  ts.MoveTo(0);
  std::vector<AsyncSaveHandle> saves;
  DCPP_RETURN_IF_ERROR(pg.Barrier());
  const auto start = Clock::now();
  for (int step = 1; step <= o.steps; ++step) {
    const auto t0 = Clock::now();
    const bool writing = !saves.empty() && !saves.back().Done();
    ts.MoveTo(step);              // the optimizer updates every tensor
    compute.Run(cal.iterations);  // forward and backward
    // The gradient all-reduce: on the caller's group, while a background
    // save runs its own collectives on the checkpointer's duplicate.
    DCPP_RETURN_IF_ERROR(pg.AllGather(std::string()).status());
    out->step_seconds.push_back(Seconds(t0));
    out->in_flight.push_back(writing ? static_cast<double>(saves.size() - 1) : -1);
    if (step % o.every != 0) continue;
    SaveOptions so;
    so.process_group = &pg;
    so.files_per_rank = o.thread_count;
    so.sync_files = o.sync_files;
    RankCheckpoint c;
    c.step = step;
    const auto t1 = Clock::now();
    if (async) {
      c.waited = !saves.empty() && !saves.back().Done() ? 1 : 0;
      saves.push_back(checkpointer->Save(ts.state, StepDir(dir, true, step), so));
      c.blocked = Seconds(t1);
    } else {
      Result<Metadata> md = Save(ts.state, StepDir(dir, false, step), so);
      c.blocked = Seconds(t1);
      if (!md.ok()) return md.status();
    }
    out->checkpoints.push_back(c);
  }
  out->wall = Seconds(start);
  if (!async) return Status();
  // Training would go on: the state changes while the last write runs, and
  // the checkpoint must not see it.
  ts.MoveTo(o.steps + 1);
  const auto t2 = Clock::now();
  for (size_t i = 0; i < saves.size(); ++i) {
    Result<Metadata> md = saves[i].Wait();
    if (!md.ok())
      return md.status().WithContext("async checkpoint of step " +
                                     std::to_string(static_cast<int>(out->checkpoints[i].step)));
    const AsyncSaveStats st = saves[i].stats();
    RankCheckpoint& c = out->checkpoints[i];
    c.stage = st.stage_seconds;
    c.write = st.write_seconds;
    c.staged = static_cast<double>(st.staged_bytes);
    c.grew = st.pool_grew ? 1 : 0;
  }
  out->drain = Seconds(t2);
  return Status();
}

// Rank 0's view of a loop: its step times, every rank's worst checkpoint.
AsyncDemoLoop Combine(const std::vector<RankLoop>& ranks) {
  AsyncDemoLoop l;
  const RankLoop& r0 = ranks[0];
  l.step_seconds = r0.step_seconds;
  std::vector<double> clean, overlapped;
  for (size_t s = 0; s < r0.step_seconds.size(); ++s)
    (r0.in_flight[s] < 0 ? clean : overlapped).push_back(r0.step_seconds[s]);
  l.clean_steps = static_cast<int>(clean.size());
  l.overlapped_steps = static_cast<int>(overlapped.size());
  l.clean_step_seconds = Mean(clean);
  l.overlapped_step_seconds = Mean(overlapped);
  for (size_t i = 0; i < r0.checkpoints.size(); ++i) {
    AsyncDemoCheckpoint c;
    c.step = static_cast<int>(r0.checkpoints[i].step);
    for (const RankLoop& r : ranks) {
      if (i >= r.checkpoints.size()) continue;
      const RankCheckpoint& rc = r.checkpoints[i];
      c.blocked_seconds = std::max(c.blocked_seconds, rc.blocked);
      c.stage_seconds = std::max(c.stage_seconds, rc.stage);
      c.write_seconds = std::max(c.write_seconds, rc.write);
      c.staged_bytes += static_cast<uint64_t>(rc.staged);
      c.pool_grew = c.pool_grew || rc.grew != 0;
      c.waited_for_previous = c.waited_for_previous || rc.waited != 0;
    }
    std::vector<double> during;
    for (size_t s = 0; s < r0.step_seconds.size(); ++s)
      if (r0.in_flight[s] == static_cast<double>(i)) during.push_back(r0.step_seconds[s]);
    c.overlapped_steps = static_cast<int>(during.size());
    c.overlapped_step_seconds = Mean(during);
    l.checkpoints.push_back(c);
  }
  for (const RankLoop& r : ranks) {
    l.wall_seconds = std::max(l.wall_seconds, r.wall);
    l.drain_seconds = std::max(l.drain_seconds, r.drain);
  }
  return l;
}

// Everything a rank does before the load: state, calibration, both loops;
// rank 0 fills `report`.
Status TrainRank(ProcessGroup& pg, const AsyncDemoOptions& o, const std::vector<Spec>& specs,
                 const std::string& dir, AsyncDemoReport* report) {
  const bool root = pg.rank() == 0;
  auto note = [&](const std::string& line) {
    if (root && o.note) o.note(line);
  };
  DCPP_ASSIGN_OR_RETURN(TrainingState ts, MakeTrainingState(specs, pg));
  // Made before the loops: Create is collective and allocates nothing yet.
  AsyncCheckpointerOptions co;
  co.process_group = &pg;
  co.staging_threads = o.staging_threads;
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<AsyncCheckpointer> checkpointer,
                        AsyncCheckpointer::Create(co));
  Compute compute;
  note("calibrating the step's compute to " + std::to_string(o.step_ms) + " ms");
  DCPP_ASSIGN_OR_RETURN(Calibration cal, Calibrate(pg, o, ts, compute));
  const int checkpoints = o.steps / o.every;
  note("sync loop: " + std::to_string(o.steps) + " steps, dcpp::Save every " +
       std::to_string(o.every) + " (" + std::to_string(checkpoints) + " checkpoints)");
  RankLoop sync_loop, async_loop;
  DCPP_RETURN_IF_ERROR(TrainLoop(pg, o, cal, ts, compute, nullptr, dir, &sync_loop));
  note("async loop: the same steps, AsyncCheckpointer::Save every " + std::to_string(o.every));
  DCPP_RETURN_IF_ERROR(TrainLoop(pg, o, cal, ts, compute, checkpointer.get(), dir, &async_loop));

  Packer p;
  p.Put(static_cast<double>(ts.bytes()));
  p.Put(cal.memcpy_seconds);
  p.Put(sync_loop);
  p.Put(async_loop);
  DCPP_ASSIGN_OR_RETURN(std::vector<std::string> all, pg.Gather(std::move(p.str()), 0));
  if (!root) return Status();
  std::vector<RankLoop> syncs, asyncs;
  for (const std::string& s : all) {
    Unpacker u(s);
    report->rank_bytes = std::max(report->rank_bytes, static_cast<uint64_t>(u.Get()));
    report->memcpy_seconds = std::max(report->memcpy_seconds, u.Get());
    syncs.push_back(u.GetLoop());
    asyncs.push_back(u.GetLoop());
  }
  report->update_seconds = cal.update_seconds;
  report->compute_seconds = cal.compute_seconds;
  report->sync_loop = Combine(syncs);
  report->async_loop = Combine(asyncs);
  std::vector<double> clean;
  for (const RankLoop* l : {&syncs[0], &asyncs[0]})
    for (size_t s = 0; s < l->step_seconds.size(); ++s)
      if (l->in_flight[s] < 0) clean.push_back(l->step_seconds[s]);
  report->baseline_step_seconds = Median(clean);
  return Status();
}

}  // namespace

static Result<AsyncDemoReport> RunAsyncDemoImpl(const AsyncDemoOptions& o) {
  if (o.ranks < 1 || o.load_ranks < 1 || o.thread_count < 1 || o.steps < 1 || o.every < 1 ||
      o.step_ms < 0 || o.staging_threads < 0)
    return InvalidArgumentError("demo --async: rank, thread and step counts must be >= 1");
  if (o.every > o.steps)
    return InvalidArgumentError("demo --async: a checkpoint every " + std::to_string(o.every) +
                                " steps needs at least that many steps (got " +
                                std::to_string(o.steps) + ")");
  AsyncDemoReport r;
  const bool is_root = !o.group || o.group->rank() == 0;
  r.dir = o.dir;
  if (r.dir.empty() && is_root) {
    DCPP_ASSIGN_OR_RETURN(r.dir, MakeDemoDir());
  }
  if (o.group) {
    DCPP_ASSIGN_OR_RETURN(r.dir, o.group->Broadcast(r.dir, 0));
  }
  const auto specs = TransformerSpecs(o.size_mib);
  for (const Spec& s : specs) r.state_bytes += NumElements(s.shape) * ElementSize(s.dtype);
  r.tensors = specs.size();
  r.verified_step = o.steps / o.every * o.every;

  std::atomic<uint64_t> verified_bytes{0};
  std::atomic<size_t> verified_pieces{0};
  auto note = [&](const std::string& line) {
    if (is_root && o.note) o.note(line);
  };
  const std::string last = r.dir + "/async/step_" + [&] {
    char b[16];
    std::snprintf(b, sizeof b, "%06d", r.verified_step);
    return std::string(b);
  }();
  if (o.group) {
    r.ranks_kind = std::string(o.group->kind());
    r.ranks = r.load_ranks = o.group->size();
    DCPP_RETURN_IF_ERROR(TrainRank(*o.group, o, specs, r.dir, &r));
    note("loading the last async checkpoint (step " + std::to_string(r.verified_step) +
         ") with column shards");
    DCPP_RETURN_IF_ERROR(o.group->Barrier());
    const auto t0 = Clock::now();
    DCPP_RETURN_IF_ERROR(LoadAndVerify(*o.group, specs, last, o.thread_count, nullptr,
                                       r.verified_step, &verified_bytes, &verified_pieces));
    DCPP_RETURN_IF_ERROR(SumVerifiedCounts(*o.group, &verified_bytes, &verified_pieces));
    r.load_seconds = Seconds(t0);
  } else {
    r.ranks_kind = "threads";
    r.ranks = o.ranks;
    r.load_ranks = o.load_ranks;
    DCPP_RETURN_IF_ERROR(FirstError(RunOnThreadRanks(o.ranks, [&](ProcessGroup& pg) {
      return TrainRank(pg, o, specs, r.dir, pg.rank() == 0 ? &r : nullptr);
    })));
    note("loading the last async checkpoint (step " + std::to_string(r.verified_step) + ") on " +
         std::to_string(o.load_ranks) + " ranks with column shards");
    const auto t0 = Clock::now();
    DCPP_RETURN_IF_ERROR(FirstError(RunOnThreadRanks(o.load_ranks, [&](ProcessGroup& pg) {
      return LoadAndVerify(pg, specs, last, o.thread_count, nullptr, r.verified_step,
                           &verified_bytes, &verified_pieces);
    })));
    r.load_seconds = Seconds(t0);
  }
  r.verified_bytes = verified_bytes;
  r.verified_pieces = verified_pieces;
  if (is_root && r.verified_bytes != r.state_bytes)
    return DataLossError("demo: verified " + std::to_string(r.verified_bytes) + " of " +
                         std::to_string(r.state_bytes) + " bytes: pieces were lost");
  if (o.group) DCPP_RETURN_IF_ERROR(o.group->Barrier());
  if (!o.keep && is_root) std::filesystem::remove_all(r.dir);
  return r;
}

Result<AsyncDemoReport> RunAsyncDemo(const AsyncDemoOptions& o) {
  return CatchExceptions("demo --async", [&] { return RunAsyncDemoImpl(o); });
}

namespace {

std::string Ms(double seconds) {
  char b[32];
  std::snprintf(b, sizeof b, seconds < 10 ? "%.1f ms" : "%.0f ms", seconds * 1000);
  return b;
}

std::string Rate(double bytes, double seconds) {
  return seconds > 0 ? Human(bytes / seconds) + "/s" : "-";
}

std::string Percent(double value, double base) {
  char b[32];
  std::snprintf(b, sizeof b, "%+.0f%%", base > 0 ? (value / base - 1) * 100 : 0.0);
  return b;
}

}  // namespace

std::string FormatAsyncDemoReport(const AsyncDemoOptions& o, const AsyncDemoReport& r) {
  char buf[1024];
  std::string out;
  auto line = [&](const char* fmt, auto... args) {
    std::snprintf(buf, sizeof buf, fmt, args...);
    out += buf;
  };
  const double base = r.baseline_step_seconds;
  const int n_ckpt = static_cast<int>(r.async_loop.checkpoints.size());
  line("dcpp demo --async: a training loop that checkpoints every %d steps, once with dcpp::Save "
       "and once with AsyncCheckpointer::Save\n",
       o.every);
  line("  ranks      %d %s, each holding a row shard of every tensor\n", r.ranks,
       r.ranks_kind == "threads" ? "threads" : (r.ranks_kind + " processes").c_str());
  line("  state      %zu tensors (bf16 weights, fp32 Adam moments), %s in all, %s on the largest "
       "rank\n",
       r.tensors, Human(static_cast<double>(r.state_bytes)).c_str(),
       Human(static_cast<double>(r.rank_bytes)).c_str());
  line("  a step     update every tensor (%s) + compute (%s of matmul, calibrated: %d ms in all) "
       "+ a gradient\n",
       Ms(r.update_seconds).c_str(), Ms(r.compute_seconds).c_str(), o.step_ms);
  line("             all-gather on the ranks' group; measured %s (median of the steps with no save "
       "in flight)\n",
       Ms(base).c_str());
  line("  loops      %d steps each, a checkpoint every %d steps (%d per loop), fsync %s, %d I/O "
       "threads per rank\n",
       o.steps, o.every, n_ckpt, o.sync_files ? "on" : "off", o.thread_count);

  out += "\n  sync   dcpp::Save: training waits until the checkpoint is committed\n";
  line("    %6s  %10s  %12s\n", "step", "blocked", "throughput");
  for (const auto& c : r.sync_loop.checkpoints)
    line("    %6d  %10s  %12s\n", c.step, Ms(c.blocked_seconds).c_str(),
         Rate(static_cast<double>(r.state_bytes), c.blocked_seconds).c_str());

  out += "\n  async  AsyncCheckpointer::Save: returns once the state is copied into the pool;\n"
         "         the checkpoint is written in the background while training goes on\n";
  line("    %6s  %10s  %12s  %12s  %s\n", "step", "stall", "copy rate", "bg write",
       "steps during the write (vs without)");
  bool first_grew = false, waited = false;
  std::vector<double> steady_stalls;
  for (const auto& c : r.async_loop.checkpoints) {
    std::string during = "-";
    if (c.overlapped_steps > 0) {
      std::snprintf(buf, sizeof buf, "%2d %s of %s (%s)", c.overlapped_steps,
                    c.overlapped_steps == 1 ? "step " : "steps",
                    Ms(c.overlapped_step_seconds).c_str(),
                    Percent(c.overlapped_step_seconds, base).c_str());
      during = buf;
    }
    const bool wait = c.waited_for_previous;
    waited = waited || wait;
    first_grew = first_grew || c.pool_grew;
    if (!c.pool_grew && !wait) steady_stalls.push_back(c.blocked_seconds);
    line("    %6d  %10s  %12s  %12s  %s%s%s\n", c.step, Ms(c.blocked_seconds).c_str(),
         Rate(static_cast<double>(c.staged_bytes) / std::max(1, r.ranks), c.stage_seconds).c_str(),
         Ms(c.write_seconds).c_str(), during.c_str(), c.pool_grew ? "  [pool allocated]" : "",
         wait ? "  [waited for the previous write]" : "");
  }
  out += "    stall: Save's call on the training thread; copy rate: into the staging pool, per "
         "rank;\n    bg write: planning, writing and the commit, in the background\n";
  if (first_grew)
    out += "    [pool allocated]: the first save maps and faults in the staging pool; later saves "
           "reuse it\n";
  if (waited)
    out += "    [waited for the previous write]: a save waits while the previous one is still "
           "written (checkpoints more often than the disk allows)\n";

  // The stall of a save that reused the pool and did not wait for the
  // previous one is the copy alone: what the memcpy is the yardstick for.
  const bool steady = !steady_stalls.empty();
  double stall = steady ? Median(steady_stalls) : 0;
  if (!steady)
    for (const auto& c : r.async_loop.checkpoints) stall = std::max(stall, c.stage_seconds);
  line("\n  memcpy     one thread copying a rank's %s into preallocated, pre-faulted memory: %s "
       "(%s), ranks at once\n",
       Human(static_cast<double>(r.rank_bytes)).c_str(), Ms(r.memcpy_seconds).c_str(),
       Rate(static_cast<double>(r.rank_bytes), r.memcpy_seconds).c_str());
  line("             stall %s (%s) = %.2fx that memcpy (goal: <= 1.2x)\n", Ms(stall).c_str(),
       steady ? "median of the saves that reused the pool"
              : "the longest staging: no save reused the pool without waiting",
       r.memcpy_seconds > 0 ? stall / r.memcpy_seconds : 0.0);

  // What checkpointing cost the training, measured directly: the time Save
  // blocked it, plus (async) the extra length of the steps that ran during
  // a background write. (The loops' wall times differ by about the same,
  // plus the noise of every other step.)
  const auto& s = r.sync_loop;
  const auto& a = r.async_loop;
  double blocked = 0, stalls = 0, slower = 0;
  for (const auto& c : s.checkpoints) blocked += c.blocked_seconds;
  for (const auto& c : a.checkpoints) {
    stalls += c.blocked_seconds;
    if (c.overlapped_steps > 0) slower += c.overlapped_steps * (c.overlapped_step_seconds - base);
  }
  const double async_cost = stalls + std::max(0.0, slower);
  const int per = std::max(1, n_ckpt);
  line("\n  summary    what the %d checkpoints cost the training (a step alone: %s)\n", n_ckpt,
       Ms(base).c_str());
  std::snprintf(buf, sizeof buf, "blocked %s", Ms(blocked).c_str());
  std::string sync_parts = buf;
  line("             sync   wall %6.2f s   %-40s = %s, %s per checkpoint\n", s.wall_seconds,
       sync_parts.c_str(), Ms(blocked).c_str(), Ms(blocked / per).c_str());
  if (slower >= 0)
    std::snprintf(buf, sizeof buf, "stalls %s + slower steps %s", Ms(stalls).c_str(),
                  Ms(slower).c_str());
  else
    std::snprintf(buf, sizeof buf, "stalls %s (steps no slower)", Ms(stalls).c_str());
  std::string async_parts = buf;
  line("             async  wall %6.2f s   %-40s = %s, %s per checkpoint\n", a.wall_seconds,
       async_parts.c_str(), Ms(async_cost).c_str(), Ms(async_cost / per).c_str());
  if (blocked > 0 && async_cost > 0) {
    const double ratio = blocked / async_cost;
    if (ratio >= 1.1 || ratio <= 1 / 1.1)
      std::snprintf(buf, sizeof buf, "%.1fx %s than", ratio >= 1 ? ratio : 1 / ratio,
                    ratio >= 1 ? "less" : "more");
    else
      std::snprintf(buf, sizeof buf, "about as much as");
    const std::string compared = buf;
    line("             async checkpoints cost the training %s sync ones (wall: %.2f s %s)\n",
         compared.c_str(), std::fabs(s.wall_seconds - a.wall_seconds),
         a.wall_seconds <= s.wall_seconds ? "less" : "more");
  }
  if (a.overlapped_steps > 0) {
    line("             steps during a background write: %s on average, %s vs steps without\n",
         Ms(a.overlapped_step_seconds).c_str(), Percent(a.overlapped_step_seconds, base).c_str());
    // The write's threads and the training threads share the cores; GPU
    // training leaves the CPU mostly idle, this loop's compute does not.
    if (a.overlapped_step_seconds > 1.2 * base)
      line("             (the write's threads share this machine's %u cores with the %s "
           "compute)\n",
           std::thread::hardware_concurrency(), "ranks' CPU-bound");
  }
  line("             after its last step the async loop waited %s for the last write (a real run "
       "trains on)\n",
       Ms(a.drain_seconds).c_str());

  line("\n  verify     the async checkpoint of step %d, loaded by %d ranks asking for column "
       "shards (%.3f s):\n",
       r.verified_step, r.load_ranks, r.load_seconds);
  line("             %zu pieces, %s: every byte holds step %d's values, though the tensors had "
       "changed since\n",
       r.verified_pieces, Human(static_cast<double>(r.verified_bytes)).c_str(), r.verified_step);
  out += "  checkpoints " + r.dir +
         (o.keep ? " (kept: try `dcpp inspect` on them)\n" : " (removed; --keep keeps them)\n");
  return out;
}

}  // namespace dcpp::tools
