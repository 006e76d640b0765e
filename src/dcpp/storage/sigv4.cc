#include "dcpp/storage/sigv4.h"

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>

#include <algorithm>
#include <cctype>
#include <ctime>

namespace dcpp::storage::sigv4 {
namespace {

std::string Hex(const uint8_t* p, size_t n) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = kHex[p[i] >> 4];
    out[2 * i + 1] = kHex[p[i] & 15];
  }
  return out;
}

std::string Hmac(std::string_view key, std::string_view data) {
  uint8_t out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(data.data()), data.size(), out, &len);
  return std::string(reinterpret_cast<const char*>(out), len);
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Trims the value and folds inner runs of spaces to one, as the canonical
// form asks.
std::string CanonicalValue(std::string_view v) {
  std::string out;
  bool space = false;
  for (char c : v) {
    if (c == ' ' || c == '\t') {
      space = !out.empty();
      continue;
    }
    if (space) out += ' ';
    space = false;
    out += c;
  }
  return out;
}

std::vector<std::pair<std::string, std::string>> SortedHeaders(const Request& r) {
  std::vector<std::pair<std::string, std::string>> h;
  for (const auto& [name, value] : r.headers) h.emplace_back(Lower(name), CanonicalValue(value));
  std::stable_sort(h.begin(), h.end(),
                   [](const auto& a, const auto& b) { return a.first < b.first; });
  return h;
}

}  // namespace

std::string Sha256Hex(std::span<const uint8_t> data) {
  uint8_t out[SHA256_DIGEST_LENGTH];
  SHA256(data.data(), data.size(), out);
  return Hex(out, sizeof(out));
}

std::string Sha256Hex(std::string_view data) {
  return Sha256Hex({reinterpret_cast<const uint8_t*>(data.data()), data.size()});
}

std::string UriEncode(std::string_view s, bool keep_slash) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~' ||
        (keep_slash && c == '/')) {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::string SignedHeaders(const Request& r) {
  std::string out;
  for (const auto& [name, value] : SortedHeaders(r)) {
    if (!out.empty()) out += ';';
    out += name;
  }
  return out;
}

std::string CanonicalRequest(const Request& r) {
  std::vector<std::pair<std::string, std::string>> q;
  for (const auto& [k, v] : r.query) q.emplace_back(UriEncode(k, false), UriEncode(v, false));
  std::sort(q.begin(), q.end());
  std::string query;
  for (const auto& [k, v] : q) {
    if (!query.empty()) query += '&';
    query += k + "=" + v;
  }
  std::string headers;
  for (const auto& [name, value] : SortedHeaders(r)) headers += name + ":" + value + "\n";
  return r.method + "\n" + r.path + "\n" + query + "\n" + headers + "\n" + SignedHeaders(r) +
         "\n" + r.payload_hash;
}

std::string StringToSign(const Request& r, std::string_view amz_date, std::string_view region,
                         std::string_view service) {
  const std::string scope = std::string(amz_date.substr(0, 8)) + "/" + std::string(region) + "/" +
                            std::string(service) + "/aws4_request";
  return "AWS4-HMAC-SHA256\n" + std::string(amz_date) + "\n" + scope + "\n" +
         Sha256Hex(CanonicalRequest(r));
}

std::string Signature(const Request& r, const Credentials& c, std::string_view amz_date,
                      std::string_view region, std::string_view service) {
  std::string key = Hmac("AWS4" + c.secret_key, amz_date.substr(0, 8));
  key = Hmac(key, region);
  key = Hmac(key, service);
  key = Hmac(key, "aws4_request");
  const std::string sig = Hmac(key, StringToSign(r, amz_date, region, service));
  return Hex(reinterpret_cast<const uint8_t*>(sig.data()), sig.size());
}

std::string AuthorizationHeader(const Request& r, const Credentials& c, std::string_view amz_date,
                                std::string_view region, std::string_view service) {
  return "AWS4-HMAC-SHA256 Credential=" + c.access_key + "/" + std::string(amz_date.substr(0, 8)) +
         "/" + std::string(region) + "/" + std::string(service) +
         "/aws4_request, SignedHeaders=" + SignedHeaders(r) +
         ", Signature=" + Signature(r, c, amz_date, region, service);
}

std::string AmzDateNow() {
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y%m%dT%H%M%SZ", &utc);
  return buf;
}

}  // namespace dcpp::storage::sigv4
