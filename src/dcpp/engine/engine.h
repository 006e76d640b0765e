// The engine's entry points over a Storage. The public API
// (include/dcpp/checkpoint.h) opens the Storage for a path string and calls
// these; tests call them with memory or fault-injecting storage, and the
// tools use them where they need more than the public API.
#ifndef DCPP_ENGINE_ENGINE_H_
#define DCPP_ENGINE_ENGINE_H_

#include <functional>

#include "dcpp/async_checkpointer.h"
#include "dcpp/checkpoint.h"
#include "dcpp/storage/storage.h"

namespace dcpp::engine {

// Called on the coordinator with the complete metadata just before the
// commit; a non-OK status fails the save (nothing is committed, every rank
// returns it). Lets a caller adjust what is recorded (tools::Convert copies
// tensor properties) inside the same locked commit.
using BeforeCommit = std::function<Status(Metadata&)>;

// dcpp::Save into `storage` (shared by every rank of options.process_group
// when they run as threads of one process; each rank may also pass its own
// Storage for the same location). The commit protocol:
//  1. The coordinator (rank 0) creates the location and takes the lock
//     `.dcpp.lock` (Storage::TryLock; waiting up to
//     options.lock_timeout_ms), writing `pid=<pid> host=<host>
//     started=<UTC ISO-8601> save=<tag>` into it. A lock held by another
//     save fails every rank with Aborted quoting the holder's line.
//  2. Every rank writes its data files as `__{rank}_{n}.{tag}.distcp`, with
//     a tag random to this save, so no two saves ever share a file.
//  3. The coordinator writes `.metadata.{tag}.tmp` and renames it over
//     .metadata (the commit), syncing files and directory when
//     options.sync_files.
//  4. Still under the lock, it removes every `__*.distcp` and
//     `.metadata*.tmp` entry the new .metadata does not reference: files of
//     the replaced checkpoint and of earlier saves that died. Nothing else
//     is ever removed (the lock file neither).
// A failure anywhere before the commit removes what this save wrote and
// leaves any existing checkpoint untouched.
// `local_failure`: an error this rank hit before the save (an async save's
// staging); the rank still takes part in every collective, carrying it, so
// every rank fails with it, named by rank, as for any rank-local failure.
Result<Metadata> Save(const Value& state_dict, storage::Storage& storage,
                      const SaveOptions& options, const BeforeCommit& before_commit = nullptr,
                      const Status& local_failure = Status());

// dcpp::Load, LoadAll and ReadMetadata from `storage`.
Status Load(Value& state_dict, storage::Storage& storage, const LoadOptions& options);
Result<Value> LoadAll(storage::Storage& storage, const LoadAllOptions& options);
Result<Metadata> ReadMetadata(storage::Storage& storage);

// An AsyncCheckpointer whose saves all go to `storage` (borrowed; must
// outlive the checkpointer) whatever path they are given (the path names
// the save in messages only): for tests with memory or fault-injecting
// storage.
Result<std::unique_ptr<AsyncCheckpointer>> CreateAsyncCheckpointerOver(
    storage::Storage& storage, const AsyncCheckpointerOptions& options);

}  // namespace dcpp::engine

#endif  // DCPP_ENGINE_ENGINE_H_
