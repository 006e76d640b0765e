// Fuzzes a torch.save file opened as a checkpoint (storage/
// torch_save_layout.h): any input, taken as the whole file, must give
// metadata or a Status, never crash, never run anything. Whatever opens
// must be self-consistent: every chunk's byte range lies in the file and
// holds its box's elements, and every tensor and value reads (or fails with
// a Status) through the storage the engine reads from.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "dcpp/format/torch_pickle.h"
#include "dcpp/storage/data_files.h"
#include "dcpp/storage/storage.h"
#include "dcpp/storage/torch_save_layout.h"

namespace st = dcpp::storage;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto mem = st::NewMemoryStorage("fuzz:");
  {
    auto f = mem->CreateForWrite("model.pt");
    if (!f.ok() || !(*f)->WriteAt(0, {data, size}).ok() || !(*f)->Close().ok()) std::abort();
  }
  auto storage = st::NewTorchSaveStorage(std::move(mem), "model.pt");
  dcpp::Result<dcpp::Metadata> md = st::ReadTorchSaveMetadata(*storage);
  if (!md.ok()) return 0;
  for (const dcpp::EntryMeta& e : md->entries) {
    if (e.is_tensor()) {
      for (const dcpp::ChunkMeta& c : e.chunks) {
        const uint64_t want =
            static_cast<uint64_t>(dcpp::NumElements(c.sizes)) * dcpp::ElementSize(e.properties.dtype);
        if (c.storage.length != want) std::abort();
        if (c.storage.offset > size || c.storage.length > size - c.storage.offset) std::abort();
        // Structure and bounds only (no targets): must not crash.
        (void)st::ReadChunk(*storage, e.fqn, e.properties.dtype, c, {});
      }
    } else {
      auto blob = st::ReadItem(*storage, e.storage, e.fqn, uint64_t{1} << 28);
      if (!blob.ok()) std::abort();  // served from memory: always there
      auto v = dcpp::format::DecodeValueArchive(dcpp::format::zip::AsBytes(*blob), e.fqn);
      if (!v.ok() || v->kind() == dcpp::Value::Kind::kOpaque) std::abort();
    }
  }
  return 0;
}
