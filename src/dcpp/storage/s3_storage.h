// A Storage over an S3-compatible object store: "s3://bucket/prefix" holds
// the same DCP layout as a directory, one object per entry, keyed
// "prefix/<entry name>". HTTP through libcurl, requests signed with AWS
// Signature Version 4 (sigv4.h); neither leaks into this header.
//
// How the Storage contract maps onto objects (storage.h):
//  - Writes. An object appears only when its writer's Close() succeeds,
//    whole, replacing any object of that name atomically (PublishesOnClose()
//    is true). A file of at most part_size bytes is one PUT at Close(); a
//    larger one becomes a multipart upload whose parts (part_size bytes,
//    part k holding bytes [k*part_size, (k+1)*part_size)) go up in the
//    background as soon as they are filled, on up to `concurrency` requests
//    at once for the whole Storage; Close() sends the last part and
//    completes the upload. Positional writes may arrive in any order and
//    from several threads (untouched gaps read as zeros). A file destroyed
//    without Close(), or whose upload failed, is discarded: its multipart
//    upload is aborted, nothing is published. Sync() does nothing (an object
//    is durable once published).
//  - Memory: parts that are full and waiting or uploading are bounded by
//    2 * concurrency per Storage (a writer blocks while the bound is
//    reached); besides those, each file holds the parts it is still
//    filling (about one per writing thread). Defaults: 16 MiB parts,
//    16 requests: about 512 MiB plus the parts being filled. Reading, an
//    open file read sequentially in small pieces holds one read_part_size
//    block (8 MiB by default).
//  - Reads. OpenForRead is one HEAD (the size; a data file's size is kept
//    by the Storage, since saves never rewrite one); ReadAt is a ranged GET,
//    split into read_part_size pieces fetched in parallel (up to
//    `concurrency`) when larger, each written straight into the caller's
//    memory. Small reads that continue one another (a checksummed pass over
//    a record in cache-sized pieces, a stream decoder's blocks) are served
//    from a block of read_part_size bytes fetched ahead (4 parallel GETs),
//    so they do not each cost a round trip; reads that jump, as a resharded
//    load's boxes do, fetch only the requested bytes.
//  - Rename is a server-side copy and a delete (not atomic as a whole: the
//    destination appears atomically, then the source goes); the commit does
//    not use it (dcp_layout.h writes .metadata directly on such storage).
//    Objects above 5 GiB cannot be renamed (Unimplemented).
//  - Remove is a HEAD (NotFound when missing, as the contract says) and a
//    DELETE. List is ListObjectsV2 with delimiter '/': the objects directly
//    under the prefix and its sub-"folders"; NotFound when nothing is there.
//    CreateLocation checks that the bucket exists (it never creates one):
//    NotFound names the bucket.
//  - TryLock: a lock object created with a conditional PUT (If-None-Match:
//    "*"), holding the holder's line; destroying the lock deletes it. A lock
//    object whose line names a process of this host that is gone (or this
//    process, when it holds no lock on that object: a release whose DELETE
//    failed) is taken over with a PUT conditional on its ETag. A holder on
//    another host that died leaves the lock object behind: every later save
//    then fails with Aborted naming it until someone deletes it (the message
//    says which object). Needs a gateway that honours If-None-Match on PUT
//    (AWS S3 since 2024, Ceph RGW, MinIO).
//  - Errors name "s3://bucket/key". HTTP 403 is PermissionDenied, 404
//    NotFound (missing bucket or key), 416 or a short body DataLoss, other
//    4xx InvalidArgument; 5xx (503 SlowDown included), 429, timeouts and
//    connection failures are retried with jittered exponential backoff up to
//    max_attempts, then Internal (DeadlineExceeded for a timeout), saying
//    what happened and how often it was tried.
//
// Thread safety: as storage.h says. Lifetime: files and locks may outlive
// the Storage that gave them (they share its connection pool and upload
// threads).
#ifndef DCPP_STORAGE_S3_STORAGE_H_
#define DCPP_STORAGE_S3_STORAGE_H_

#include <cstdint>
#include <memory>
#include <string>

#include "dcpp/status.h"
#include "dcpp/storage/storage.h"

