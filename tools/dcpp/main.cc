// The dcpp command-line tool: parses arguments, calls src/dcpp/tools, prints.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/checkpoint.h"
#include "dcpp/process_group.h"
#include "dcpp/tools/async_demo.h"
#include "dcpp/tools/bench.h"
#include "dcpp/tools/convert.h"
#include "dcpp/tools/demo.h"
#include "dcpp/tools/inspect.h"
#include "dcpp/tools/progress_printer.h"
#include "dcpp/tools/verify.h"

namespace {

// Exit codes scripts can rely on.
constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;  // the operation failed (message on stderr)
constexpr int kExitUsage = 2;   // bad command line

constexpr const char* kMainHelp = R"(dcpp: PyTorch Distributed Checkpoint (DCP) tools, in C++.

Checkpoints are directories in torch.distributed.checkpoint's format: data
files __{rank}_{n}.{tag}.distcp and a .metadata file written last; a save
holds .dcpp.lock in the directory until it commits. Everything dcpp writes
loads with torch.distributed.checkpoint.load, and the reverse.

usage: dcpp <command> [options]

commands:
  inspect CKPT       list what a checkpoint holds (reads only .metadata)
  convert SRC DST    rewrite a checkpoint with dcpp's writer and options
  verify CKPT        read every byte of a checkpoint and check it (exit 1 if damaged)
  demo               save a synthetic training state, load it resharded, verify;
                     --async: a training loop with sync vs async checkpoints
  bench              time one save, load, compression or memcpy (bench/run_benchmarks.py)

Run `dcpp <command> --help` for a command's options.

exit codes: 0 success, 1 the operation failed (reason on stderr),
            2 the command line was wrong
)";

constexpr const char* kInspectHelp = R"(usage: dcpp inspect CKPT [--json]

Prints one row per entry (flattened state dict key, "FQN"): its type (torch
dtype, or "bytes" for pickled non-tensor values), global shape, how many
chunks it was saved in, the bytes stored and the data files holding them;
then the total per data file. Reads only CKPT/.metadata.

options:
  --json     print a JSON document instead (fields: path, version, entries
             [fqn, kind, dtype, shape, requires_grad, chunks [offsets, sizes,
             file, offset, length, transforms]], total_stored_bytes, files)

example:
  dcpp inspect /ckpt/step_1000 | head
)";

constexpr const char* kVerifyHelp = R"(usage: dcpp verify CKPT [--json] [--threads N] [--quiet]

Reads every byte of every item of the checkpoint CKPT (positional reads on
several threads; a large tensor is split across them) and checks:
  - .metadata decodes, and matches the sidecar checksum file
    .checksums.<save_id> that dcpp writers add (torch ignores it; a
    checkpoint torch wrote has none, and is checked without it);
  - each tensor's chunks lie inside its shape and tile it exactly;
  - every item lies inside its data file; its torch.save archive is well
    formed and holds the dtype and shape .metadata says; the CRC-32 of every
    archive record (tensor bytes, data.pkl, pickled values) matches the one
    the archive records (archives written with CRCs off record 0 and are not
    checked); zstd frame checksums; pickled values decode (nothing is run);
  - which files in CKPT nothing references (data files of killed or
    replaced saves, stale sidecars): reported, not counted as damage.
Nothing is written.

exit codes: 0 the checkpoint is intact; 1 damage found (each damaged FQN and
file is named on stdout) or CKPT could not be read; 2 bad command line.

options:
  --json       print a JSON report instead (checkpoint, ok, checksum_file,
               entries, items, bytes_read, seconds, problems [fqn, file,
               message], unreferenced_files)
  --threads N  reader threads (default: min(8, hardware threads))
  --quiet      no progress on stderr

examples:
  dcpp verify /ckpt/step_1000
  dcpp verify /ckpt/step_1000 --json | jq .problems
)";

constexpr const char* kConvertHelp = R"(usage: dcpp convert SRC DST [options]

