// SigV4 against AWS's published examples: the signature test suite's
// get-vanilla cases and the S3 API reference's "GET Object" example
// (sig-v4-header-based-auth), whose canonical request and string to sign
// are published along with the signature.
#include "dcpp/storage/sigv4.h"

#include <gtest/gtest.h>

namespace dcpp::storage::sigv4 {
namespace {

TEST(SigV4Test, Sha256OfEmptyAndKnownInput) {
  EXPECT_EQ(Sha256Hex(std::string_view()), kEmptyPayloadHash);
  EXPECT_EQ(Sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(SigV4Test, UriEncode) {
  EXPECT_EQ(UriEncode("a b/c~d_e.f-g", true), "a%20b/c~d_e.f-g");
  EXPECT_EQ(UriEncode("a b/c", false), "a%20b%2Fc");
  EXPECT_EQ(UriEncode("$=&+\xff", false), "%24%3D%26%2B%FF");
}

// The test suite's credentials and time.
const Credentials kSuite{"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
const std::string kSuiteDate = "20150830T123600Z";

TEST(SigV4Test, SuiteGetVanilla) {
  Request r{"GET", "/", {}, {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", kSuiteDate}},
            std::string(kEmptyPayloadHash)};
  EXPECT_EQ(CanonicalRequest(r),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\n"
            "host;x-amz-date\n" +
                std::string(kEmptyPayloadHash));
  EXPECT_EQ(StringToSign(r, kSuiteDate, "us-east-1", "service"),
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
  EXPECT_EQ(AuthorizationHeader(r, kSuite, kSuiteDate, "us-east-1", "service"),
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
            "SignedHeaders=host;x-amz-date, "
            "Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31");
}

TEST(SigV4Test, SuiteGetVanillaQueryOrderKeyCase) {
  // Parameters are sorted by their encoded names.
  Request r{"GET",
            "/",
            {{"Param2", "value2"}, {"Param1", "value1"}},
            {{"Host", "example.amazonaws.com"}, {"X-Amz-Date", kSuiteDate}},
            std::string(kEmptyPayloadHash)};
  EXPECT_EQ(Signature(r, kSuite, kSuiteDate, "us-east-1", "service"),
            "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
}

TEST(SigV4Test, S3GetObjectExample) {
  const Credentials c{"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
  Request r{"GET",
            "/test.txt",
            {},
            {{"Host", "examplebucket.s3.amazonaws.com"},
             {"Range", "bytes=0-9"},
             {"x-amz-content-sha256", std::string(kEmptyPayloadHash)},
             {"x-amz-date", "20130524T000000Z"}},
            std::string(kEmptyPayloadHash)};
  EXPECT_EQ(CanonicalRequest(r),
            "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\nrange:bytes=0-9\n"
            "x-amz-content-sha256:" +
                std::string(kEmptyPayloadHash) +
                "\nx-amz-date:20130524T000000Z\n\nhost;range;x-amz-content-sha256;x-amz-date\n" +
                std::string(kEmptyPayloadHash));
  EXPECT_EQ(StringToSign(r, "20130524T000000Z", "us-east-1", "s3"),
            "AWS4-HMAC-SHA256\n20130524T000000Z\n20130524/us-east-1/s3/aws4_request\n"
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(Signature(r, c, "20130524T000000Z", "us-east-1", "s3"),
            "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(SigV4Test, HeaderValuesAreTrimmedAndFolded) {
  Request a{"GET", "/", {}, {{"Host", "h"}, {"X-Amz-Date", kSuiteDate}, {"My-Header", "  a   b  "}},
            "x"};
  Request b{"GET", "/", {}, {{"my-header", "a b"}, {"host", "h"}, {"x-amz-date", kSuiteDate}},
            "x"};
  EXPECT_EQ(CanonicalRequest(a), CanonicalRequest(b));
  b.headers[0].second = "a c";
  EXPECT_NE(Signature(a, kSuite, kSuiteDate, "r", "s"), Signature(b, kSuite, kSuiteDate, "r", "s"));
}

}  // namespace
}  // namespace dcpp::storage::sigv4
