#include "dcpp/engine/wire.h"

#include <algorithm>

namespace dcpp::engine {

namespace {
constexpr uint64_t kMaxCount = uint64_t{1} << 32;
}  // namespace

void WireWriter::U64(uint64_t v) {
  char b[8];
  for (int i = 0; i < 8; ++i) b[i] = static_cast<char>(v >> (8 * i));
  out_.append(b, 8);
}

void WireWriter::Str(std::string_view s) {
  U64(s.size());
  out_.append(s);
}

void WireWriter::Shape(const dcpp::Shape& s) {
  U64(s.size());
  for (int64_t d : s) I64(d);
}

void WireWriter::Status(const dcpp::Status& s) {
  U64(static_cast<uint64_t>(s.code()));
  Str(s.message());
}

Result<uint64_t> WireReader::U64() {
  if (data_.size() - pos_ < 8) return DataLossError("truncated message between ranks");
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= uint64_t{static_cast<uint8_t>(data_[pos_ + i])} << (8 * i);
  pos_ += 8;
  return v;
}

Result<int64_t> WireReader::I64() {
  DCPP_ASSIGN_OR_RETURN(uint64_t v, U64());
  return static_cast<int64_t>(v);
}

Result<std::string> WireReader::Str() {
  DCPP_ASSIGN_OR_RETURN(uint64_t n, U64());
  if (n > data_.size() - pos_) return DataLossError("truncated string in a message between ranks");
  std::string s(data_.substr(pos_, n));
  pos_ += n;
  return s;
}

Result<dcpp::Shape> WireReader::Shape() {
  DCPP_ASSIGN_OR_RETURN(uint64_t n, U64());
  if (n > (data_.size() - pos_) / 8) return DataLossError("truncated shape in a message between ranks");
  dcpp::Shape s(n);
  for (auto& d : s) {
    DCPP_ASSIGN_OR_RETURN(d, I64());
  }
  return s;
}

dcpp::Status WireReader::ReadStatus(dcpp::Status* out) {
  DCPP_ASSIGN_OR_RETURN(uint64_t code, U64());
  DCPP_ASSIGN_OR_RETURN(std::string msg, Str());
  if (code > static_cast<uint64_t>(StatusCode::kDeadlineExceeded))
    return DataLossError("bad status code in a message between ranks");
  *out = dcpp::Status(static_cast<StatusCode>(code), std::move(msg));
  return dcpp::Status();
}

std::string EncodeLocalPlan(const dcpp::Status& status, const plan::LocalPlan& plan) {
  WireWriter w;
  w.Status(status);
  w.U64(plan.items.size());
  for (const auto& it : plan.items) {
    w.Str(it.fqn);
    w.U64(it.path.size());
    for (const auto& p : it.path) {
      if (const auto* s = std::get_if<std::string>(&p)) {
        w.U64(0);
        w.Str(*s);
      } else {
        w.U64(1);
        w.I64(std::get<int64_t>(p));
      }
    }
    w.U64(it.is_tensor);
    w.U64(static_cast<uint64_t>(it.dtype));
    w.Shape(it.offsets);
    w.Shape(it.sizes);
    w.Shape(it.global_shape);
    w.U64(it.nbytes);
  }
  return w.Take();
}

Result<plan::LocalPlan> DecodeLocalPlan(std::string_view data, dcpp::Status* rank_status) {
  WireReader r(data);
  DCPP_RETURN_IF_ERROR(r.ReadStatus(rank_status));
  DCPP_ASSIGN_OR_RETURN(uint64_t n, r.U64());
  if (n > kMaxCount) return DataLossError("bad item count in a save plan");
  plan::LocalPlan plan;
  plan.items.resize(n);
  for (auto& it : plan.items) {
    DCPP_ASSIGN_OR_RETURN(it.fqn, r.Str());
    DCPP_ASSIGN_OR_RETURN(uint64_t parts, r.U64());
    if (parts > kMaxCount) return DataLossError("bad path length in a save plan");
    for (uint64_t i = 0; i < parts; ++i) {
      DCPP_ASSIGN_OR_RETURN(uint64_t tag, r.U64());
      if (tag == 0) {
        DCPP_ASSIGN_OR_RETURN(std::string s, r.Str());
        it.path.emplace_back(std::move(s));
      } else {
        DCPP_ASSIGN_OR_RETURN(int64_t v, r.I64());
        it.path.emplace_back(v);
      }
    }
    DCPP_ASSIGN_OR_RETURN(uint64_t is_tensor, r.U64());
    DCPP_ASSIGN_OR_RETURN(uint64_t dtype, r.U64());
    if (dtype >= static_cast<uint64_t>(kNumDTypes)) return DataLossError("bad dtype in a save plan");
    it.is_tensor = is_tensor != 0;
    it.dtype = static_cast<DType>(dtype);
    DCPP_ASSIGN_OR_RETURN(it.offsets, r.Shape());
    DCPP_ASSIGN_OR_RETURN(it.sizes, r.Shape());
    DCPP_ASSIGN_OR_RETURN(it.global_shape, r.Shape());
    DCPP_ASSIGN_OR_RETURN(it.nbytes, r.U64());
  }
  if (!r.done()) return DataLossError("trailing bytes after a save plan");
  return plan;
}

dcpp::Status CombineRankFailures(std::string_view what, const std::vector<dcpp::Status>& by_rank) {
  // Ranks failing with the same status are listed together.
  std::vector<std::pair<dcpp::Status, std::vector<size_t>>> groups;
  for (size_t r = 0; r < by_rank.size(); ++r) {
    if (by_rank[r].ok()) continue;
    auto it = std::find_if(groups.begin(), groups.end(),
                           [&](const auto& g) { return g.first == by_rank[r]; });
    if (it == groups.end()) {
      groups.push_back({by_rank[r], {r}});
    } else {
      it->second.push_back(r);
    }
  }
  if (groups.empty()) return dcpp::Status();
  StatusCode code = groups[0].first.code();
  std::string msg = std::string(what) + " failed on ";
  for (size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].first.code() != code) code = StatusCode::kAborted;
    const auto& ranks = groups[g].second;
    msg += (g ? "; " : "") + std::string(ranks.size() > 1 ? "ranks " : "rank ");
    for (size_t i = 0; i < ranks.size(); ++i) msg += (i ? ", " : "") + std::to_string(ranks[i]);
    msg += " (" + groups[g].first.ToString() + ")";
  }
  return dcpp::Status(code, std::move(msg));
}

}  // namespace dcpp::engine
