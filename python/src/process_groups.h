// dcpp::ProcessGroup over Python: the groups behind dcpp.save / dcpp.load
// (process_group=...), and how a multi-rank call keeps its ranks in step
// when one of them fails before reaching dcpp.
//
// The group's collectives call an adapter from dcpp._groups (TorchGroup for
// torch.distributed, MpiGroup for mpi4py): `rank()`, `size()`, `barrier()`,
// `gather(data, root)`, `broadcast(data, root)`, `all_gather(data)`,
// `scatter(parts, root)`, `duplicate()` and a `kind` attribute, payloads as
// bytes. dcpp calls the collectives on the thread running Save or Load,
// with the GIL released; each collective takes the GIL for its Python part
// (the torch and mpi4py calls release it again while they wait).
#ifndef DCPP_PYTHON_PROCESS_GROUPS_H_
#define DCPP_PYTHON_PROCESS_GROUPS_H_

#include <nanobind/nanobind.h>

#include <memory>
#include <optional>
#include <string_view>

#include "dcpp/process_group.h"
#include "dcpp/status.h"

namespace dcpp::python {

// A ProcessGroup whose collectives call `adapter` (see above); null when
// `adapter` is None. Needs the GIL; asks the adapter for its rank and size
// once. The group follows ProcessGroup's contract:
//  * a root outside [0, size()) is InvalidArgument on every rank, without
//    calling Python;
//  * an exception the adapter raises becomes a Status naming the
//    collective, the group kind and the Python exception ("TypeError: ..."):
//    dcpp._groups.GroupError keeps its code (the ranks detected it alike,
//    e.g. a collective mismatch, and the group stays usable unless its
//    `broken` is set); TimeoutError, or a message saying "timed out", is
//    DeadlineExceeded; RuntimeError and OSError (torch's and gloo's
//    transport errors, mpi4py's MPI.Exception) and exceptions that are not
//    Exceptions (KeyboardInterrupt) are Aborted; anything else is
//    Internal. Apart from the GroupErrors that leave it usable, every
//    such failure breaks the group: later collectives fail at once with
//    Aborted repeating the first error. Nothing is thrown across dcpp.
//  * Duplicate() calls adapter.duplicate() (collective) and wraps the
//    result.
// Thread safety: one thread at a time per group, as for every ProcessGroup.
// The group may be destroyed on any thread (it takes the GIL to drop the
// adapter; after interpreter shutdown the adapter is leaked).
std::unique_ptr<ProcessGroup> MakePyProcessGroup(nanobind::handle adapter);

// The Status a Python exception stands for, for errors raised on one rank
// before dcpp runs (converting the state dict, checking arguments):
// dcpp's own exceptions keep their code; TypeError and ValueError are
// InvalidArgument, NotImplementedError Unimplemented, MemoryError
// ResourceExhausted, FileNotFoundError NotFound, FileExistsError
// AlreadyExists, PermissionError PermissionDenied, TimeoutError
// DeadlineExceeded, anything else Internal. The message is "<Type>:
// <str(exception)>", without dcpp's own class names. Needs the GIL.
Status StatusFromPython(const nanobind::python_error& error);

// The first steps of a save or load with a group run in Python on each rank
// (checking arguments, converting the state dict). A rank that fails there
// must still meet the others, carrying its error, or they would wait in
// their first collective until the group times out. Usage (GIL held):
//
//   LocalStep step(group.get());
//   step.Run([&] { sd = conv.ConvertStateDict(state_dict); });
//   step.Agree("save");   // raises on every rank if any rank failed
//
// Without a group, or with a group of one rank, Run lets exceptions
// propagate and Agree does nothing: behaviour is exactly that of a call
// without a group.
class LocalStep {
 public:
  explicit LocalStep(ProcessGroup* group) : group_(group) {}

  // Runs fn (which may raise Python exceptions). With several ranks, a
  // Python exception is kept instead of propagating, and fn's later steps
  // are skipped by the caller checking failed().
  template <typename F>
  void Run(F&& fn) {
    if (error_) return;
    if (!Shared()) {
      fn();
      return;
    }
    try {
      fn();
    } catch (...) {
      KeepCurrentException();
    }
  }

  // Records an exception raised before the call reached C++ (the package's
  // own argument checks): `exception` is the exception object.
  void Fail(nanobind::handle exception);

  bool failed() const { return error_.has_value(); }

  // With several ranks: one all-gather of every rank's outcome (this is the
  // group's first collective of the call, on every rank). If any rank
  // failed, raises, on every rank, the exception for "<what> failed on rank
  // R (<CODE>: <Type>: <message>)" (ranks with the same error listed
  // together); where this rank failed, its own exception is the
  // __cause__. A failure of the all-gather itself is raised as its Status.
  // Releases the GIL while the collective runs.
  void Agree(std::string_view what);

 private:
  bool Shared() const { return group_ != nullptr && group_->size() > 1; }
  // Inside a catch block: keeps the exception in flight as a Python
  // exception (nanobind's TypeError/ValueError, std::bad_alloc as
  // MemoryError, other C++ exceptions as RuntimeError).
  void KeepCurrentException();

  ProcessGroup* group_;
  std::optional<nanobind::python_error> error_;
};

// With several ranks, every rank's `local` status is all-gathered and every
// rank returns the same combined status ("<what> failed on rank R (...)");
// otherwise returns `local`. Call without the GIL.
Status AgreeOnStatus(ProcessGroup* group, std::string_view what, Status local);

// Binds dcpp._dcpp._ProcessGroup(adapter): the C++ group over an adapter,
// its collectives callable from Python (GIL released while they run, as
// in a save), raising dcpp's exceptions. For tests of the group itself.
void BindProcessGroups(nanobind::module_& m);

}  // namespace dcpp::python

#endif  // DCPP_PYTHON_PROCESS_GROUPS_H_
