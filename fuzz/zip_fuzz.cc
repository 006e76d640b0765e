// Fuzzes the torch.save zip reader: Reader::Open and Read of every entry must
// return errors, never crash or read outside the input. Archives that read
// cleanly are also written back with LayOut and must read back the same.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "dcpp/format/zip.h"

namespace zip = dcpp::format::zip;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const zip::Bytes archive(data, size);
  dcpp::Result<zip::Reader> reader = zip::Reader::Open(archive);
  if (!reader.ok()) return 0;

  // The ranged reader (used for large chunks in files) must agree with the
  // in-memory one on every record.
  auto read_at = [&](uint64_t offset, uint64_t length) -> dcpp::Result<std::string> {
    if (offset > size || length > size - offset) std::abort();  // it checks first
    return std::string(reinterpret_cast<const char*>(data) + offset, length);
  };
  dcpp::Result<zip::Reader> ranged = zip::Reader::OpenRanged(size, read_at, size);
  if (!ranged.ok()) std::abort();
  for (const zip::Entry& entry : reader->directory().entries) {
    dcpp::Result<zip::Bytes> a = reader->Read(entry.name);
    dcpp::Result<zip::Bytes> b = ranged->Read(entry.name);
    if (a.ok() != b.ok()) std::abort();
    if (a.ok() && !std::equal(a->begin(), a->end(), b->begin(), b->end())) std::abort();
  }

  std::vector<zip::RecordSpec> records;
  bool all_read = true;
  for (const zip::Entry& entry : reader->directory().entries) {
    dcpp::Result<zip::Bytes> record = reader->Read(entry.name);
    (void)reader->Offset(entry.name);
    if (!record.ok()) {
      all_read = false;
      continue;
    }
    // Touch both ends so the sanitizer sees any out-of-bounds view.
    if (!record->empty()) {
      volatile uint8_t first = record->front();
      volatile uint8_t last = record->back();
      (void)first;
      (void)last;
    }
    if (record->data() < data || record->data() + record->size() > data + size) std::abort();
    records.push_back({entry.name, *record});
  }
  if (!all_read) return 0;

  zip::WriteOptions options;
  options.archive_name = reader->directory().archive_name;
  options.copy_threshold = 16;
  if (!zip::CheckLayOut(records, options).ok()) return 0;
  const std::string rewritten = zip::LayOut(records, options).Flatten();
  dcpp::Result<zip::Reader> again = zip::Reader::Open(zip::AsBytes(rewritten));
  if (!again.ok() || again->directory().entries.size() != records.size()) std::abort();
  for (const zip::RecordSpec& r : records) {
    dcpp::Result<zip::Bytes> back = again->Read(r.name);
    if (!back.ok() || back->size() != r.data.size() ||
        !std::equal(back->begin(), back->end(), r.data.begin())) {
      std::abort();
    }
  }
  return 0;
}
