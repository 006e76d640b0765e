// Fuzzes ChunkStream, which routes a decoded tensor archive into read
// targets while it streams past: whatever the bytes, it must never crash,
// and whenever it says the archive fits its assumptions, the targets must
// hold exactly what decoding the archive whole gives (the two read paths of
// ReadChunk agree).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "dcpp/storage/chunk_stream.h"
#include "dcpp/format/torch_pickle.h"
#include "dcpp/format/zip.h"

using namespace dcpp;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const format::zip::Bytes archive(data, size);
  // The chunk the metadata would describe: the archive's own tensor when it
  // decodes (so the stream has a chance to fit), else a fixed 4 x 4 float.
  ChunkMeta chunk;
  DType dtype = DType::kFloat32;
  chunk.sizes = {4, 4};
  auto whole = format::DecodeTensorArchive(archive);
  if (whole.ok() && NumElements(whole->shape) <= (int64_t{1} << 20)) {
    dtype = whole->dtype;
    chunk.sizes = whole->shape;
  }
  chunk.offsets.assign(chunk.sizes.size(), 3);
  const size_t nbytes = static_cast<size_t>(NumElements(chunk.sizes)) * ElementSize(dtype);
  std::vector<uint8_t> out(nbytes, 0xA5);
  const storage::ChunkTarget target{MakeView(out.data(), dtype, chunk.sizes), chunk.offsets,
                                   chunk.sizes};
  const size_t piece = size > 0 ? 1 + data[0] % 97 : 1;
  const uint64_t window = size > 1 ? 1 + data[1] * 3 : 64;
  // With checksums checked, damaged bytes may be refused with an error,
  // never anything worse.
  {
    storage::ChunkStream checked(dtype, chunk, {&target, 1}, window, /*verify_checksums=*/true);
    for (size_t at = 0; at < size; at += piece) {
      const size_t n = piece < size - at ? piece : size - at;
      if (!checked.Write(archive.subspan(at, n)).ok()) std::abort();  // it never fails
    }
    bool fits = false;
    const Status s = checked.Finish(&fits);
    // A refusal is a Status (DataLoss for a checksum, Unimplemented for a
    // compressed zip record, ...); only an internal error is a bug.
    if (!s.ok() && s.code() == StatusCode::kInternal) std::abort();
  }
  // Unchecked, the two read paths must agree byte for byte.
  storage::ChunkStream stream(dtype, chunk, {&target, 1}, window, /*verify_checksums=*/false);
  for (size_t at = 0; at < size; at += piece) {
    const size_t n = piece < size - at ? piece : size - at;
    if (!stream.Write(archive.subspan(at, n)).ok()) std::abort();  // it never fails
  }
  bool fits = false;
  if (!stream.Finish(&fits).ok()) std::abort();
  if (!fits) return 0;
  if (!whole.ok() || whole->dtype != dtype || whole->shape != chunk.sizes) std::abort();
  // The whole decode, copied into a row-major buffer, must equal the stream's.
  std::vector<uint8_t> expected(nbytes, 0);
  TensorView src;
  src.data = const_cast<uint8_t*>(whole->storage.data()) +
             whole->storage_offset * static_cast<int64_t>(ElementSize(dtype));
  src.dtype = dtype;
  src.shape = whole->shape;
  src.strides = whole->strides;
  if (!CopyTensor(src, MakeView(expected.data(), dtype, chunk.sizes)).ok()) std::abort();
  if (expected != out) std::abort();
  return 0;
}
