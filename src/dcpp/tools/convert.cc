#include "dcpp/tools/convert.h"

#include <unordered_map>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/engine/engine.h"
#include "dcpp/storage/storage.h"

namespace dcpp::tools {

static Result<Metadata> ConvertImpl(const std::string& src, const std::string& dst,
                                     const SaveOptions& options) {
  DCPP_ASSIGN_OR_RETURN(Metadata src_md, ReadMetadata(src));
  LoadAllOptions load_options;
  load_options.io_threads = options.io_threads;
  DCPP_ASSIGN_OR_RETURN(Value state, LoadAll(src, load_options));
  // Save records what a tensor's memory says (dtype); the source's extra
  // tensor properties are metadata only, so they are copied into the
  // metadata before it is committed (in the same locked commit).
  std::unordered_map<std::string_view, const EntryMeta*> by_fqn;
  for (const auto& e : src_md.entries) by_fqn.emplace(e.fqn, &e);
  auto copy_properties = [&](Metadata& md) -> Status {
    size_t matched = 0;
    for (auto& e : md.entries) {
      auto it = by_fqn.find(e.fqn);
      if (it == by_fqn.end()) continue;
      ++matched;
      if (e.is_tensor() && it->second->is_tensor()) e.properties = it->second->properties;
    }
    if (matched != src_md.entries.size() || md.entries.size() != src_md.entries.size())
      return InternalError("converting " + src + " changed its set of keys (" +
                           std::to_string(src_md.entries.size()) + " in, " +
                           std::to_string(md.entries.size()) + " out, " +
                           std::to_string(matched) + " matched); " + dst +
                           " would not be a faithful copy");
    return Status();
  };
  DCPP_ASSIGN_OR_RETURN(std::unique_ptr<storage::Storage> out, storage::OpenStorage(dst));
  return engine::Save(state, *out, options, copy_properties);
}

Result<Metadata> Convert(const std::string& src, const std::string& dst,
                         const SaveOptions& options) {
  return CatchExceptions("convert " + src + " to " + dst,
                         [&] { return ConvertImpl(src, dst, options); });
}

}  // namespace dcpp::tools
