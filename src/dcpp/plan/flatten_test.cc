#include "dcpp/plan/flatten.h"

#include <gtest/gtest.h>

namespace dcpp::plan {
namespace {

Tensor T() { return *Tensor::Zeros(DType::kFloat32, {2}); }

std::vector<std::string> Fqns(const Value& sd, Traversal t = Traversal::kCurrent) {
  auto flat = Flatten(sd, t);
  EXPECT_TRUE(flat.ok()) << flat.status().ToString();
  std::vector<std::string> out;
  for (auto& e : *flat) out.push_back(e.fqn);
  return out;
}

// Expected FQNs below were produced by torch 2.13's flatten_state_dict on the
// same structures.
TEST(FlattenTest, FollowsDcpTraversal) {
  Value sd;
  sd["model"]["layer"]["weight"] = T();
  sd["optim"]["state"]["0"]["exp_avg"] = T();
  sd["optim"]["param_groups"] = Value::List({Value()});
  sd["optim"]["param_groups"].items()[0]["lr"] = 0.1;
  sd["optim"]["param_groups"].items()[0]["params"] = Value::List({0, 1});
  sd["lists"] = Value::List({T(), 3});
  sd["plain"] = Value::List({1, 2});
  sd["tup"] = Value::Tuple({T()});
  sd["empty"] = Value::EmptyDict();
  sd["step"] = 5;
  EXPECT_EQ(Fqns(sd), (std::vector<std::string>{
                          "model.layer.weight", "optim.state.0.exp_avg", "optim.param_groups.0.lr",
                          "optim.param_groups.0.params", "lists.0", "lists.1", "plain", "tup",
                          "step"}));
}

TEST(FlattenTest, V2_3KeepsPlainDictsWhole) {
  Value sd;
  sd["optim"]["param_groups"] = Value::List({Value()});
  sd["optim"]["param_groups"].items()[0]["lr"] = 0.1;
  sd["m"]["w"] = T();
  sd["empty"] = Value::EmptyDict();
  EXPECT_EQ(Fqns(sd, Traversal::kV2_3), (std::vector<std::string>{"optim", "m.w", "empty"}));
}

TEST(FlattenTest, IntKeysAndDuplicates) {
  Value sd = Value::EmptyDict();
  sd.dict().Set(Value(3), T());
  EXPECT_EQ(Fqns(sd), std::vector<std::string>{"3"});
  Value dup;
  dup["a.b"] = 1;
  dup["a"]["b"] = 2;
  auto r = Flatten(dup);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("duplicated flatten key a.b"), std::string::npos);
  EXPECT_FALSE(Flatten(Value(3)).ok());
}

TEST(FlattenTest, SetElementRebuildsNesting) {
  Value root;
  ASSERT_TRUE(SetElement(root, {std::string("a"), int64_t{2}, std::string("b")}, 7).ok());
  ASSERT_TRUE(root.is_dict());
  const Value& list = *root.Find("a");
  ASSERT_EQ(list.items().size(), 3u);
  EXPECT_TRUE(list.items()[0].is_none());
  EXPECT_EQ(list.items()[2].Find("b")->as_int(), 7);
  EXPECT_FALSE(SetElement(root, {std::string("a"), std::string("x")}, 1).ok());
}

TEST(FlattenTest, MutableEntriesPointIntoTree) {
  Value sd;
  sd["a"]["b"] = 1;
  auto flat = FlattenMutable(sd);
  ASSERT_TRUE(flat.ok());
  *(*flat)[0].value = Value("x");
  EXPECT_EQ(sd.Find("a")->Find("b")->as_string(), "x");
}

}  // namespace
}  // namespace dcpp::plan
