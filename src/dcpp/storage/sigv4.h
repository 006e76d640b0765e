// AWS Signature Version 4 for S3 requests: the canonical request, the string
// to sign and the Authorization header, as AWS documents them ("Signature
// Version 4 signing process"; the S3 variant: every path segment URI-encoded
// once, payload hash sent in x-amz-content-sha256). Pure functions over
// strings, no I/O; HMAC-SHA256 and SHA-256 come from OpenSSL's libcrypto,
// which no header here exposes. Thread-safe.
#ifndef DCPP_STORAGE_SIGV4_H_
#define DCPP_STORAGE_SIGV4_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dcpp::storage::sigv4 {

// The SHA-256 of `data`, lower-case hex (64 characters).
std::string Sha256Hex(std::span<const uint8_t> data);
std::string Sha256Hex(std::string_view data);
// The hash of an empty payload, and the marker for a payload left unsigned
// (its bytes then go unhashed: cheap for multi-MiB parts; TLS or the
// transport protects them).
inline constexpr std::string_view kEmptyPayloadHash =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
inline constexpr std::string_view kUnsignedPayload = "UNSIGNED-PAYLOAD";

// Percent-encodes every byte except the unreserved A-Z a-z 0-9 - _ . ~
// (upper-case hex), and '/' too unless `keep_slash` (for paths).
std::string UriEncode(std::string_view s, bool keep_slash);

struct Credentials {
  std::string access_key;
  std::string secret_key;
  std::string session_token;  // empty: none (sent as x-amz-security-token)
};

// One request to sign. `path` is the request path as sent (already
// URI-encoded, starting with '/'); `query` the decoded parameters (they are
// encoded and sorted here; a parameter without value has an empty one);
// `headers` every header to sign (names in any case; values are trimmed and
// inner runs of spaces folded here). Host and x-amz-date must be among them.
struct Request {
  std::string method;
  std::string path;
  std::vector<std::pair<std::string, std::string>> query;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string payload_hash;  // Sha256Hex of the body, or kUnsignedPayload
};

// The canonical request (step 1 of the signing process).
std::string CanonicalRequest(const Request& request);
// "host;x-amz-date;...": the signed header names, lower-case and sorted.
std::string SignedHeaders(const Request& request);
// The string to sign (step 2): `amz_date` is "YYYYMMDDTHHMMSSZ".
std::string StringToSign(const Request& request, std::string_view amz_date,
                         std::string_view region, std::string_view service);
// The signature (step 3), lower-case hex.
std::string Signature(const Request& request, const Credentials& credentials,
                      std::string_view amz_date, std::string_view region,
                      std::string_view service);
// The Authorization header's value (step 4).
std::string AuthorizationHeader(const Request& request, const Credentials& credentials,
                                std::string_view amz_date, std::string_view region,
                                std::string_view service);

// The current UTC time as "YYYYMMDDTHHMMSSZ".
std::string AmzDateNow();

}  // namespace dcpp::storage::sigv4

#endif  // DCPP_STORAGE_SIGV4_H_