Reads the checkpoint SRC (a DCP directory, a Hugging Face safetensors
directory, a single .safetensors file or a torch.save file such as model.pt:
detected) and writes it to DST with dcpp's writer, as DCP (default), as a
safetensors model directory or as one torch.save file.
To DCP nothing is dropped or changed: pickled values are copied as their
original bytes, tensor properties are kept; DST loads with
torch.distributed.checkpoint.load. To safetensors every selected entry must
be a tensor; tensors stream through bounded buffers (32 MiB per thread).
To torch-save DST is one file holding the nested state dict torch's
dcp_to_torch_save writes (torch.load reads it, also with weights_only=True);
tensors stream through 32 MiB row bands per thread, and the file appears only
when complete. A torch.save SRC is read with a safe unpickler: nothing in it
runs, and a pickle naming anything beyond a plain state dict is refused.

options:
  --to dcp|safetensors|torch-save
                           output format (default dcp; torch-save when DST
                           ends in .pt, .pth or .bin and is not a directory)
  --keys GLOB              convert only entries whose FQN matches GLOB
                           (fnmatch; '*' crosses dots); repeatable
  --dtype bf16|f16|f32|f64 cast floating tensors to this dtype
  --max-shard-size BYTES   safetensors: start a new file past BYTES of tensor
                           data (suffixes K, M, G, KiB, MiB, GiB)
  --thread-count N         writer threads; with single-file-per-rank also the
                           number of data files (default 1, like DCP)
  --file-per-item          one data file per entry instead of per thread
  --no-sync                skip fsync (faster; not crash-safe)
  --no-overwrite           fail if DST already holds a checkpoint
  --no-checksums           write CRC-32 = 0 in the archives (torch accepts it)
  --quiet                  no progress on stderr

examples:
  dcpp convert /ckpt/torch_step_1000 /ckpt/dcpp_step_1000 --thread-count 4
  dcpp convert /ckpt/step_1000 /export/model --to safetensors --keys 'model.*' --dtype bf16
  dcpp convert /ckpt/step_1000 /export/model.pt --to torch-save
  dcpp convert model.pt /ckpt/from_torch_save
)";

constexpr const char* kDemoHelp = R"(usage: dcpp demo [options]
       dcpp demo --async [options]

dcpp's main job, end to end: N ranks save a transformer-like training state
(bf16 weights, fp32 Adam moments, step and hyper-parameters), each holding a
row shard of every tensor, as DCP does for DTensors; then M ranks load it,
each asking for a column shard, so every loaded piece overlaps several saved
ones. Every byte is checked; sizes, times and throughput are printed.

With --async: what a checkpoint costs a training loop. The ranks run a
simulated training loop: every step updates every tensor, computes for a
fixed time and meets the other ranks in a collective; every K steps the
state is saved. The loop runs twice: with dcpp::Save (training waits until
the checkpoint is committed) and with AsyncCheckpointer::Save (it returns once
the state is copied into a reused staging pool; the files are written in
the background while training goes on). Printed per checkpoint: the stall,
the background write time and how much slower the steps that ran during it
were; then both loops' wall times, the cost per checkpoint, and the stall
next to a plain memcpy of the same bytes. Last, the final async checkpoint
is loaded with column shards and every byte must hold the values of the
step it was taken at, although the loop changed them right after Save.

Ranks are threads of this process. Under mpirun (e.g. `mpirun -np 4 dcpp
demo`, or `mpirun -np 2 dcpp demo --async`) the MPI ranks save and then load
with the other sharding; with --async each rank has its own
AsyncCheckpointer over the MPI group.

options:
  --size-mib N       approximate state size, all ranks together
                     (default 256; with --async 64)
  --save-ranks N     ranks that save (default 4; with --async 2)
  --load-ranks M     ranks that load (default 3)
  --threads N        I/O threads and data files per rank (default 2)
  --dir PATH         where to write (default: a new directory under $TMPDIR)
  --keep             keep the checkpoint(s) (then try: dcpp inspect PATH)
  --no-sync          skip fsync
  --quiet            no progress on stderr

options with --async:
  --ranks N          training ranks (the same as --save-ranks)
  --steps N          training steps per loop (default 40)
  --every K          a checkpoint after every K-th step (default 10)
  --step-ms T        compute + update per step, in milliseconds (default 50)
  --staging-threads N  threads copying into the staging pool (default:
                     min(8, cores))

examples:
  dcpp demo --size-mib 1024 --keep
  dcpp demo --async --size-mib 512 --steps 60 --every 20 --step-ms 200
)";

