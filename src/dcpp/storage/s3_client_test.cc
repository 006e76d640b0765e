// The S3 client's retries, stall detection and error mapping, against a
// scripted HTTP server on 127.0.0.1 (no S3 server needed).
#include "dcpp/storage/s3_client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace dcpp::storage::s3 {
namespace {

// Answers one connection per scripted response, in order ("" = accept and
// never answer, until the test ends). Records each request's head.
class ScriptedServer {
 public:
  explicit ScriptedServer(std::vector<std::string> responses) : responses_(std::move(responses)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
    socklen_t len = sizeof(addr);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len);
    port_ = ntohs(addr.sin_port);
    ::listen(fd_, 16);
    thread_ = std::thread([this] { Serve(); });
  }
  ~ScriptedServer() {
    stop_ = true;
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
    for (int c : held_) ::close(c);
  }
  std::string endpoint() const { return "http://127.0.0.1:" + std::to_string(port_); }
  int requests() const { return requests_; }
  std::string head(size_t i) const {
    std::lock_guard<std::mutex> lock(mu_);
    return i < heads_.size() ? heads_[i] : "";
  }

 private:
  void Serve() {
    for (const std::string& response : responses_) {
      const int c = ::accept(fd_, nullptr, nullptr);
      if (c < 0 || stop_) return;
      std::string head;
      char buf[4096];
      while (head.find("\r\n\r\n") == std::string::npos) {
        const ssize_t n = ::recv(c, buf, sizeof(buf), 0);
        if (n <= 0) break;
        head.append(buf, static_cast<size_t>(n));
      }
      {
        std::lock_guard<std::mutex> lock(mu_);
        heads_.push_back(head);
      }
      ++requests_;
      if (response.empty()) {
        held_.push_back(c);  // never answered
        continue;
      }
      (void)!::send(c, response.data(), response.size(), MSG_NOSIGNAL);
      ::close(c);
    }
  }

  std::vector<std::string> responses_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> requests_{0};
  mutable std::mutex mu_;
  std::vector<std::string> heads_;
  std::vector<int> held_;
};

std::string Response(int code, const std::string& body) {
  return "HTTP/1.1 " + std::to_string(code) + " X\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\nConnection: close\r\nETag: \"abc\"\r\n\r\n" + body;
}

std::string ErrorXml(const std::string& code, const std::string& message) {
  return "<?xml version=\"1.0\"?><Error><Code>" + code + "</Code><Message>" + message +
         "</Message></Error>";
}

S3Config Config(const ScriptedServer& server) {
  S3Config c;
  c.endpoint = server.endpoint();
  c.access_key = "id";
  c.secret_key = "secret";
  c.backoff_ms = 1;
  c.max_attempts = 4;
  c.stall_timeout_ms = 300;
  return c;
}

TEST(S3ClientTest, RetriesServerErrorsAndSlowDown) {
  ScriptedServer server({Response(503, ErrorXml("SlowDown", "reduce your rate")),
                         Response(500, ErrorXml("InternalError", "oops")),
                         Response(200, "hello")});
  Client client(Config(server));
  HttpRequest req{"GET", "bucket", "dir/key"};
  auto r = client.Send(req, "read", "s3://bucket/dir/key");
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->body, "hello");
  EXPECT_EQ(r->headers["etag"], "\"abc\"");
  EXPECT_EQ(server.requests(), 3);
  EXPECT_EQ(client.traffic().requests, 3u);
  // Path-style, signed.
  EXPECT_EQ(server.head(2).rfind("GET /bucket/dir/key HTTP/1.1\r\n", 0), 0u) << server.head(2);
  EXPECT_NE(server.head(2).find("Authorization: AWS4-HMAC-SHA256 Credential=id/"),
            std::string::npos);
}

TEST(S3ClientTest, GivesUpAfterMaxAttemptsNamingTheFailure) {
  ScriptedServer server(std::vector<std::string>(4, Response(503, ErrorXml("SlowDown", "x"))));
  Client client(Config(server));
  HttpRequest req{"PUT", "bucket", "k"};
  auto r = client.Send(req, "write", "s3://bucket/k");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
  EXPECT_NE(r.status().message().find("s3://bucket/k"), std::string::npos);
  EXPECT_NE(r.status().message().find("after 4 attempts"), std::string::npos);
  EXPECT_NE(r.status().message().find("503 SlowDown"), std::string::npos) << r.status().ToString();
  EXPECT_EQ(server.requests(), 4);
}

TEST(S3ClientTest, AStalledServerIsADeadline) {
  ScriptedServer server({"", ""});
  S3Config c = Config(server);
  c.max_attempts = 2;
  Client client(c);
  HttpRequest req{"GET", "bucket", "k"};
  auto r = client.Send(req, "read", "s3://bucket/k");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDeadlineExceeded) << r.status().ToString();
  EXPECT_EQ(server.requests(), 2);
}

TEST(S3ClientTest, FinalAnswersAreNotRetriedAndMapToCodes) {
  ScriptedServer server({Response(403, ErrorXml("SignatureDoesNotMatch", "bad sig")),
                         Response(404, ErrorXml("NoSuchBucket", "no bucket")),
                         Response(404, ""), Response(416, ErrorXml("InvalidRange", "r")),
                         Response(400, ErrorXml("InvalidArgument", "bad"))});
  Client client(Config(server));
  HttpRequest req{"GET", "bucket", "k"};
  const std::vector<StatusCode> expected = {StatusCode::kPermissionDenied, StatusCode::kNotFound,
                                            StatusCode::kNotFound, StatusCode::kDataLoss,
                                            StatusCode::kInvalidArgument};
  for (size_t i = 0; i < expected.size(); ++i) {
    auto r = client.Send(req, "read", "s3://bucket/k");
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    const Status s = client.Error(*r, "read", "s3://bucket/k");
    EXPECT_EQ(s.code(), expected[i]) << s.ToString();
    EXPECT_NE(s.message().find("s3://bucket/k"), std::string::npos) << s.ToString();
    if (i == 0) EXPECT_NE(s.message().find("SignatureDoesNotMatch"), std::string::npos);
    if (i == 1) EXPECT_NE(s.message().find("bucket does not exist"), std::string::npos);
  }
  EXPECT_EQ(server.requests(), 5);  // one each
}

TEST(S3ClientTest, XmlValuesDecodeEntities) {
  EXPECT_EQ(XmlValues("<a><Key>x&amp;y&lt;&#47;&#x41;</Key><Key></Key></a>", "Key"),
            (std::vector<std::string>{"x&y</A", ""}));
  EXPECT_TRUE(XmlValues("<Key>unclosed", "Key").empty());
}

}  // namespace
}  // namespace dcpp::storage::s3
