// Stateful: objects that save and restore themselves through a state dict,
// like torch.distributed.checkpoint.stateful.Stateful (a model, an
// optimizer, a data loader, an RNG).
//
// A Stateful stored at the top level of a state dict is saved as whatever
// StateDict() returns; on load, StateDict() is called first to obtain the
// tensors to fill in place, the checkpoint is read into them, and then
// LoadStateDict() receives the loaded sub-dict. (DCP handles Stateful only at
// the top level too; deeper ones are rejected with InvalidArgument.)
#ifndef DCPP_STATEFUL_H_
#define DCPP_STATEFUL_H_

#include "dcpp/status.h"
#include "dcpp/value.h"

namespace dcpp {

class Stateful {
 public:
  virtual ~Stateful() = default;
  // The object's state: a dict whose tensors may borrow the object's memory
  // (a load then writes into it directly).
  virtual Result<Value> StateDict() = 0;
  // Restores from `state` (what StateDict() returned, filled by the load).
  virtual Status LoadStateDict(const Value& state) = 0;
};

}  // namespace dcpp

#endif  // DCPP_STATEFUL_H_
