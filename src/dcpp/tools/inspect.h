// `dcpp inspect`: what a checkpoint holds, as a table or as JSON.
#ifndef DCPP_TOOLS_INSPECT_H_
#define DCPP_TOOLS_INSPECT_H_

#include <string>

#include "dcpp/metadata.h"
#include "dcpp/status.h"

namespace dcpp::tools {

// A table, one row per FQN: kind/dtype, global shape, chunk count, stored
// bytes and the files holding them; then totals. Reads only the metadata.
std::string InspectText(const std::string& checkpoint_dir, const Metadata& md);

// The same as a JSON document:
// {"path", "version", "entries": [{"fqn", "kind", "dtype", "shape",
//   "requires_grad", "chunks": [{"offsets", "sizes", "file", "offset",
//   "length", "transforms"}]} | {"fqn", "kind": "bytes", "file", "offset",
//   "length", "transforms"}], "total_stored_bytes", "files": [...]}
std::string InspectJson(const std::string& checkpoint_dir, const Metadata& md);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_INSPECT_H_
