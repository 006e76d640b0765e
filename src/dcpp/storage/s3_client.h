// The HTTP side of the S3 back end (s3_storage.h): signed requests over a
// pool of libcurl handles (kept connections), with retries, and the mapping
// of S3's answers to dcpp's Status codes. Internal to the storage layer;
// libcurl's types stay in the .cc file.
#ifndef DCPP_STORAGE_S3_CLIENT_H_
#define DCPP_STORAGE_S3_CLIENT_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "dcpp/status.h"
#include "dcpp/storage/s3_storage.h"

namespace dcpp::storage::s3 {

struct HttpRequest {
  HttpRequest() = default;
  HttpRequest(std::string m, std::string b, std::string k)
      : method(std::move(m)), bucket(std::move(b)), key(std::move(k)) {}

  std::string method;  // GET, PUT, POST, HEAD, DELETE
  std::string bucket;
  std::string key;     // empty: a bucket-level request
  std::vector<std::pair<std::string, std::string>> query;    // decoded
  std::vector<std::pair<std::string, std::string>> headers;  // x-amz-* ones are signed
  std::span<const uint8_t> body;  // PUT and POST
  // GET: if set, a 2xx body goes here (it must fit: more bytes fail the
  // request) rather than into HttpResponse::body.
  std::span<uint8_t> sink;
  bool use_sink = false;
};

struct HttpResponse {
  long status = 0;
  std::string body;                            // error bodies always land here
  std::map<std::string, std::string> headers;  // names lower-case
  uint64_t sink_bytes = 0;                     // bytes written to the sink
};

// Signs and sends requests. Thread-safe: each request takes a curl handle
// from the pool and returns it.
class Client {
 public:
  explicit Client(S3Config config);
  ~Client();
  Client(const Client&) = delete;
  Client& operator=(const Client&) = delete;

  const S3Config& config() const { return config_; }

  // Requests sent (every attempt) and body bytes received and sent so far.
  S3Traffic traffic() const { return {requests_.load(), received_.load(), sent_.load()}; }

  // Sends `request`, retrying what S3 says may be retried (5xx, 429,
  // RequestTimeout, a stalled or broken connection) with jittered backoff.
  // Any HTTP answer that is final comes back as a response (check its
  // status); a failure to get one is an error naming `what` and `op`.
  Result<HttpResponse> Send(const HttpRequest& request, std::string_view op,
                            std::string_view what);

  // The Status for a non-2xx response to `op` on `what` ("s3://b/k").
  Status Error(const HttpResponse& response, std::string_view op, std::string_view what) const;

 private:
  void* Acquire();  // CURL*
  void Release(void* handle);

  const S3Config config_;
  std::string scheme_;  // "http" or "https"
  std::string host_;    // host[:port] of the endpoint
  bool reuse_ = true;   // keep connections (S3Config::reuse_connections)
  std::mutex mu_;
  std::vector<void*> idle_;
  std::atomic<uint64_t> requests_{0}, received_{0}, sent_{0};
};

// The text of every <tag>...</tag> in `xml`, entities decoded.
std::vector<std::string> XmlValues(std::string_view xml, std::string_view tag);

}  // namespace dcpp::storage::s3

#endif  // DCPP_STORAGE_S3_CLIENT_H_