constexpr const char* kBenchHelp =
    R"(usage: dcpp bench save|load|loadall --image F --index F.json --ckpt DIR [options]
       dcpp bench compress --image F --index F.json [--dtype D] [options]
       dcpp bench memcpy --bytes N

Times one operation on a state given as an image file (every tensor's bytes)
and its JSON index ({"tensors": [{"fqn", "dtype", "shape", "offset"}]}), as
bench/run_benchmarks.py writes them, and prints one JSON line: op, seconds,
bytes, tensors, ranks, threads, transforms, compression_level,
rss_before_bytes, max_rss_bytes, verified. Only the operation is timed: the
state is read into memory (save) or allocated and touched (load) first.

  save     dcpp::Save of the image's tensors to DIR
  load     dcpp::Load from DIR into preallocated tensors, then compare every
           loaded byte with the image
  loadall  dcpp::LoadAll from DIR (the library allocates every tensor, as
           convert and dcpp.load(path) do), then compare with the image
  compress the stream transforms alone on one thread: every tensor of dtype D
           (default: all) through --transforms (default stream.zstd/1), then
           decoded and checked, and libzstd's one-shot compression of the
           same tensors at the same level for comparison; prints op, dtype,
           tensors, bytes, stored_bytes, encode_seconds, decode_seconds,
           libzstd_stored_bytes, libzstd_seconds (best of --repeats)
  memcpy   one memcpy of N bytes between touched buffers

options:
  --threads T          I/O threads per rank (default 2)
  --ranks N            thread ranks (default 1). save: row shards (dim 0) of
                       tensors with at least N rows, others replicated. load:
                       shards of dim 1 where it has >= N entries, else dim 0,
                       else the whole tensor on every rank
  --no-fsync           save without fsync
  --transforms A,B     save with these stream transforms, e.g. stream.zstd/1
                       or dcpp.byteshuffle/1,stream.zstd/1
  --level L            zstd level (default 1)
  --no-verify          load without comparing with the image
  --bytes N            memcpy size
  --dtype D            compress: only tensors of this torch dtype (bfloat16 ...)
  --repeats R          compress: timed passes, the best is reported (default 3)

examples:
  dcpp bench save --image /tmp/s.img --index /tmp/s.json --ckpt /tmp/ck --ranks 4
  dcpp bench compress --image /tmp/s.img --index /tmp/s.json --dtype bfloat16
)";

struct Args {
  std::vector<std::string> positional;
  std::map<std::string, std::string> flags;  // "--x" -> value ("" for switches)
  std::vector<std::pair<std::string, std::string>> all;  // every flag in order (repeatable ones)
};

// Parses `argv` against the flags a command accepts (name -> takes a value).
bool Parse(int argc, char** argv, int first, const std::map<std::string, bool>& accepted, Args& out,
           std::string& error) {
  for (int i = first; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--", 0) != 0 || a == "--") {
      out.positional.push_back(a);
      continue;
    }
    std::string value;
    if (auto eq = a.find('='); eq != std::string::npos) {
      value = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto it = accepted.find(a);
    if (it == accepted.end()) {
      error = "unknown option " + a;
      return false;
    }
    if (it->second && value.empty()) {
      if (i + 1 >= argc) {
        error = a + " needs a value";
        return false;
      }
      value = argv[++i];
    }
    out.flags[a] = value;
    out.all.emplace_back(a, value);
  }
  return true;
}

int Fail(const dcpp::Status& s) {
  std::fprintf(stderr, "dcpp: error: %s\n", s.ToString().c_str());
  return kExitFailed;
}