namespace dcpp::storage {

struct S3Config {
  // "http://127.0.0.1:7480" (scheme, host, optional port; no path). Empty:
  // AWS, "https://s3.<region>.amazonaws.com".
  std::string endpoint;
  std::string region = "us-east-1";
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // empty: none
  // Path-style URLs ("endpoint/bucket/key") rather than virtual-hosted
  // ("bucket.host/key"). S3Config::FromEnvironment picks path style for a
  // custom endpoint and virtual-hosted for AWS.
  bool path_style = true;
  // Multipart part size in bytes (5 MiB .. 5 GiB, as S3 requires); a file
  // may have at most 10000 parts.
  uint64_t part_size = uint64_t{16} << 20;
  // Requests in flight at once, per Storage for uploads and per ReadAt for
  // a large read.
  int concurrency = 16;
  // A ReadAt above this many bytes is split into parallel ranged GETs.
  uint64_t read_part_size = uint64_t{8} << 20;
  // Tries per request (the first one included) for retryable failures.
  int max_attempts = 5;
  // First backoff before a retry; doubles with each try, with full jitter,
  // capped at 5 s.
  int backoff_ms = 100;
  // A request that moves no byte for this long fails (and is retried);
  // checked about once a second, so a stall is noticed within about a
  // second of the limit.
  int stall_timeout_ms = 30000;
  int connect_timeout_ms = 10000;
  // Keep connections for the next request: 1 yes, 0 no, -1 (default) for
  // https endpoints only. A kept connection saves a TLS handshake; over
  // plain http a new one costs a round trip, while a kept one can stall:
  // Ceph's gateway writes a response's head and body separately with Nagle
  // on, so each later response waits for the client's delayed ACK (40 ms on
  // Linux; measured: a verify of 112 small items took 1.4 s with kept
  // connections, 0.15 s without). DCPP_S3_REUSE_CONNECTIONS=0/1 overrides.
  int reuse_connections = -1;

  // The configuration as AWS's tools take it from the environment:
  //  AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, or else the
  //  profile AWS_PROFILE (default "default") of AWS_SHARED_CREDENTIALS_FILE
  //  (default ~/.aws/credentials); AWS_REGION, AWS_DEFAULT_REGION, or the
  //  profile's region in AWS_CONFIG_FILE (default ~/.aws/config), else
  //  us-east-1; AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL (or the profile's
  //  endpoint_url); AWS_MAX_ATTEMPTS. dcpp's own: DCPP_S3_PART_SIZE and
  //  DCPP_S3_READ_PART_SIZE (bytes, or with a K/M/G suffix: binary units),
  //  DCPP_S3_CONCURRENCY, DCPP_S3_TIMEOUT_MS (the stall timeout),
  //  DCPP_S3_ADDRESSING ("path" or "virtual"), DCPP_S3_REUSE_CONNECTIONS
//  (0 or 1). InvalidArgument for a value
  //  that does not parse or is out of range, or when no credentials are
  //  found, naming the variable or file.
  static Result<S3Config> FromEnvironment();
};

// A Storage for `location`, "s3://bucket" or "s3://bucket/prefix" (trailing
// '/' ignored). InvalidArgument for a malformed location or config (bad
// endpoint, part size out of range ...). Makes no request.
Result<std::unique_ptr<Storage>> NewS3Storage(const std::string& location, S3Config config);

// NewS3Storage with S3Config::FromEnvironment(): what OpenStorage does for
// "s3://..." (in a build without S3: Unimplemented).
Result<std::unique_ptr<Storage>> OpenS3Storage(const std::string& location);

// What an S3 storage has moved so far: requests sent (retries included) and
// HTTP body bytes received and sent. Shows that a partial or resharded load
// fetches only the ranges it needs.
struct S3Traffic {
  uint64_t requests = 0;
  uint64_t bytes_received = 0;
  uint64_t bytes_sent = 0;
};
// The traffic of `storage` if it is an S3 storage, zeros otherwise.
S3Traffic S3TrafficOf(const Storage& storage);

// Creates `bucket` (for tests and benchmarks). OK if this owner already has
// it.
Status CreateS3Bucket(const S3Config& config, const std::string& bucket);

// The multipart uploads in progress under "s3://bucket/prefix/" (their
// keys), to check that failed writes left none behind.
Result<std::vector<std::string>> ListS3MultipartUploads(const S3Config& config,
                                                        const std::string& location);

}  // namespace dcpp::storage

#endif  // DCPP_STORAGE_S3_STORAGE_H_
