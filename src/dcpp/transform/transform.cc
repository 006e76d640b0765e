#include "dcpp/transform/transform.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "dcpp/transform/byte_shuffle.h"
#include "dcpp/transform/zstd_stream.h"

namespace dcpp::transform {

Status Encoder::Write(std::span<const uint8_t> data) {
  if (state_ != State::kOpen)
    return InvalidArgumentError(state_ == State::kFinished
                                    ? "stream transform encoder used after Finish"
                                    : "stream transform encoder used after an error");
  Status s = DoWrite(data);
  if (!s.ok()) state_ = State::kFailed;
  return s;
}

Status Encoder::Finish() {
  if (state_ != State::kOpen)
    return InvalidArgumentError(state_ == State::kFinished
                                    ? "stream transform encoder used after Finish"
                                    : "stream transform encoder used after an error");
  Status s = DoFinish();
  state_ = s.ok() ? State::kFinished : State::kFailed;
  return s;
}
namespace {

enum class Kind { kZstd, kByteShuffle };

struct KnownTransform {
  std::string_view name;
  Kind kind;
};

// Descriptor versions: this build writes "<name>/1" and reads any "1" or
// "1.<anything>", as torch's ZStandard.from_descriptor does
// (version.partition('.')[0] == '1').
constexpr KnownTransform kKnown[] = {
    {"stream.zstd", Kind::kZstd},
    {"dcpp.byteshuffle", Kind::kByteShuffle},
};

std::string KnownList() {
  std::string s;
  for (const auto& k : kKnown) {
    if (!s.empty()) s += ", ";
    s += k.name;
    s += "/1";
  }
  return s;
}

Result<Kind> Parse(const std::string& descriptor, bool for_writing) {
  const size_t slash = descriptor.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == descriptor.size()) {
    return InvalidArgumentError("malformed stream transform descriptor '" + descriptor +
                                "': expected 'name/version' (known: " + KnownList() + ")");
  }
  const std::string_view name = std::string_view(descriptor).substr(0, slash);
  const std::string_view version = std::string_view(descriptor).substr(slash + 1);
  const auto it = std::find_if(std::begin(kKnown), std::end(kKnown),
                               [&](const KnownTransform& k) { return k.name == name; });
  if (it == std::end(kKnown)) {
    return InvalidArgumentError("unknown stream transform '" + descriptor +
                                "' (known: " + KnownList() + ")");
  }
  const bool ok = for_writing ? version == "1" : version.substr(0, version.find('.')) == "1";
  if (!ok) {
    return InvalidArgumentError("stream transform '" + descriptor + "': this build cannot " +
                                (for_writing ? "write" : "read") + " version '" +
                                std::string(version) + "' (known: " + KnownList() + ")");
  }
  return it->kind;
}

// Owns the stages; stage i's sink is stage i + 1's Write, the last stage's
// sink is the caller's. Checks the input size against the hint, so a wrong
// size fails the same way whatever the chain.
class ChainEncoder final : public Encoder {
 public:
  ChainEncoder(std::vector<std::unique_ptr<Encoder>> stages, ByteSink sink, uint64_t size_hint)
      : stages_(std::move(stages)), sink_(std::move(sink)), size_hint_(size_hint) {}

  Status DoWrite(std::span<const uint8_t> data) override { return WriteImpl(data); }
  Status DoFinish() override { return FinishImpl(); }

 private:
  Status WriteImpl(std::span<const uint8_t> data) {
    if (size_hint_ > 0 && data.size() > size_hint_ - written_) {
      return InvalidArgumentError("stream transforms: more bytes written than the " +
                                  std::to_string(size_hint_) + " announced (size_hint)");
    }
    written_ += data.size();  // cannot wrap: sizes of data in memory
    if (data.empty()) return Status();
    return stages_.empty() ? sink_(data) : stages_.front()->Write(data);
  }

  Status FinishImpl() {
    if (size_hint_ > 0 && written_ != size_hint_) {
      return InvalidArgumentError("stream transforms: " + std::to_string(written_) +
                                  " bytes written, but size_hint announced " +
                                  std::to_string(size_hint_));
    }
    // In application order: each Finish flushes into the next stage, which
    // is still open.
    for (auto& stage : stages_) DCPP_RETURN_IF_ERROR(stage->Finish());
    return Status();
  }

  std::vector<std::unique_ptr<Encoder>> stages_;
  ByteSink sink_;
  const uint64_t size_hint_;
  uint64_t written_ = 0;
};

}  // namespace

std::vector<std::string> KnownDescriptors() {
  std::vector<std::string> out;
  for (const auto& k : kKnown) out.push_back(std::string(k.name) + "/1");
  return out;
}

