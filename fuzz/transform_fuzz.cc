// Fuzzes the stream-transform decoders (stream.zstd/1, dcpp.byteshuffle/1 and
// their chains): DecodeAll must return an error or bytes within its cap,
// never crash. Whatever decodes is encoded again and must decode the same.
// The first input byte picks the chain; the rest is the stored stream.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "dcpp/transform/transform.h"

namespace tf = dcpp::transform;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const std::vector<std::vector<std::string>> kChains = {
      {"stream.zstd/1"},
      {"dcpp.byteshuffle/1"},
      {"stream.zstd/1", "dcpp.byteshuffle/1"},
      {"dcpp.byteshuffle/1", "stream.zstd/1"}};
  const std::vector<std::string>& recorded = kChains[data[0] % kChains.size()];
  constexpr uint64_t kCap = uint64_t{1} << 24;
  dcpp::Result<std::string> decoded = tf::DecodeAll(recorded, {data + 1, size - 1}, kCap);
  if (!decoded.ok()) return 0;
  if (decoded->size() > kCap) std::abort();

  const std::vector<std::string> apply(recorded.rbegin(), recorded.rend());
  tf::EncodeOptions options;
  options.element_size = 1 + data[0] % 8;
  std::vector<std::string> again;
  const uint8_t* p = reinterpret_cast<const uint8_t*>(decoded->data());
  dcpp::Result<std::string> encoded = tf::EncodeAll(apply, options, {p, decoded->size()}, &again);
  if (!encoded.ok() || again != recorded) std::abort();
  const uint8_t* q = reinterpret_cast<const uint8_t*>(encoded->data());
  dcpp::Result<std::string> round = tf::DecodeAll(recorded, {q, encoded->size()}, kCap);
  if (!round.ok() || *round != *decoded) std::abort();
  return 0;
}
