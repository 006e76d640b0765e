// The messages ranks exchange during a save or load (plans, results,
// statuses), as compact byte strings: unsigned integers as LEB128 varints
// (signed ones as their two's complement bits), strings and shapes as a
// count and then their bytes or elements. Only dcpp processes of the same
// build read them, but they are still decoded defensively: a truncated or
// garbled message is a DataLoss status, never a crash.
#ifndef DCPP_ENGINE_WIRE_H_
#define DCPP_ENGINE_WIRE_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/plan/save_planner.h"
#include "dcpp/status.h"

namespace dcpp::engine {

// Appends values to a message. Not thread-safe.
class WireWriter {
 public:
  void U64(uint64_t v);
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void Str(std::string_view s);
  void Shape(std::span<const int64_t> s);
  void Status(const dcpp::Status& s);
  void Reserve(size_t bytes) { out_.reserve(bytes); }
  // The message; the writer is empty afterwards.
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

// Reads values back in the order they were written. Borrows `data`, which
// must outlive the reader (and every string_view it returns). Not
// thread-safe.
class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}
  Result<uint64_t> U64();
  Result<int64_t> I64();
  Result<std::string> Str();
  Result<std::string_view> StrView();
  Result<dcpp::Shape> Shape();
  // Reads a status written by WireWriter::Status into *out.
  dcpp::Status ReadStatus(dcpp::Status* out);
  bool done() const { return pos_ == data_.size(); }
  size_t remaining() const { return data_.size() - pos_; }

  // Unchecked-result forms for hot loops: false (and nothing consumed that
  // matters: the message is bad) on truncated or malformed input.
  bool Varint(uint64_t* v) {
    // One- and two-byte values (below 2^14) are by far the most common.
    if (data_.size() - pos_ >= 2) {
      const auto b0 = static_cast<uint8_t>(data_[pos_]);
      if (b0 < 0x80) {
        *v = b0;
        pos_ += 1;
        return true;
      }
      const auto b1 = static_cast<uint8_t>(data_[pos_ + 1]);
      if (b1 < 0x80) {
        *v = (b0 & 0x7Fu) | (uint64_t{b1} << 7);
        pos_ += 2;
        return true;
      }
    }
    return SlowVarint(v);
  }
  bool Bytes(std::string_view* s) {
    uint64_t n = 0;
    if (!Varint(&n) || n > data_.size() - pos_) return false;
    *s = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }

 private:
  bool SlowVarint(uint64_t* v);

  std::string_view data_;
  size_t pos_ = 0;
};

// A rank's local save plan, or the error that prevented it.
std::string EncodeLocalPlan(const dcpp::Status& status, const plan::LocalPlan& plan);
// DataLoss (naming the item) when `data` is not a message EncodeLocalPlan
// wrote; *rank_status is the status the rank sent.
Result<plan::LocalPlan> DecodeLocalPlan(std::string_view data, dcpp::Status* rank_status);
// Decodes every rank's plan (messages[r] from rank r) on up to `threads`
// threads (0: DefaultThreadCount()); the coordinator of a large job receives
// millions of items. Element r of the result is rank r's plan, and
// (*statuses)[r] the status rank r sent or, when its message does not decode,
// the DataLoss saying why (its plan is then empty). `messages` is only read.
std::vector<plan::LocalPlan> DecodeLocalPlans(std::span<const std::string> messages,
                                              std::vector<dcpp::Status>* statuses, int threads = 0);

// Combines per-rank failures into the one error every rank returns:
// "<what> failed on rank 1 (NOT_FOUND: ...); rank 3 (...)". The code is the
// failures' code when they agree, else Aborted. OK if none failed.
dcpp::Status CombineRankFailures(std::string_view what, const std::vector<dcpp::Status>& by_rank);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_WIRE_H_
