// Stand-ins for the S3 back end when dcpp is built without it
// (-DDCPP_WITH_S3=OFF; the build compiles either this file or the s3_*.cc
// files, never both).
#include "dcpp/storage/s3_storage.h"

namespace dcpp::storage {
namespace {
Status NoS3() {
  return UnimplementedError(
      "this dcpp was built without S3 support: install libcurl4-openssl-dev and libssl-dev and "
      "rebuild with -DDCPP_WITH_S3=ON");
}
}  // namespace

Result<S3Config> S3Config::FromEnvironment() { return NoS3(); }
Result<std::unique_ptr<Storage>> NewS3Storage(const std::string&, S3Config) { return NoS3(); }
Result<std::unique_ptr<Storage>> OpenS3Storage(const std::string& location) {
  return NoS3().WithContext("checkpoint location " + location);
}
S3Traffic S3TrafficOf(const Storage&) { return {}; }
Status CreateS3Bucket(const S3Config&, const std::string&) { return NoS3(); }
Result<std::vector<std::string>> ListS3MultipartUploads(const S3Config&, const std::string&) {
  return NoS3();
}

}  // namespace dcpp::storage
