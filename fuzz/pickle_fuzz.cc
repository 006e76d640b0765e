// libFuzzer target: the pickle VM must return a Status, never crash, on any
// input. Every global and persistent id is allowed so the fuzzer reaches all
// opcodes; small caps keep single inputs cheap.
#include <cstddef>
#include <cstdint>
#include <span>

#include "dcpp/format/pickle.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  dcpp::format::pickle::ParseOptions options;
  options.allow_global = [](std::string_view, std::string_view) { return true; };
  options.allow_persistent_id = true;
  options.max_nodes = size_t{1} << 20;
  options.max_string_bytes = size_t{1} << 24;
  options.max_memo = size_t{1} << 20;
  options.max_stack_depth = size_t{1} << 20;
  auto graph = dcpp::format::pickle::Parse(std::span<const uint8_t>(data, size), options);
  if (graph.ok()) {
    // Touch the result so the graph is fully materialized.
    volatile size_t n = graph->nodes.size();
    (void)n;
  }
  return 0;
}
