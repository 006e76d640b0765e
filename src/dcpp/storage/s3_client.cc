#include "dcpp/storage/s3_client.h"

#include <curl/curl.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include "dcpp/storage/sigv4.h"

namespace dcpp::storage::s3 {
namespace {

void GlobalInit() {
  // curl_global_init is not thread-safe: once per process, before any handle.
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

std::string Lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' ||
                        s.back() == '\n'))
    s.remove_suffix(1);
  return std::string(s);
}

std::string XmlDecode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '&') {
      out += s[i];
      continue;
    }
    const size_t semi = s.find(';', i);
    if (semi == std::string_view::npos) {
      out += s[i];
      continue;
    }
    const std::string_view ent = s.substr(i + 1, semi - i - 1);
    if (ent == "amp") out += '&';
    else if (ent == "lt") out += '<';
    else if (ent == "gt") out += '>';
    else if (ent == "quot") out += '"';
    else if (ent == "apos") out += '\'';
    else if (ent.size() > 1 && ent[0] == '#') {
      const bool hex = ent[1] == 'x' || ent[1] == 'X';
      const unsigned long cp =
          std::strtoul(std::string(ent.substr(hex ? 2 : 1)).c_str(), nullptr, hex ? 16 : 10);
      if (cp < 0x80) {
        out += static_cast<char>(cp);
      } else if (cp < 0x800) {
        out += static_cast<char>(0xC0 | (cp >> 6));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else if (cp < 0x10000) {
        out += static_cast<char>(0xE0 | (cp >> 12));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      } else {
        out += static_cast<char>(0xF0 | (cp >> 18));
        out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
        out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
        out += static_cast<char>(0x80 | (cp & 0x3F));
      }
    } else {
      out += s.substr(i, semi - i + 1);
    }
    i = semi;
  }
  return out;
}

// State of one transfer, reached from curl's callbacks.
struct Transfer {
  CURL* handle = nullptr;
  const HttpRequest* request = nullptr;
  HttpResponse* response = nullptr;
  size_t body_pos = 0;   // upload position
  bool overflow = false;  // the body did not fit the sink
  // Stall detection: when a byte last moved either way.
  std::chrono::steady_clock::time_point last_move = std::chrono::steady_clock::now();
  curl_off_t last_up = 0, last_down = 0;
  std::chrono::milliseconds stall_limit{30000};
  bool stalled = false;
};

// Ends a transfer that moved no byte for the stall limit. (curl's own
// low-speed limit averages over seconds, so a burst into the socket buffers
// hides a server that stopped answering.)
int OnProgress(void* user, curl_off_t, curl_off_t down, curl_off_t, curl_off_t up) {
  auto* t = static_cast<Transfer*>(user);
  const auto now = std::chrono::steady_clock::now();
  if (up != t->last_up || down != t->last_down) {
    t->last_up = up;
    t->last_down = down;
    t->last_move = now;
    return 0;
  }
  if (now - t->last_move > t->stall_limit) {
    t->stalled = true;
    return 1;  // aborts the transfer
  }
  return 0;
}

size_t OnRead(char* buffer, size_t size, size_t nitems, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::span<const uint8_t> body = t->request->body;
  const size_t n = std::min(size * nitems, body.size() - t->body_pos);
  if (n) std::memcpy(buffer, body.data() + t->body_pos, n);
  t->body_pos += n;
  return n;
}

int OnSeek(void* user, curl_off_t offset, int origin) {
  auto* t = static_cast<Transfer*>(user);
  if (origin != SEEK_SET || offset < 0 || static_cast<size_t>(offset) > t->request->body.size())
    return CURL_SEEKFUNC_CANTSEEK;
  t->body_pos = static_cast<size_t>(offset);
  return CURL_SEEKFUNC_OK;
}

size_t OnWrite(char* data, size_t size, size_t nmemb, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * nmemb;
  long code = 0;
  curl_easy_getinfo(t->handle, CURLINFO_RESPONSE_CODE, &code);
  if (t->request->use_sink && code >= 200 && code < 300) {
    const std::span<uint8_t> sink = t->request->sink;
    if (t->response->sink_bytes + n > sink.size()) {
      t->overflow = true;
      return 0;  // aborts the transfer
    }
    std::memcpy(sink.data() + t->response->sink_bytes, data, n);
    t->response->sink_bytes += n;
    return n;
  }
  // Error bodies and listings are small; cap what a broken server can send.
  if (t->response->body.size() + n > (size_t{64} << 20)) return 0;
  t->response->body.append(data, n);
  return n;
}

size_t OnHeader(char* data, size_t size, size_t nitems, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const std::string_view line(data, size * nitems);
  if (line.starts_with("HTTP/")) {
    t->response->headers.clear();  // a new response (after 100 Continue)
  } else if (const size_t colon = line.find(':'); colon != std::string_view::npos) {
    t->response->headers[Lower(Trim(line.substr(0, colon)))] = Trim(line.substr(colon + 1));
  }
  return size * nitems;
}

