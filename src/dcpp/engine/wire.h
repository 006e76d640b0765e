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

#include "dcpp/base/varint.h"
#include "dcpp/engine/items.h"
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
  bool Varint(uint64_t* v) { return GetVarint(data_, &pos_, v); }
  bool Bytes(std::string_view* s) {
    uint64_t n = 0;
    if (!Varint(&n) || n > data_.size() - pos_) return false;
    *s = data_.substr(pos_, n);
    pos_ += n;
    return true;
  }

 private:
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

// Save, step 1 with a plan cache: what a rank offers the coordinator,
// either its whole encoded local plan or only the 16-byte fingerprint of a
// plan the coordinator has cached. The kind is the message's last byte, so
// the coordinator strips it without copying the plan.
std::string EncodePlanOffer(std::string local_plan);
std::string EncodeFingerprintOffer(uint64_t a, uint64_t b);
// Strips the kind byte off `*message`. Returns true for a fingerprint
// (stored in *a, *b; the message is left empty), false for a full plan
// (*message is then the encoded local plan). DataLoss when neither.
Result<bool> DecodeOffer(std::string* message, uint64_t* a, uint64_t* b);

// Save, step 2: what the coordinator tells each rank after global planning.
struct Assignment {
  enum class Plan : uint8_t {
    kPlanned = 0,  // planned from the plans just gathered
    kReused = 1,   // the cached global plan was reused
    kResend = 2,   // a fingerprint did not match: send the full plans again
  };
  dcpp::Status status;       // the planning outcome; not OK: write nothing
  std::string tag;           // this save's data file name tag
  Plan plan = Plan::kPlanned;
  std::vector<size_t> keep;  // indices of this rank's items to write
};
std::string EncodeAssignment(const Assignment& a);
// Appends the decoded indices to a->keep. DataLoss when `data` is not a
// message EncodeAssignment wrote (a is then partly filled).
dcpp::Status DecodeAssignment(std::string_view data, Assignment* a);

// Save, step 3: a rank's write results, its status and then, if OK, where
// each kept item (items[keep[0]], items[keep[1]] ...) went and its
// stored_crc32.
std::string EncodeWriteResults(const dcpp::Status& status, const std::vector<WriteItem>& items,
                               const std::vector<size_t>& keep);
// *rank_status is the status the rank sent; the StorageInfos are appended
// to *out and the items' stored_crc32 to *stored_crcs. DataLoss when `data`
// is not a message EncodeWriteResults wrote, or names more than 64
// transforms for an item.
dcpp::Status DecodeWriteResults(std::string_view data, dcpp::Status* rank_status,
                                std::vector<StorageInfo>* out, std::vector<uint32_t>* stored_crcs);

// Save, step 4: the coordinator's commit outcome, broadcast to every rank:
// its status, whether its .metadata was published, and the encoded
// metadata committed (empty when none was).
std::string EncodeCommitOutcome(const dcpp::Status& status, bool committed,
                                std::string_view metadata);
// DataLoss when `data` is not a message EncodeCommitOutcome wrote.
dcpp::Status DecodeCommitOutcome(std::string_view data, dcpp::Status* status, bool* committed,
                                 std::string* metadata);

// Load: the .metadata bytes rank 0 read and decoded, or why it could not
// (then `bytes` is ignored and sent empty).
std::string EncodeSharedMetadata(const dcpp::Status& status, std::string_view bytes);
// *status is rank 0's status; *bytes is filled only when it is OK. DataLoss
// when `data` is not a message EncodeSharedMetadata wrote.
dcpp::Status DecodeSharedMetadata(std::string_view data, dcpp::Status* status, std::string* bytes);

// A rank's final status, gathered so every rank can return the same error.
std::string EncodeStatus(const dcpp::Status& status);
// Element r: the status messages[r] holds, or the DataLoss saying why it
// does not decode.
std::vector<dcpp::Status> DecodeStatuses(std::span<const std::string> messages);

// Combines per-rank failures into the one error every rank returns:
// "<what> failed on rank 1 (NOT_FOUND: ...); rank 3 (...)". The code is the
// failures' code when they agree, else Aborted. OK if none failed.
dcpp::Status CombineRankFailures(std::string_view what, const std::vector<dcpp::Status>& by_rank);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_WIRE_H_
