// The messages ranks exchange during a save or load (plans, results,
// statuses), as compact byte strings. Only dcpp processes of the same build
// read them, but they are still decoded defensively: a truncated or garbled
// message is a DataLoss status, never a crash.
#ifndef DCPP_ENGINE_WIRE_H_
#define DCPP_ENGINE_WIRE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "dcpp/metadata.h"
#include "dcpp/plan/save_planner.h"
#include "dcpp/status.h"

namespace dcpp::engine {

class WireWriter {
 public:
  void U64(uint64_t v);
  void I64(int64_t v) { U64(static_cast<uint64_t>(v)); }
  void Str(std::string_view s);
  void Shape(const dcpp::Shape& s);
  void Status(const dcpp::Status& s);
  std::string Take() { return std::move(out_); }

 private:
  std::string out_;
};

class WireReader {
 public:
  explicit WireReader(std::string_view data) : data_(data) {}
  Result<uint64_t> U64();
  Result<int64_t> I64();
  Result<std::string> Str();
  Result<dcpp::Shape> Shape();
  // Reads a status written by WireWriter::Status into *out.
  dcpp::Status ReadStatus(dcpp::Status* out);
  bool done() const { return pos_ == data_.size(); }

 private:
  std::string_view data_;
  size_t pos_ = 0;
};

// A rank's local save plan, or the error that prevented it.
std::string EncodeLocalPlan(const dcpp::Status& status, const plan::LocalPlan& plan);
Result<plan::LocalPlan> DecodeLocalPlan(std::string_view data, dcpp::Status* rank_status);

// Combines per-rank failures into the one error every rank returns:
// "<what> failed on rank 1 (NOT_FOUND: ...); rank 3 (...)". The code is the
// failures' code when they agree, else Aborted. OK if none failed.
dcpp::Status CombineRankFailures(std::string_view what, const std::vector<dcpp::Status>& by_rank);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_WIRE_H_
