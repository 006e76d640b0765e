// The collectives of ProcessGroup, named once for every implementation's
// messages (and, for MPI, encoded in the header each rank exchanges).
#ifndef DCPP_COLLECTIVE_COLLECTIVE_OP_H_
#define DCPP_COLLECTIVE_COLLECTIVE_OP_H_

#include <cstdint>
#include <string>

namespace dcpp::collective {

// Values travel between MPI ranks: do not renumber.
enum class Op : uint64_t { kBarrier = 1, kGather, kBroadcast, kAllGather, kScatter };

// "Gather", or "unknown collective N" for a value off the list (a garbled
// header from a peer).
inline std::string OpName(uint64_t op) {
  switch (static_cast<Op>(op)) {
    case Op::kBarrier: return "Barrier";
    case Op::kGather: return "Gather";
    case Op::kBroadcast: return "Broadcast";
    case Op::kAllGather: return "AllGather";
    case Op::kScatter: return "Scatter";
  }
  return "unknown collective " + std::to_string(op);
}
inline std::string OpName(Op op) { return OpName(static_cast<uint64_t>(op)); }

}  // namespace dcpp::collective

#endif  // DCPP_COLLECTIVE_COLLECTIVE_OP_H_
