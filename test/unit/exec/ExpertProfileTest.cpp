// Routing profiles on disk (ktrun --save-expert-profile / --expert-profile).
#include "runtime/exec/ExpertProfile.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace kt::exec {
namespace {

std::string temporaryPath(const std::string &name) {
  return (std::filesystem::temp_directory_path() /
          (name + "-" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "-" +
           std::to_string(getpid()) + ".json"))
      .string();
}

void writeText(const std::string &path, const std::string &text) {
  std::ofstream(path, std::ios::binary) << text;
}

TEST(ExpertProfile, RoundTripsEveryLayersCounts) {
  const std::string path = temporaryPath("profile");
  std::vector<RoutingStats> layers(2);
  layers[0].path = "model.layers.1.mlp.gate";
  layers[0].selections = {0, 5, 1ull << 40, 7};
  layers[1].path = "model.layers.2.mlp.gate";
  layers[1].selections = {3, 0, 0, 1};
  ASSERT_TRUE(writeExpertProfile(path, layers).ok());
  StatusOr<std::vector<RoutingStats>> back = readExpertProfile(path);
  ASSERT_TRUE(back.ok()) << back.message();
  ASSERT_EQ(back->size(), 2u);
  for (size_t i = 0; i < layers.size(); ++i) {
    EXPECT_EQ((*back)[i].path, layers[i].path);
    EXPECT_EQ((*back)[i].selections, layers[i].selections);
  }
  std::filesystem::remove(path);
}

TEST(ExpertProfile, RefusesFilesThatAreNotProfiles) {
  const std::string path = temporaryPath("bad-profile");
  struct Case {
    const char *text, *expected;
  };
  for (const Case &c : {
           Case{"{not json", "not a JSON object"},
           Case{"{\"kind\": \"plan\"}", "its \"kind\" is not"},
           Case{"{\"kind\": \"ktc-expert-profile\", \"version\": 9, \"layers\": []}",
                "another version"},
           Case{"{\"kind\": \"ktc-expert-profile\", \"version\": 1}", "no \"layers\" array"},
           Case{"{\"kind\": \"ktc-expert-profile\", \"version\": 1, \"layers\": [{\"gate\": 3}]}",
                "needs \"gate\""},
           Case{"{\"kind\": \"ktc-expert-profile\", \"version\": 1, \"layers\": "
                "[{\"gate\": \"g\", \"selections\": [1, -2]}]}",
                "not a non-negative integer"},
       }) {
    SCOPED_TRACE(c.text);
    writeText(path, c.text);
    StatusOr<std::vector<RoutingStats>> read = readExpertProfile(path);
    ASSERT_FALSE(read.ok());
    EXPECT_NE(read.message().find(c.expected), std::string::npos) << read.message();
    EXPECT_NE(read.message().find(path), std::string::npos) << read.message();
  }
  std::filesystem::remove(path);
  StatusOr<std::vector<RoutingStats>> missing = readExpertProfile(path);
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.message().find("--save-expert-profile"), std::string::npos);
}

} // namespace
} // namespace kt::exec
