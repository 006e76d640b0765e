// `dcpp convert`: rewrite a checkpoint with dcpp's writer, between DCP,
// Hugging Face safetensors and torch.save files.
#ifndef DCPP_TOOLS_CONVERT_H_
#define DCPP_TOOLS_CONVERT_H_

#include <optional>
#include <string>
#include <vector>

#include "dcpp/checkpoint.h"

namespace dcpp::tools {

struct ConvertOptions {
  // How to write: save.format picks DCP or a safetensors model directory;
  // the other fields as for Save.
  SaveOptions save;
  // Entries to convert: FQNs matching any of these shell globs (fnmatch:
  // `*`, `?`, `[...]`; `*` also crosses dots, so 'model.*' is every model
  // entry). Empty: every entry. A pattern matching nothing is
  // InvalidArgument (a typo should not produce an empty checkpoint).
  std::vector<std::string> keys;
  // Cast floating tensors (float16, bfloat16, float32, float64) to this
  // floating dtype (rounding to nearest even); others are kept.
  std::optional<DType> dtype;
  // A DCP source is checked first as `dcpp verify` checks it (every item's
  // bytes against its CRC-32s and the archive's structure against the
  // metadata): copied bytes are not decoded, so without this damage would
  // be copied into a checkpoint that looks intact. One extra read of the
  // source (usually from the page cache). DataLoss names the first problem.
  bool verify_source = true;
  // Called as the conversion advances, in every direction: phase
  // "convert", bytes_done/bytes_total counted on the source side (the
  // selected entries' tensor elements, or a copied item's stored bytes),
  // items = saved chunks and values. Called from the writer threads, one
  // call at a time (keep it cheap; do not call back into dcpp); the last
  // call has items_done == items_total. Unset: save.progress is used. A new
  // output format reports through the same callback, so one printer
  // (tools/progress_printer.h) serves every direction.
  ProgressCallback progress;
  // Write one torch.save file at `dst` (what torch's dcp_to_torch_save
  // writes) instead of save.format; see Convert.
  bool torch_save = false;
};

// Reads the entries of the checkpoint at `src` (a DCP directory, a
// safetensors directory, a single .safetensors file or a torch.save file:
// detected) and writes
// them to `dst`, returning the metadata written.
//  - To DCP: every selected entry as it is: pickled values are copied as
//    their original bytes (a whole list or dict that an older torch pickled
//    as one value stays one value), tensor properties (requires_grad, memory
//    format, pin_memory) are carried over, chunks stay the chunks saved.
//    Streams (engine::CopyCheckpoint): the source's .metadata is read once,
//    stored bytes that need no change are copied as they are, the rest is
//    decoded and re-encoded in bands; one commit. Memory: bounded buffers
//    per thread, whatever the checkpoint's size.
//  - To safetensors: every selected entry must be a tensor (InvalidArgument
//    lists the others and suggests --keys). Streams: each saved chunk is
//    read in row bands of at most 32 MiB per writer thread (a compressed
//    chunk whole) and written to its place in the output, so memory stays
//    bounded by the threads' bands, whatever the checkpoint's size.
//  - To torch.save (options.torch_save): the file `dst` (its folder created
//    if missing) holding the nested state dict torch's dcp_to_torch_save
//    writes: entries placed by their paths (planner_data), each tensor a
//    contiguous tensor of its own, values as they were (a value dcpp holds
//    only as bytes, e.g. a user class instance, is Unimplemented naming it).
//    Streams: each tensor is assembled in row bands of at most 32 MiB per
//    writer thread from the chunks each band crosses and written to its
//    place in the file; the file appears (atomically renamed) only when
//    complete. Returns the metadata of the file read back.
Result<Metadata> Convert(const std::string& src, const std::string& dst,
                         const ConvertOptions& options);

// Whether `dst` names a torch.save file by its suffix (.pt, .pth, .bin)
// and is not an existing directory: how the CLI picks --to torch-save
// when --to is not given.
bool LooksLikeTorchSavePath(const std::string& dst);

// Convert with every entry and no cast.
Result<Metadata> Convert(const std::string& src, const std::string& dst,
                         const SaveOptions& options);

// The dtype named "bf16", "f16", "f32", "f64" (or torch's names: "bfloat16",
// "float16", "float32", "float64"); nullopt for anything else.
std::optional<DType> ParseFloatDType(std::string_view name);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_CONVERT_H_
