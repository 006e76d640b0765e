// Save in SaveFormat::kSafetensors (see include/dcpp/checkpoint.h): a
// Hugging Face model directory. engine::Save calls it for that format.
#ifndef DCPP_ENGINE_SAFETENSORS_SAVE_H_
#define DCPP_ENGINE_SAFETENSORS_SAVE_H_

#include <functional>
#include <span>
#include <string>

#include "dcpp/checkpoint.h"
#include "dcpp/storage/storage.h"

namespace dcpp::engine {

// Writes every tensor of `state_dict` (flattened to FQNs; ShardedTensor
// shards, which must tile the tensor, go to their places) into
// model-0000i-of-0000N.safetensors files, split by options.max_shard_size,
// and model.safetensors.index.json, and returns the metadata read back from
// the written headers. Files are written under temporary names and renamed
// when all are complete; on failure those are removed and an existing
// model in the directory is untouched. With overwrite, model-*-of-*
// .safetensors files of an earlier save that this one does not reuse are
// removed. Errors: InvalidArgument listing non-tensor leaves (first ten) or
// for shards that do not tile their tensor; AlreadyExists without overwrite
// when the directory holds a checkpoint. Memory: only non-contiguous
// tensors are copied; nothing else is staged. With options.process_group
// of several ranks (collective: every rank calls it): each rank writes its
// pieces to `.pieces-<rank>.<tag>.tmp` (plain tensors only on rank 0), rank
// 0 gathers their descriptions, checks that they tile each tensor and
// consolidates them as WriteSafetensors copies saved chunks (row pieces in
// the kernel where it can, column pieces through 4 MiB bands per thread),
// then removes the temporaries; every rank returns the same status
// (failures name ranks).
Result<Metadata> SaveSafetensors(const Value& state_dict, storage::Storage& storage,
                                 const SaveOptions& options);

// Receives one piece of a tensor: its global offsets and its elements
// (contiguous, row-major, the tensor's dtype), borrowed for the call only.
using PieceSink = std::function<Status(const Shape& offsets, const TensorView& piece)>;

// A tensor to write whose bytes are produced on demand: `produce` must hand
// `put` pieces that tile the tensor (each element once), e.g. row bands
// read from another checkpoint through a bounded buffer. It is called once,
// from one of the writer threads; several tensors' produce run at once.
struct SafetensorsSource {
  std::string fqn;
  DType dtype = DType::kFloat32;
  Shape shape;
  std::function<Status(const PieceSink& put)> produce;
  // Optional, when the tensor's bytes are saved chunks of this dtype that
  // tile it (a checkpoint's entry, unchanged): `chunks` in `chunk_storage`
  // (borrowed; must outlive the call). The writer then copies them itself
  // and `produce` is called only for chunks it cannot copy (stream
  // transforms): row bands go to their place with one positional write (or
  // copy_file_range for safetensors pieces, no copy through user memory);
  // tensors cut by columns are gathered in output row bands of a few MiB
  // and written with one write per band. Large tensors are split into
  // several pieces of work, so one tensor is written by several threads.
  storage::Storage* chunk_storage = nullptr;
  std::vector<ChunkMeta> chunks{};
};

// The writer under SaveSafetensors: lays out the files for `tensors` (in
// this order, split by options.max_shard_size), writes each header, then
// runs the pieces of work in parallel (options.io_threads; files
// interleaved so that threads write different files where there are
// several), each piece going to its place by positional writes; then the
// index, the renames, and the metadata read back. With
// options.sync_files, writeback of each written range starts as soon as it
// is written and each file is fdatasync'ed as soon as its last piece is
// done, overlapping the wait with the writing of the rest. Memory: what the
// producers hold plus one band buffer per thread for copied chunks (up to
// 32 MiB for DCP chunks, 4 MiB for gathered column bands, none for
// safetensors pieces the kernel copies). Same
// file protocol and errors as SaveSafetensors; a producer's or a chunk's
// error fails the save (with the FQN and file added).
Result<Metadata> WriteSafetensors(std::span<const SafetensorsSource> tensors,
                                  storage::Storage& storage, const SaveOptions& options);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_SAFETENSORS_SAVE_H_