int Usage(const char* help, const std::string& error) {
  std::fprintf(stderr, "dcpp: %s\n\n%s", error.c_str(), help);
  return kExitUsage;
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

bool ParseInt(const std::string& text, long lo, long hi, long& out) {
  char* end = nullptr;
  out = std::strtol(text.c_str(), &end, 10);
  return !text.empty() && *end == '\0' && out >= lo && out <= hi;
}

int Inspect(int argc, char** argv) {
  Args args;
  std::string error;
  if (!Parse(argc, argv, 2, {{"--json", false}}, args, error)) return Usage(kInspectHelp, error);
  if (args.positional.size() != 1) return Usage(kInspectHelp, "inspect takes one checkpoint path");
  const std::string& dir = args.positional[0];
  auto md = dcpp::ReadMetadata(dir);
  if (!md.ok()) return Fail(md.status());
  const std::string out = args.flags.count("--json") ? dcpp::tools::InspectJson(dir, *md)
                                                     : dcpp::tools::InspectText(dir, *md);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return kExitOk;
}

int Verify(int argc, char** argv) {
  Args args;
  std::string error;
  if (!Parse(argc, argv, 2, {{"--json", false}, {"--threads", true}, {"--quiet", false}}, args,
             error))
    return Usage(kVerifyHelp, error);
  if (args.positional.size() != 1) return Usage(kVerifyHelp, "verify takes one checkpoint path");
  dcpp::tools::VerifyOptions o;
  if (args.flags.count("--threads")) {
    long v;
    if (!ParseInt(args.flags["--threads"], 1, 1024, v))
      return Usage(kVerifyHelp, "--threads must be an integer in [1, 1024]");
    o.io_threads = static_cast<int>(v);
  }
  if (!args.flags.count("--quiet")) o.progress = dcpp::tools::MakeProgressPrinter(stderr);
  auto report = dcpp::tools::Verify(args.positional[0], o);
  if (!report.ok()) return Fail(report.status());
  const std::string out = args.flags.count("--json") ? dcpp::tools::VerifyReportJson(*report)
                                                     : dcpp::tools::VerifyReportText(*report);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return report->ok() ? kExitOk : kExitFailed;
}

int Convert(int argc, char** argv) {
  Args args;
  std::string error;
  if (!Parse(argc, argv, 2,
             {{"--thread-count", true},
              {"--to", true},
              {"--keys", true},
              {"--dtype", true},
              {"--max-shard-size", true},
              {"--file-per-item", false},
              {"--no-sync", false},
              {"--no-overwrite", false},
              {"--no-checksums", false},
              {"--quiet", false}},
             args, error))
    return Usage(kConvertHelp, error);
  if (args.positional.size() != 2) return Usage(kConvertHelp, "convert takes SRC and DST");
  dcpp::tools::ConvertOptions co;
  dcpp::SaveOptions& o = co.save;
  if (args.flags.count("--thread-count")) {
    long n;
    if (!ParseInt(args.flags["--thread-count"], 1, 1024, n))
      return Usage(kConvertHelp, "--thread-count must be an integer in [1, 1024]");
    o.files_per_rank = static_cast<int>(n);
  }
  if (args.flags.count("--to")) {
    const std::string& to = args.flags["--to"];
    if (to == "safetensors")
      o.format = dcpp::SaveFormat::kSafetensors;
    else if (to == "torch-save")
      co.torch_save = true;
    else if (to != "dcp")
      return Usage(kConvertHelp, "--to must be dcp, safetensors or torch-save");
  } else if (dcpp::tools::LooksLikeTorchSavePath(args.positional[1])) {
    co.torch_save = true;
    std::fprintf(stderr, "dcpp: writing %s as a torch.save file (by its suffix; --to sets it)\n",
                 args.positional[1].c_str());
  }
  for (const auto& [flag, value] : args.all)
    if (flag == "--keys") co.keys.push_back(value);
  if (args.flags.count("--dtype")) {
    co.dtype = dcpp::tools::ParseFloatDType(args.flags["--dtype"]);
    if (!co.dtype) return Usage(kConvertHelp, "--dtype must be bf16, f16, f32 or f64");
  }
  if (args.flags.count("--max-shard-size")) {
    std::string text = args.flags["--max-shard-size"];
    uint64_t unit = 1;
    for (const auto& [suffix, mult] :
         std::vector<std::pair<std::string, uint64_t>>{{"KiB", 1ull << 10},
                                                       {"MiB", 1ull << 20},
                                                       {"GiB", 1ull << 30},
                                                       {"KB", 1000},
                                                       {"MB", 1000000},
                                                       {"GB", 1000000000},
                                                       {"K", 1000},
                                                       {"M", 1000000},
                                                       {"G", 1000000000}}) {
      if (text.size() > suffix.size() &&
          text.compare(text.size() - suffix.size(), suffix.size(), suffix) == 0) {
        text.resize(text.size() - suffix.size());
        unit = mult;
        break;
      }
    }
    long n;
    if (!ParseInt(text, 0, (1l << 40), n))
      return Usage(kConvertHelp, "--max-shard-size must be a size in bytes (e.g. 5G, 500MiB)");
    o.max_shard_size = static_cast<uint64_t>(n) * unit;
  }
  o.single_file_per_rank = !args.flags.count("--file-per-item");
  o.sync_files = !args.flags.count("--no-sync");
  o.overwrite = !args.flags.count("--no-overwrite");
  o.checksums = !args.flags.count("--no-checksums");
  if (!args.flags.count("--quiet")) o.progress = dcpp::tools::MakeProgressPrinter(stderr);
  auto md = dcpp::tools::Convert(args.positional[0], args.positional[1], co);
  if (!md.ok()) return Fail(md.status());
  std::fprintf(stderr, "dcpp: wrote %zu entries to %s\n", md->entries.size(),
               args.positional[1].c_str());
  return kExitOk;
}

int AsyncDemo(Args& args) {
  dcpp::tools::AsyncDemoOptions o;
  struct IntFlag {
    const char* name;
    long lo, hi;
    long value;
  } flags[] = {{"--size-mib", 1, 1 << 20, static_cast<long>(o.size_mib)},
               {"--save-ranks", 1, 256, o.ranks},
               {"--ranks", 1, 256, o.ranks},
               {"--load-ranks", 1, 256, o.load_ranks},
               {"--threads", 1, 1024, o.thread_count},
               {"--steps", 1, 1000000, o.steps},
               {"--every", 1, 1000000, o.every},
               {"--step-ms", 0, 3600000, o.step_ms},
               {"--staging-threads", 1, 1024, 0}};
  for (auto& f : flags) {
    if (!args.flags.count(f.name)) continue;
    if (!ParseInt(args.flags[f.name], f.lo, f.hi, f.value))
      return Usage(kDemoHelp, std::string(f.name) + " must be an integer in [" +
                                  std::to_string(f.lo) + ", " + std::to_string(f.hi) + "]");
  }
  if (args.flags.count("--ranks") && args.flags.count("--save-ranks"))
    return Usage(kDemoHelp, "--ranks and --save-ranks are the same option: give one");
  o.size_mib = static_cast<uint64_t>(flags[0].value);
  o.ranks = static_cast<int>(args.flags.count("--ranks") ? flags[2].value : flags[1].value);
  o.load_ranks = static_cast<int>(flags[3].value);
  o.thread_count = static_cast<int>(flags[4].value);
  o.steps = static_cast<int>(flags[5].value);
  o.every = static_cast<int>(flags[6].value);
  o.step_ms = static_cast<int>(flags[7].value);
  o.staging_threads = static_cast<int>(flags[8].value);
  if (o.every > o.steps)
    return Usage(kDemoHelp, "--every " + std::to_string(o.every) + " needs --steps >= " +
                                std::to_string(o.every) + " (at least one checkpoint)");
  if (args.flags.count("--dir")) o.dir = args.flags["--dir"];
  o.keep = args.flags.count("--keep") > 0;
  o.sync_files = !args.flags.count("--no-sync");
  std::unique_ptr<dcpp::ProcessGroup> mpi;
  if (dcpp::LaunchedByMpi()) {
    auto group = dcpp::MakeMpiProcessGroup();
    if (!group.ok()) return Fail(group.status());
    mpi = std::move(*group);
    o.group = mpi.get();
  }
  const bool root = !mpi || mpi->rank() == 0;
  if (root && !args.flags.count("--quiet"))
    o.note = [](const std::string& line) {
      std::fprintf(stderr, "dcpp demo --async: %s\n", line.c_str());
    };
  auto report = dcpp::tools::RunAsyncDemo(o);
  if (!report.ok()) return Fail(report.status());
  if (root) {
    const std::string text = dcpp::tools::FormatAsyncDemoReport(o, *report);
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
  return kExitOk;
}

int Demo(int argc, char** argv) {
  Args args;
  std::string error;
  if (!Parse(argc, argv, 2,
             {{"--size-mib", true},
              {"--save-ranks", true},
              {"--load-ranks", true},
              {"--threads", true},
              {"--dir", true},
              {"--keep", false},
              {"--no-sync", false},
              {"--quiet", false},
              {"--async", false},
              {"--ranks", true},
              {"--steps", true},
              {"--every", true},
              {"--step-ms", true},
              {"--staging-threads", true}},
             args, error))
    return Usage(kDemoHelp, error);
  if (!args.positional.empty()) return Usage(kDemoHelp, "demo takes no positional arguments");
  if (args.flags.count("--async")) return AsyncDemo(args);
  for (const char* async_only : {"--ranks", "--steps", "--every", "--step-ms", "--staging-threads"})
    if (args.flags.count(async_only))
      return Usage(kDemoHelp, std::string(async_only) + " is an option of demo --async");
  dcpp::tools::DemoOptions o;
  struct IntFlag {
    const char* name;
    long lo, hi;
    long value;
  } flags[] = {{"--size-mib", 1, 1 << 20, static_cast<long>(o.size_mib)},
               {"--save-ranks", 1, 256, o.save_ranks},
               {"--load-ranks", 1, 256, o.load_ranks},
               {"--threads", 1, 1024, o.thread_count}};
  for (auto& f : flags) {
    if (!args.flags.count(f.name)) continue;
    if (!ParseInt(args.flags[f.name], f.lo, f.hi, f.value))
      return Usage(kDemoHelp, std::string(f.name) + " must be an integer in [" +
                                  std::to_string(f.lo) + ", " + std::to_string(f.hi) + "]");
  }
  o.size_mib = static_cast<uint64_t>(flags[0].value);
  o.save_ranks = static_cast<int>(flags[1].value);
  o.load_ranks = static_cast<int>(flags[2].value);
  o.thread_count = static_cast<int>(flags[3].value);
  if (args.flags.count("--dir")) o.dir = args.flags["--dir"];
  o.keep = args.flags.count("--keep") > 0;
  o.sync_files = !args.flags.count("--no-sync");
  std::unique_ptr<dcpp::ProcessGroup> mpi;
  if (dcpp::LaunchedByMpi()) {
    auto group = dcpp::MakeMpiProcessGroup();
    if (!group.ok()) return Fail(group.status());
    mpi = std::move(*group);
    o.group = mpi.get();
  }
  const bool root = !mpi || mpi->rank() == 0;
  if (root && !args.flags.count("--quiet")) o.progress = dcpp::tools::MakeProgressPrinter(stderr);
  auto report = dcpp::tools::RunDemo(o);
  if (!report.ok()) return Fail(report.status());
  if (root) {
    const std::string text = dcpp::tools::FormatDemoReport(o, *report);
    std::fwrite(text.data(), 1, text.size(), stdout);
  }
  return kExitOk;
}

int Bench(int argc, char** argv) {
  Args args;
  std::string error;
  if (!Parse(argc, argv, 2,
             {{"--image", true},
              {"--index", true},
              {"--ckpt", true},
              {"--threads", true},
              {"--ranks", true},
              {"--no-fsync", false},
              {"--transforms", true},
              {"--level", true},
              {"--no-verify", false},
              {"--bytes", true},
              {"--dtype", true},
              {"--repeats", true}},
             args, error))
    return Usage(kBenchHelp, error);
  if (args.positional.size() != 1)
    return Usage(kBenchHelp, "bench takes save, load, compress or memcpy");
  const std::string& op = args.positional[0];
  std::vector<std::string> transforms;
  if (args.flags.count("--transforms")) {
    const std::string& list = args.flags["--transforms"];
    for (size_t start = 0; start <= list.size();) {
      size_t comma = list.find(',', start);
      if (comma == std::string::npos) comma = list.size();
      if (comma > start) transforms.push_back(list.substr(start, comma - start));
      start = comma + 1;
    }
  }
  long level = 1;
  if (args.flags.count("--level") && !ParseInt(args.flags["--level"], -131072, 22, level))
    return Usage(kBenchHelp, "--level must be an integer in [-131072, 22]");
  if (op == "compress") {
    for (const char* f : {"--image", "--index"})
      if (args.flags[f].empty()) return Usage(kBenchHelp, std::string("compress needs ") + f);
    long repeats = 3;
    if (args.flags.count("--repeats") && !ParseInt(args.flags["--repeats"], 1, 1000, repeats))
      return Usage(kBenchHelp, "--repeats must be an integer in [1, 1000]");
    if (transforms.empty()) transforms = {"stream.zstd/1"};
    auto r = dcpp::tools::BenchCompress(args.flags["--image"], args.flags["--index"],
                                        args.flags["--dtype"], transforms, static_cast<int>(level),
                                        static_cast<int>(repeats));
    if (!r.ok()) return Fail(r.status());
    std::printf("%s\n", dcpp::tools::CompressResultJson(*r).c_str());
    return kExitOk;
  }
  dcpp::Result<dcpp::tools::BenchResult> result = dcpp::InternalError("bench: not run");
  if (op == "memcpy") {
    long long bytes = -1;
    char* end = nullptr;
    const std::string& text = args.flags["--bytes"];
    if (!text.empty()) bytes = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || bytes < 0)
      return Usage(kBenchHelp, "memcpy needs --bytes N with N >= 0");
    result = dcpp::tools::BenchMemcpy(static_cast<uint64_t>(bytes));
  } else if (op == "save" || op == "load" || op == "loadall") {
    dcpp::tools::BenchOptions o;
    for (const char* f : {"--image", "--index", "--ckpt"})
      if (args.flags[f].empty()) return Usage(kBenchHelp, std::string(op) + " needs " + f);
    o.image_path = args.flags["--image"];
    o.index_path = args.flags["--index"];
    o.checkpoint_dir = args.flags["--ckpt"];
    struct IntFlag {
      const char* name;
      long lo, hi;
      int* out;
    } ints[] = {{"--threads", 1, 1024, &o.thread_count}, {"--ranks", 1, 4096, &o.ranks}};
    for (auto& f : ints) {
      if (!args.flags.count(f.name)) continue;
      long v;
      if (!ParseInt(args.flags[f.name], f.lo, f.hi, v))
        return Usage(kBenchHelp, std::string(f.name) + " must be an integer in [" +
                                     std::to_string(f.lo) + ", " + std::to_string(f.hi) + "]");
      *f.out = static_cast<int>(v);
    }
    o.compression_level = static_cast<int>(level);
    o.sync_files = !args.flags.count("--no-fsync");
    o.verify = !args.flags.count("--no-verify");
    o.transforms = transforms;
    result = op == "save"   ? dcpp::tools::BenchSave(o)
             : op == "load" ? dcpp::tools::BenchLoad(o)
                            : dcpp::tools::BenchLoadAll(o);
  } else {
    return Usage(kBenchHelp, "unknown bench operation '" + op + "'");
  }
  if (!result.ok()) return Fail(result.status());
  std::printf("%s\n", dcpp::tools::BenchResultJson(*result).c_str());
  return kExitOk;
}

int RunCommand(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    std::fputs(kMainHelp, argc < 2 ? stderr : stdout);
    return argc < 2 ? kExitUsage : kExitOk;
  }
  const std::string cmd = argv[1];
  const std::map<std::string, std::pair<const char*, std::function<int(int, char**)>>> commands = {
      {"inspect", {kInspectHelp, Inspect}},
      {"convert", {kConvertHelp, Convert}},
      {"verify", {kVerifyHelp, Verify}},
      {"demo", {kDemoHelp, Demo}},
      {"bench", {kBenchHelp, Bench}},
  };
  auto it = commands.find(cmd);
  if (it == commands.end()) return Usage(kMainHelp, "unknown command '" + cmd + "'");
  if (WantsHelp(argc, argv)) {
    std::fputs(it->second.first, stdout);
    return kExitOk;
  }
  return it->second.second(argc, argv);
}

}  // namespace

int main(int argc, char** argv) {
  // No exception may end the tool with std::terminate (exit 134): running
  // out of memory is reported like any other failure, with exit 1.
  int code = kExitFailed;
  const std::string op = argc > 1 ? std::string("dcpp ") + argv[1] : "dcpp";
  const dcpp::Status s = dcpp::CatchExceptions(op, [&] {
    code = RunCommand(argc, argv);
    return dcpp::Status();
  });
  return s.ok() ? code : Fail(s);
}