bool RetryableCurl(CURLcode c) {
  switch (c) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_RECV_ERROR:
    case CURLE_SEND_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_COULDNT_RESOLVE_HOST:
      return true;
    default:
      return false;
  }
}

bool RetryableHttp(const HttpResponse& r) {
  if (r.status >= 500 || r.status == 429) return true;
  // S3's "RequestTimeout" (the client was too slow) and throttling codes
  // come as 400 and 503.
  if (r.status == 400) {
    const auto codes = XmlValues(r.body, "Code");
    return !codes.empty() && (codes[0] == "RequestTimeout" || codes[0] == "SlowDown" ||
                              codes[0] == "Throttling");
  }
  return false;
}

}  // namespace

std::vector<std::string> XmlValues(std::string_view xml, std::string_view tag) {
  std::vector<std::string> out;
  const std::string open = "<" + std::string(tag) + ">", close = "</" + std::string(tag) + ">";
  size_t at = 0;
  while (true) {
    const size_t start = xml.find(open, at);
    if (start == std::string_view::npos) break;
    const size_t end = xml.find(close, start + open.size());
    if (end == std::string_view::npos) break;
    out.push_back(XmlDecode(xml.substr(start + open.size(), end - start - open.size())));
    at = end + close.size();
  }
  return out;
}

Client::Client(S3Config config) : config_(std::move(config)) {
  GlobalInit();
  std::string_view ep = config_.endpoint;
  const size_t sep = ep.find("://");
  scheme_ = std::string(ep.substr(0, sep));
  host_ = std::string(ep.substr(sep + 3));
  reuse_ = config_.reuse_connections == 1 || (config_.reuse_connections < 0 && scheme_ == "https");
}

Client::~Client() {
  for (void* h : idle_) curl_easy_cleanup(static_cast<CURL*>(h));
}

void* Client::Acquire() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!idle_.empty()) {
      void* h = idle_.back();
      idle_.pop_back();
      return h;
    }
  }
  return curl_easy_init();
}

void Client::Release(void* handle) {
  std::lock_guard<std::mutex> lock(mu_);
  idle_.push_back(handle);
}

