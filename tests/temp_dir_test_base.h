// A test fixture that gives each test a fresh directory, removed afterwards.
#ifndef DCPP_TESTS_TEMP_DIR_TEST_BASE_H_
#define DCPP_TESTS_TEMP_DIR_TEST_BASE_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <filesystem>
#include <string>

namespace dcpp {

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/dcpp_test_XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    root_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(root_); }
  // A path named `name` inside the test's directory.
  std::string Dir(const std::string& name) const { return root_ + "/" + name; }

  std::string root_;
};

}  // namespace dcpp

#endif  // DCPP_TESTS_TEMP_DIR_TEST_BASE_H_
