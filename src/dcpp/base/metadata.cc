#include "dcpp/metadata.h"

namespace dcpp {

const EntryMeta* Metadata::Find(std::string_view fqn) const {
  for (const auto& e : entries)
    if (e.fqn == fqn) return &e;
  return nullptr;
}

}  // namespace dcpp
