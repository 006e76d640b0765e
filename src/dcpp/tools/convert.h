// `dcpp convert`: rewrite a checkpoint with dcpp's writer.
#ifndef DCPP_TOOLS_CONVERT_H_
#define DCPP_TOOLS_CONVERT_H_

#include <string>

#include "dcpp/checkpoint.h"

namespace dcpp::tools {

// Reads every entry of the checkpoint at `src` and writes it to `dst` with
// `options`. Nothing is dropped or altered: values dcpp cannot represent
// natively are copied as their original bytes, and tensor properties
// (requires_grad, memory format, pin_memory) are carried over. Returns the
// metadata written.
Result<Metadata> Convert(const std::string& src, const std::string& dst,
                         const SaveOptions& options);

}  // namespace dcpp::tools

#endif  // DCPP_TOOLS_CONVERT_H_
