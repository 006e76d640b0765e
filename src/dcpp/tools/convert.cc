#include "dcpp/tools/convert.h"

#include <unordered_map>

#include "dcpp/base/exception_barrier.h"
#include "dcpp/io/dcp_layout.h"

namespace dcpp::tools {

static Result<Metadata> ConvertImpl(const std::string& src, const std::string& dst,
                                     const SaveOptions& options) {
  DCPP_ASSIGN_OR_RETURN(Metadata src_md, ReadMetadata(src));
  LoadAllOptions load_options;
  load_options.thread_count = options.thread_count;
  DCPP_ASSIGN_OR_RETURN(Value state, LoadAll(src, load_options));
  DCPP_ASSIGN_OR_RETURN(Metadata md, Save(state, dst, options));
  // Save records what a tensor's memory says (dtype); the source's extra
  // tensor properties are metadata only, so copy them and commit again.
  std::unordered_map<std::string_view, const EntryMeta*> by_fqn;
  for (const auto& e : src_md.entries) by_fqn.emplace(e.fqn, &e);
  bool changed = false;
  size_t matched = 0;
  for (auto& e : md.entries) {
    auto it = by_fqn.find(e.fqn);
    if (it == by_fqn.end()) continue;
    ++matched;
    if (!e.is_tensor() || !it->second->is_tensor()) continue;
    if (!(e.properties == it->second->properties)) {
      e.properties = it->second->properties;
      changed = true;
    }
  }
  if (matched != src_md.entries.size() || md.entries.size() != src_md.entries.size())
    return InternalError("converting " + src + " changed its set of keys (" +
                         std::to_string(src_md.entries.size()) + " in, " +
                         std::to_string(md.entries.size()) + " out, " + std::to_string(matched) +
                         " matched); " + dst + " is not a faithful copy");
  if (changed) DCPP_RETURN_IF_ERROR(io::CommitMetadata(dst, md, options.sync_files));
  return md;
}

Result<Metadata> Convert(const std::string& src, const std::string& dst,
                         const SaveOptions& options) {
  return CatchExceptions("convert " + src + " to " + dst,
                         [&] { return ConvertImpl(src, dst, options); });
}

}  // namespace dcpp::tools
