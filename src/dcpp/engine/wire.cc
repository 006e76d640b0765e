#include "dcpp/engine/wire.h"

#include <cstring>

#include <algorithm>
#include <iterator>

#include "dcpp/base/thread_pool.h"

namespace dcpp::engine {

namespace {
constexpr uint64_t kMaxCount = uint64_t{1} << 32;

Status Truncated() { return DataLossError("truncated message between ranks"); }
}  // namespace

void WireWriter::U64(uint64_t v) { PutVarint(&out_, v); }

void WireWriter::Str(std::string_view s) {
  U64(s.size());
  out_.append(s);
}

void WireWriter::Shape(std::span<const int64_t> s) {
  U64(s.size());
  for (int64_t d : s) I64(d);
}

void WireWriter::Status(const dcpp::Status& s) {
  U64(static_cast<uint64_t>(s.code()));
  Str(s.message());
}

Result<uint64_t> WireReader::U64() {
  uint64_t v = 0;
  if (!Varint(&v)) return Truncated();
  return v;
}

Result<int64_t> WireReader::I64() {
  DCPP_ASSIGN_OR_RETURN(uint64_t v, U64());
  return static_cast<int64_t>(v);
}

Result<std::string_view> WireReader::StrView() {
  std::string_view s;
  if (!Bytes(&s)) return DataLossError("truncated string in a message between ranks");
  return s;
}

Result<std::string> WireReader::Str() {
  DCPP_ASSIGN_OR_RETURN(std::string_view s, StrView());
  return std::string(s);
}

Result<dcpp::Shape> WireReader::Shape() {
  DCPP_ASSIGN_OR_RETURN(uint64_t n, U64());
  // Every element takes at least a byte.
  if (n > remaining()) return DataLossError("truncated shape in a message between ranks");
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

// Per item: fqn, encoded path (LocalPlan's encoding), (dtype << 1 | is_tensor),
// for tensors offsets, sizes and global shape, then nbytes.
std::string EncodeLocalPlan(const dcpp::Status& status, const plan::LocalPlan& plan) {
  WireWriter w;
  w.Reserve(64 + status.message().size() + plan.size() * 48);
  w.Status(status);
  w.U64(plan.size());
  for (size_t i = 0; i < plan.size(); ++i) {
    const plan::PlannedItem it = plan.item(i);
    w.Str(it.fqn);
    w.Str(plan.EncodedPath(i));
    w.U64((static_cast<uint64_t>(it.dtype) << 1) | (it.is_tensor ? 1 : 0));
    if (it.is_tensor) {
      w.Shape(it.offsets);
      w.Shape(it.sizes);
      w.Shape(it.global_shape);
    }
    w.U64(it.nbytes);
  }
  return w.Take();
}

Result<plan::LocalPlan> DecodeLocalPlan(std::string_view data, dcpp::Status* rank_status) {
  WireReader r(data);
  DCPP_RETURN_IF_ERROR(r.ReadStatus(rank_status));
  uint64_t n = 0;
  if (!r.Varint(&n)) return Truncated();
  // An item takes at least five bytes.
  if (n > kMaxCount || n > r.remaining() / 5) return DataLossError("bad item count in a save plan");
  plan::LocalPlan plan;
  plan.Reserve(n, r.remaining(), 0);
  // Shapes are decoded into `dims` (usually the fixed buffer: a few dims).
  int64_t fixed[24];
  std::vector<int64_t> grown;
  for (uint64_t k = 0; k < n; ++k) {
    auto bad = [&](std::string_view what) {
      return DataLossError(std::string(what) + " in save plan item " + std::to_string(k));
    };
    plan::PlannedItem item;
    std::string_view path;
    uint64_t flags = 0;
    if (!r.Bytes(&item.fqn) || !r.Bytes(&path) || !r.Varint(&flags)) return bad("truncated item");
    if ((flags >> 1) >= static_cast<uint64_t>(kNumDTypes)) return bad("bad dtype");
    item.is_tensor = (flags & 1) != 0;
    item.dtype = static_cast<DType>(flags >> 1);
    if (item.is_tensor) {
      int64_t* dims = fixed;
      size_t capacity = std::size(fixed), used = 0;
      uint64_t nd[3];
      for (uint64_t& count : nd) {
        if (!r.Varint(&count) || count > r.remaining()) return bad("truncated shape");
        if (count > capacity - used) {
          grown.assign(dims, dims + used);
          grown.resize(used + count);
          dims = grown.data();
          capacity = grown.size();
        }
        for (uint64_t j = 0; j < count; ++j) {
          uint64_t d = 0;
          if (!r.Varint(&d)) return bad("truncated shape");
          dims[used++] = static_cast<int64_t>(d);
        }
      }
      item.offsets = std::span<const int64_t>(dims, nd[0]);
      item.sizes = std::span<const int64_t>(dims + nd[0], nd[1]);
      item.global_shape = std::span<const int64_t>(dims + nd[0] + nd[1], nd[2]);
    }
    if (!r.Varint(&item.nbytes)) return bad("truncated item");
    Status added = plan.AddEncoded(item, path);
    if (!added.ok()) return added.WithContext("save plan item " + std::to_string(k));
  }
  if (!r.done()) return DataLossError("trailing bytes after a save plan");
  return plan;
}

std::vector<plan::LocalPlan> DecodeLocalPlans(std::span<const std::string> messages,
                                              std::vector<dcpp::Status>* statuses, int threads) {
  std::vector<plan::LocalPlan> plans(messages.size());
  statuses->assign(messages.size(), dcpp::Status());
  // Threads pay off only for large jobs.
  size_t bytes = 0;
  for (const std::string& m : messages) bytes += m.size();
  constexpr size_t kMinBytesPerThread = size_t{4} << 20;
  const int workers = static_cast<int>(std::clamp<size_t>(
      threads > 0 ? static_cast<size_t>(threads) : static_cast<size_t>(DefaultThreadCount()), 1,
      std::max<size_t>(1, bytes / kMinBytesPerThread)));
  (void)ParallelFor(messages.size(), workers, [&](size_t r) {
    auto plan = DecodeLocalPlan(messages[r], &(*statuses)[r]);
    if (plan.ok()) {
      plans[r] = std::move(*plan);
    } else {
      (*statuses)[r] = plan.status();
    }
    return dcpp::Status();
  });
  return plans;
}

std::string EncodePlanOffer(std::string local_plan) {
  local_plan.push_back('\0');
  return local_plan;
}

std::string EncodeFingerprintOffer(uint64_t a, uint64_t b) {
  std::string out(17, '\1');
  std::memcpy(out.data(), &a, 8);
  std::memcpy(out.data() + 8, &b, 8);
  return out;
}

Result<bool> DecodeOffer(std::string* message, uint64_t* a, uint64_t* b) {
  if (message->empty()) return DataLossError("empty plan message");
  const char kind = message->back();
  message->pop_back();
  if (kind == '\0') return false;
  if (kind != '\1' || message->size() != 16)
    return DataLossError("plan message of unknown kind " + std::to_string(kind));
  std::memcpy(a, message->data(), 8);
  std::memcpy(b, message->data() + 8, 8);
  message->clear();
  return true;
}

std::string EncodeAssignment(const Assignment& a) {
  WireWriter w;
  w.Status(a.status);
  w.Str(a.tag);
  w.U64(static_cast<uint64_t>(a.plan));
  w.U64(a.keep.size());
  for (size_t k : a.keep) w.U64(k);
  return w.Take();
}

dcpp::Status DecodeAssignment(std::string_view data, Assignment* a) {
  WireReader r(data);
  DCPP_RETURN_IF_ERROR(r.ReadStatus(&a->status));
  DCPP_ASSIGN_OR_RETURN(a->tag, r.Str());
  DCPP_ASSIGN_OR_RETURN(uint64_t plan, r.U64());
  if (plan > 2) return DataLossError("assignment with unknown plan kind " + std::to_string(plan));
  a->plan = static_cast<Assignment::Plan>(plan);
  DCPP_ASSIGN_OR_RETURN(uint64_t n, r.U64());
  for (uint64_t i = 0; i < n; ++i) {
    DCPP_ASSIGN_OR_RETURN(uint64_t k, r.U64());
    a->keep.push_back(k);
  }
  return dcpp::Status();
}

std::string EncodeWriteResults(const dcpp::Status& status, const std::vector<WriteItem>& items,
                               const std::vector<size_t>& keep) {
  WireWriter w;
  w.Status(status);
  w.U64(status.ok() ? keep.size() : 0);
  if (status.ok()) {
    for (size_t k : keep) {
      w.Str(items[k].storage.relative_path);
      w.U64(items[k].storage.offset);
      w.U64(items[k].storage.length);
      w.U64(items[k].storage.transform_descriptors.size());
      for (const auto& d : items[k].storage.transform_descriptors) w.Str(d);
      w.U64(items[k].stored_crc32);
    }
  }
  return w.Take();
}

dcpp::Status DecodeWriteResults(std::string_view data, dcpp::Status* rank_status,
                                std::vector<StorageInfo>* out, std::vector<uint32_t>* stored_crcs) {
  WireReader r(data);
  DCPP_RETURN_IF_ERROR(r.ReadStatus(rank_status));
  DCPP_ASSIGN_OR_RETURN(uint64_t n, r.U64());
  for (uint64_t i = 0; i < n; ++i) {
    StorageInfo s;
    DCPP_ASSIGN_OR_RETURN(s.relative_path, r.Str());
    DCPP_ASSIGN_OR_RETURN(s.offset, r.U64());
    DCPP_ASSIGN_OR_RETURN(s.length, r.U64());
    DCPP_ASSIGN_OR_RETURN(uint64_t transforms, r.U64());
    if (transforms > 64)
      return DataLossError("write results: " + std::to_string(transforms) +
                           " transforms on one item");
    for (uint64_t t = 0; t < transforms; ++t) {
      DCPP_ASSIGN_OR_RETURN(std::string d, r.Str());
      s.transform_descriptors.push_back(std::move(d));
    }
    DCPP_ASSIGN_OR_RETURN(uint64_t crc, r.U64());
    stored_crcs->push_back(static_cast<uint32_t>(crc));
    out->push_back(std::move(s));
  }
  return dcpp::Status();
}

std::string EncodeCommitOutcome(const dcpp::Status& status, bool committed,
                                std::string_view metadata) {
  WireWriter w;
  w.Reserve(32 + status.message().size() + metadata.size());
  w.Status(status);
  w.U64(committed);
  w.Str(metadata);
  return w.Take();
}

dcpp::Status DecodeCommitOutcome(std::string_view data, dcpp::Status* status, bool* committed,
                                 std::string* metadata) {
  WireReader r(data);
  DCPP_RETURN_IF_ERROR(r.ReadStatus(status));
  DCPP_ASSIGN_OR_RETURN(uint64_t c, r.U64());
  DCPP_ASSIGN_OR_RETURN(*metadata, r.Str());
  *committed = c != 0;
  return dcpp::Status();
}

std::string EncodeSharedMetadata(const dcpp::Status& status, std::string_view bytes) {
  WireWriter w;
  w.Status(status);
  w.Str(status.ok() ? bytes : std::string_view());
  return w.Take();
}

dcpp::Status DecodeSharedMetadata(std::string_view data, dcpp::Status* status, std::string* bytes) {
  WireReader r(data);
  DCPP_RETURN_IF_ERROR(r.ReadStatus(status));
  if (!status->ok()) return dcpp::Status();
  DCPP_ASSIGN_OR_RETURN(*bytes, r.Str());
  return dcpp::Status();
}

std::string EncodeStatus(const dcpp::Status& status) {
  WireWriter w;
  w.Status(status);
  return w.Take();
}

std::vector<dcpp::Status> DecodeStatuses(std::span<const std::string> messages) {
  std::vector<dcpp::Status> statuses(messages.size());
  for (size_t r = 0; r < messages.size(); ++r) {
    WireReader reader(messages[r]);
    dcpp::Status decoded = reader.ReadStatus(&statuses[r]);
    if (!decoded.ok()) statuses[r] = decoded;
  }
  return statuses;
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