Result<std::unique_ptr<Encoder>> NewEncoder(const std::vector<std::string>& descriptors,
                                            const EncodeOptions& options, ByteSink sink,
                                            std::vector<std::string>* recorded) {
  if (!sink) return InvalidArgumentError("stream transforms: no sink");
  std::vector<Kind> kinds;
  kinds.reserve(descriptors.size());
  for (const auto& d : descriptors) {
    DCPP_ASSIGN_OR_RETURN(Kind k, Parse(d, /*for_writing=*/true));
    kinds.push_back(k);
  }
  if (options.zstd_workers < 0) {
    return InvalidArgumentError("stream transforms: zstd_workers is negative (" +
                                std::to_string(options.zstd_workers) + ")");
  }

  // The input size of each stage, where it can be known in advance: the
  // zstd stage pledges it as the frame's content size.
  std::vector<uint64_t> stage_input(kinds.size());
  uint64_t size = options.size_hint;
  for (size_t i = 0; i < kinds.size(); ++i) {
    stage_input[i] = size;
    if (size == 0) continue;
    if (kinds[i] == Kind::kByteShuffle &&
        size <= std::numeric_limits<uint64_t>::max() - internal::kShuffleHeaderSize) {
      size += internal::kShuffleHeaderSize;
    } else {
      size = 0;  // compressed size: unknown until done
    }
  }

  // Built back to front: each stage needs its successor as its sink.
  std::vector<std::unique_ptr<Encoder>> stages(kinds.size());
  for (size_t i = kinds.size(); i-- > 0;) {
    ByteSink next = sink;
    if (i + 1 < kinds.size()) {
      Encoder* successor = stages[i + 1].get();
      next = [successor](std::span<const uint8_t> bytes) { return successor->Write(bytes); };
    }
    if (kinds[i] == Kind::kZstd) {
      const int workers = internal::ZstdWorkersFor(options.zstd_workers, stage_input[i]);
      DCPP_ASSIGN_OR_RETURN(stages[i], internal::NewZstdEncoder(options.zstd_level, workers,
                                                                stage_input[i], std::move(next)));
    } else {
      DCPP_ASSIGN_OR_RETURN(stages[i], internal::NewByteShuffleEncoder(
                                           options.element_size, internal::kShuffleDefaultBlockLog2,
                                           std::move(next)));
    }
  }
  if (recorded != nullptr) recorded->assign(descriptors.rbegin(), descriptors.rend());
  return std::unique_ptr<Encoder>(
      new ChainEncoder(std::move(stages), std::move(sink), options.size_hint));
}

Result<std::string> EncodeAll(const std::vector<std::string>& descriptors,
                              const EncodeOptions& options, std::span<const uint8_t> data,
                              std::vector<std::string>* recorded) {
  EncodeOptions opts = options;
  if (opts.size_hint == 0) opts.size_hint = data.size();
  std::string out;
  ByteSink sink = [&out](std::span<const uint8_t> bytes) {
    out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
    return Status();
  };
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<Encoder> encoder,
                        NewEncoder(descriptors, opts, std::move(sink), recorded));
  DCPP_RETURN_IF_ERROR(encoder->Write(data));
  DCPP_RETURN_IF_ERROR(encoder->Finish());
  return out;
}

Result<std::string> DecodeAll(const std::vector<std::string>& recorded,
                              std::span<const uint8_t> stored, uint64_t max_output) {
  // All descriptors first: an unknown one is a clearer error than whatever
  // an earlier stage makes of the bytes.
  std::vector<Kind> kinds;
  kinds.reserve(recorded.size());
  for (const auto& d : recorded) {
    DCPP_ASSIGN_OR_RETURN(Kind k, Parse(d, /*for_writing=*/false));
    kinds.push_back(k);
  }
  if (kinds.empty()) {
    if (stored.size() > max_output) {
      return DataLossError("stored item of " + std::to_string(stored.size()) +
                           " bytes exceeds the limit of " + std::to_string(max_output) + " bytes");
    }
    return std::string(reinterpret_cast<const char*>(stored.data()), stored.size());
  }
  // caps[i]: the most stage i may produce. The last stage yields the item
  // (max_output); an earlier one yields what the next stage decodes, which
  // can be a little larger than that stage's own output.
  std::vector<uint64_t> caps(kinds.size(), max_output);
  for (size_t i = kinds.size() - 1; i-- > 0;) {
    const uint64_t next = caps[i + 1];
    caps[i] = kinds[i + 1] == Kind::kZstd ? internal::ZstdEncodedBound(next)
              : next > std::numeric_limits<uint64_t>::max() - internal::kShuffleHeaderSize
                  ? std::numeric_limits<uint64_t>::max()
                  : next + internal::kShuffleHeaderSize;
  }
  std::string current;
  for (size_t i = 0; i < kinds.size(); ++i) {
    const std::span<const uint8_t> input =
        i == 0 ? stored
               : std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(current.data()),
                                          current.size());
    Result<std::string> r = kinds[i] == Kind::kZstd ? internal::ZstdDecode(input, caps[i])
                                                    : internal::ByteShuffleDecode(input, caps[i]);
    if (!r.ok()) {
      // The transform's own message names it; say which descriptor it was
      // when the chain has several, or recorded a minor version.
      return recorded.size() > 1 ? r.status().WithContext("transform " + std::to_string(i) + " '" +
                                                          recorded[i] + "'")
                                 : r.status();
    }
    current = std::move(r).value();
  }
  return current;
}

}  // namespace dcpp::transform
