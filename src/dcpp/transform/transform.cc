#include "dcpp/transform/transform.h"

#include <algorithm>
#include <limits>
#include <utility>

#include "dcpp/transform/byte_shuffle.h"
#include "dcpp/transform/zstd_stream.h"

namespace dcpp::transform {

Status StreamStage::Write(std::span<const uint8_t> data) {
  if (state_ != State::kOpen)
    return InvalidArgumentError(state_ == State::kFinished
                                    ? "stream transform used after Finish"
                                    : "stream transform used after an error");
  Status s = DoWrite(data);
  if (!s.ok()) state_ = State::kFailed;
  return s;
}

Status StreamStage::Finish() {
  if (state_ != State::kOpen)
    return InvalidArgumentError(state_ == State::kFinished
                                    ? "stream transform used after Finish"
                                    : "stream transform used after an error");
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

Result<uint64_t> MaxDecodedSize(const std::vector<std::string>& recorded, uint64_t stored_bytes) {
  constexpr uint64_t kMaxZstdExpansion = uint64_t{1} << 15;  // see the header
  uint64_t bound = stored_bytes;
  for (const std::string& descriptor : recorded) {
    DCPP_ASSIGN_OR_RETURN(Kind kind, Parse(descriptor, /*for_writing=*/false));
    if (kind == Kind::kZstd && __builtin_mul_overflow(bound, kMaxZstdExpansion, &bound))
      bound = UINT64_MAX;
  }
  return bound;
}

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

namespace {

// The decoding stages of a chain, front (recorded[0]) to back. A failure
// is named after the stage it started in when the chain has several: each
// stage's sink notes whether the error came from further down.
class ChainDecoder final : public Decoder {
 public:
  ChainDecoder(std::vector<std::string> recorded, std::vector<Kind> kinds, uint64_t max_output,
               ByteSink sink)
      : recorded_(std::move(recorded)), failed_below_(kinds.size(), false) {
    // caps[i]: the most stage i may produce. The last stage yields the item
    // (max_output); an earlier one yields what the next stage decodes,
    // which can be a little larger than that stage's own output.
    std::vector<uint64_t> caps(kinds.size(), max_output);
    for (size_t i = kinds.size() - 1; i-- > 0;) {
      const uint64_t next = caps[i + 1];
      caps[i] = kinds[i + 1] == Kind::kZstd ? internal::ZstdEncodedBound(next)
                : next > std::numeric_limits<uint64_t>::max() - internal::kShuffleHeaderSize
                    ? std::numeric_limits<uint64_t>::max()
                    : next + internal::kShuffleHeaderSize;
    }
    stages_.resize(kinds.size());
    for (size_t i = kinds.size(); i-- > 0;) {
      ByteSink next = sink;
      if (i + 1 < kinds.size()) {
        Decoder* successor = stages_[i + 1].get();
        next = [successor](std::span<const uint8_t> b) { return successor->Write(b); };
      }
      ByteSink noted = [this, i, next = std::move(next)](std::span<const uint8_t> b) {
        Status st = next(b);
        if (!st.ok()) failed_below_[i] = true;
        return st;
      };
      auto stage = kinds[i] == Kind::kZstd ? internal::NewZstdDecoder(caps[i], std::move(noted))
                                           : internal::NewByteShuffleDecoder(caps[i], std::move(noted));
      if (!stage.ok()) {
        init_ = stage.status();
        return;
      }
      stages_[i] = std::move(stage).value();
    }
  }

  Status init() const { return init_; }

  Status DoWrite(std::span<const uint8_t> data) override {
    if (data.empty()) return Status();
    return Named(stages_.front()->Write(data), 0);
  }

  Status DoFinish() override {
    // Front to back: each Finish flushes into the next stage, still open.
    for (size_t k = 0; k < stages_.size(); ++k)
      DCPP_RETURN_IF_ERROR(Named(stages_[k]->Finish(), k));
    return Status();
  }

 private:
  // `s` came from a call into stage `first`: it started there or below.
  Status Named(Status s, size_t first) const {
    if (s.ok()) return s;
    for (size_t i = first; i < stages_.size(); ++i) {
      if (failed_below_[i]) continue;
      if (recorded_.size() == 1) return s;  // the transform's own message names it
      return s.WithContext("transform " + std::to_string(i) + " '" + recorded_[i] + "'");
    }
    return s;  // the caller's sink failed
  }

  std::vector<std::string> recorded_;
  std::vector<std::unique_ptr<Decoder>> stages_;
  std::vector<bool> failed_below_;
  Status init_;
};

}  // namespace

Result<std::unique_ptr<Decoder>> NewDecoder(const std::vector<std::string>& recorded,
                                            uint64_t max_output, ByteSink sink) {
  if (!sink) return InvalidArgumentError("stream transforms: no sink");
  // All descriptors first: an unknown one is a clearer error than whatever
  // an earlier stage makes of the bytes.
  std::vector<Kind> kinds;
  kinds.reserve(recorded.size());
  for (const auto& d : recorded) {
    DCPP_ASSIGN_OR_RETURN(Kind k, Parse(d, /*for_writing=*/false));
    kinds.push_back(k);
  }
  if (kinds.empty()) {
    // Nothing to undo: the stored bytes are the item (within the limit).
    class Passthrough final : public Decoder {
     public:
      Passthrough(uint64_t max_output, ByteSink sink) : max_(max_output), sink_(std::move(sink)) {}
      Status DoWrite(std::span<const uint8_t> data) override {
        if (data.size() > max_ - seen_)
          return DataLossError("stored item exceeds the limit of " + std::to_string(max_) +
                               " bytes");
        seen_ += data.size();
        return data.empty() ? Status() : sink_(data);
      }
      Status DoFinish() override { return Status(); }

     private:
      const uint64_t max_;
      uint64_t seen_ = 0;
      ByteSink sink_;
    };
    return std::unique_ptr<Decoder>(new Passthrough(max_output, std::move(sink)));
  }
  auto chain = std::make_unique<ChainDecoder>(recorded, std::move(kinds), max_output,
                                              std::move(sink));
  DCPP_RETURN_IF_ERROR(chain->init());
  return std::unique_ptr<Decoder>(std::move(chain));
}

Result<std::string> DecodeAll(const std::vector<std::string>& recorded,
                              std::span<const uint8_t> stored, uint64_t max_output) {
  std::string out;
  // One allocation when the outermost zstd frame says how big it is.
  out.reserve(static_cast<size_t>(std::min(internal::ZstdDeclaredSize(stored), max_output)));
  DCPP_ASSIGN_OR_RETURN(auto decoder,
                        NewDecoder(recorded, max_output, [&out](std::span<const uint8_t> b) {
                          out.append(reinterpret_cast<const char*>(b.data()), b.size());
                          return Status();
                        }));
  DCPP_RETURN_IF_ERROR(decoder->Write(stored));
  DCPP_RETURN_IF_ERROR(decoder->Finish());
  return out;
}

}  // namespace dcpp::transform