Result<HttpResponse> Client::Send(const HttpRequest& req, std::string_view op,
                                  std::string_view what) {
  // The URL and the signed path use the same encoding, so they always agree.
  std::string host = host_, path;
  if (config_.path_style) {
    path = "/" + sigv4::UriEncode(req.bucket, false);
    if (!req.key.empty()) path += "/" + sigv4::UriEncode(req.key, true);
  } else {
    host = req.bucket + "." + host_;
    path = "/" + sigv4::UriEncode(req.key, true);
  }
  std::vector<std::pair<std::string, std::string>> q;
  for (const auto& [k, v] : req.query)
    q.emplace_back(sigv4::UriEncode(k, false), sigv4::UriEncode(v, false));
  std::sort(q.begin(), q.end());
  std::string url = scheme_ + "://" + host + path;
  for (size_t i = 0; i < q.size(); ++i)
    url += (i ? "&" : "?") + q[i].first + "=" + q[i].second;

  const sigv4::Credentials creds{config_.access_key, config_.secret_key, config_.session_token};
  std::mt19937_64 rng(std::random_device{}());
  std::string last_failure;
  bool timed_out = false;
  const int attempts = std::max(config_.max_attempts, 1);
  for (int attempt = 1;; ++attempt) {
    sigv4::Request sr;
    sr.method = req.method;
    sr.path = path;
    sr.query = req.query;
    sr.payload_hash = std::string(sigv4::kUnsignedPayload);
    const std::string date = sigv4::AmzDateNow();
    sr.headers = {{"host", host},
                  {"x-amz-date", date},
                  {"x-amz-content-sha256", std::string(sigv4::kUnsignedPayload)}};
    if (!creds.session_token.empty())
      sr.headers.emplace_back("x-amz-security-token", creds.session_token);
    for (const auto& [k, v] : req.headers)
      if (Lower(k).starts_with("x-amz-")) sr.headers.emplace_back(k, v);
    const std::string auth =
        sigv4::AuthorizationHeader(sr, creds, date, config_.region, "s3");

    curl_slist* headers = nullptr;
    for (const auto& [k, v] : sr.headers) headers = curl_slist_append(headers, (k + ": " + v).c_str());
    for (const auto& [k, v] : req.headers)
      if (!Lower(k).starts_with("x-amz-")) headers = curl_slist_append(headers, (k + ": " + v).c_str());
    headers = curl_slist_append(headers, ("Authorization: " + auth).c_str());
    headers = curl_slist_append(headers, "Expect:");  // no 100-continue round trip
    if (req.method == "POST") headers = curl_slist_append(headers, "Content-Type: application/xml");

    CURL* h = static_cast<CURL*>(Acquire());
    if (!h) {
      curl_slist_free_all(headers);
      return ResourceExhaustedError(std::string(op) + " " + std::string(what) +
                                    ": cannot create an HTTP handle");
    }
    curl_easy_reset(h);
    HttpResponse resp;
    Transfer t{h, &req, &resp};
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    if (!reuse_) curl_easy_setopt(h, CURLOPT_FORBID_REUSE, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, static_cast<long>(config_.connect_timeout_ms));
    // A stall (no byte for the timeout) ends the request; a slow but moving
    // transfer of a large part does not.
    t.stall_limit = std::chrono::milliseconds(config_.stall_timeout_ms);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, OnProgress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &t);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, OnWrite);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &t);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, OnHeader);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &t);
    if (req.method == "HEAD") {
      curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else if (req.method == "PUT") {
      curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
      curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    } else if (req.method == "POST") {
      curl_easy_setopt(h, CURLOPT_POST, 1L);
      curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size()));
    } else if (req.method != "GET") {
      curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, req.method.c_str());
    }
    if (req.method == "PUT" || req.method == "POST") {
      curl_easy_setopt(h, CURLOPT_READFUNCTION, OnRead);
      curl_easy_setopt(h, CURLOPT_READDATA, &t);
      curl_easy_setopt(h, CURLOPT_SEEKFUNCTION, OnSeek);
      curl_easy_setopt(h, CURLOPT_SEEKDATA, &t);
    }
    const CURLcode rc = curl_easy_perform(h);
    ++requests_;
    received_ += resp.sink_bytes + resp.body.size();
    sent_ += t.body_pos;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp.status);
    curl_slist_free_all(headers);
    if (rc == CURLE_OK) {
      Release(h);
    } else {
      curl_easy_cleanup(h);  // a broken connection is not reused
    }

    bool retry = false;
    if (t.overflow) {
      return DataLossError(std::string(op) + " " + std::string(what) + ": the server sent more than the " +
                           std::to_string(req.sink.size()) + " bytes asked for");
    }
    if (rc != CURLE_OK) {
      last_failure = t.stalled ? "no byte moved" : curl_easy_strerror(rc);
      timed_out = rc == CURLE_OPERATION_TIMEDOUT || t.stalled;
      retry = RetryableCurl(rc) || t.stalled;
      if (!retry)
        return InternalError(std::string(op) + " " + std::string(what) + " at " +
                             config_.endpoint + ": " + last_failure);
    } else if (RetryableHttp(resp)) {
      const auto codes = XmlValues(resp.body, "Code");
      last_failure = "HTTP " + std::to_string(resp.status) + (codes.empty() ? "" : " " + codes[0]);
      timed_out = false;
      retry = true;
    } else {
      return resp;
    }
    if (attempt >= attempts) break;
    // Full jitter: a random pause up to the exponential bound, so clients
    // throttled together do not come back together.
    const int64_t cap = std::min<int64_t>(int64_t{config_.backoff_ms} << std::min(attempt - 1, 20),
                                          5000);
    std::uniform_int_distribution<int64_t> pause(cap / 2, std::max<int64_t>(cap, 1));
    std::this_thread::sleep_for(std::chrono::milliseconds(pause(rng)));
  }
  const std::string msg = std::string(op) + " " + std::string(what) + " at " + config_.endpoint +
                          " failed after " + std::to_string(attempts) + " attempts: " +
                          last_failure;
  return timed_out ? DeadlineExceededError(msg + " (no progress for " +
                                           std::to_string(config_.stall_timeout_ms) +
                                           " ms; DCPP_S3_TIMEOUT_MS)")
                   : InternalError(msg);
}

Status Client::Error(const HttpResponse& r, std::string_view op, std::string_view what) const {
  const auto codes = XmlValues(r.body, "Code");
  const auto messages = XmlValues(r.body, "Message");
  const std::string code = codes.empty() ? "" : codes[0];
  std::string msg = std::string(op) + " " + std::string(what) + ": HTTP " +
                    std::to_string(r.status) + (code.empty() ? "" : " " + code) +
                    (messages.empty() || messages[0].empty() ? "" : " (" + messages[0] + ")");
  switch (r.status) {
    case 403:
      return PermissionDeniedError(
          msg + ": access denied by " + config_.endpoint +
          " (check the credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE, and "
          "the bucket's permissions)");
    case 404:
      if (code == "NoSuchBucket")
        return NotFoundError(msg + ": the bucket does not exist at " + config_.endpoint);
      return NotFoundError(msg + ": no such object");
    case 416:
      return DataLossError(msg + ": the range lies beyond the object's end (truncated object?)");
    case 400:
    case 405:
    case 411:
    case 413:
      return InvalidArgumentError(msg);
    default:
      return InternalError(msg);
  }
}

}  // namespace dcpp::storage::s3
