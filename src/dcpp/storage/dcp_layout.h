// A DCP checkpoint's metadata in a Storage: reading .metadata and the commit
// (write a temporary name, sync, rename over .metadata, sync the
// directory). Names are in io/dcp_layout.h.
#ifndef DCPP_STORAGE_DCP_LAYOUT_H_
#define DCPP_STORAGE_DCP_LAYOUT_H_

#include <string>
#include <string_view>

#include "dcpp/io/dcp_layout.h"
#include "dcpp/metadata.h"
#include "dcpp/status.h"
#include "dcpp/storage/storage.h"

namespace dcpp::storage {

// The bytes of .metadata. NotFound names the missing location or says it
// holds no committed checkpoint; InvalidArgument if the location is not a
// directory; DataLoss for a .metadata that is not a regular file;
// ResourceExhausted above 4 GiB (a cap against hostile files).
Result<std::string> ReadCheckpointMetadataBytes(Storage& storage);
// Decodes .metadata bytes; errors are prefixed with Describe(".metadata").
Result<Metadata> DecodeCheckpointMetadata(const Storage& storage, std::string_view bytes);
// Both of the above.
Result<Metadata> ReadCheckpointMetadata(Storage& storage);

// Whether .metadata exists (a committed checkpoint is there).
Result<bool> HasCommittedCheckpoint(Storage& storage);

// The commit point: encodes `md`, writes it as TempMetadataName(tag)
// (synced when `sync`), renames it over .metadata, then syncs the directory
// when `sync`. Readers see the old .metadata or the new one. A failure
// before the rename removes the temporary (best effort) and leaves an
// existing .metadata untouched; a failure after it (the directory sync)
// leaves the new .metadata published but perhaps not durable; `*published`
// (if given) says whether the rename happened, so the caller knows whether
// the data files are now referenced. Not safe against a concurrent commit
// with the same tag. On a storage that PublishesOnClose() (object stores)
// .metadata is written directly, one PUT: the same guarantees, no
// temporary.
Status CommitMetadata(Storage& storage, const Metadata& md, bool sync, std::string_view tag,
                      bool* published = nullptr);

// The same commit for metadata already encoded (format::EncodeMetadata), for
// a caller that also needs the bytes (the sidecar checksum file covers them).
Status CommitEncodedMetadata(Storage& storage, std::string_view encoded, bool sync,
                             std::string_view tag, bool* published = nullptr);

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_DCP_LAYOUT_H_
