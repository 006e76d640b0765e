#include "dcpp/format/json.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace dcpp::format::json {
namespace {

Json MustParse(std::string_view text, const ParseOptions& options = {}) {
  Result<Json> r = Parse(text, options);
  EXPECT_TRUE(r.ok()) << "text: " << text << "\n" << r.status().ToString();
  return r.ok() ? *r : Json();
}

// Parse must fail with DataLoss and name byte `at`.
::testing::AssertionResult FailsAt(std::string_view text, size_t at) {
  Result<Json> r = Parse(text);
  if (r.ok()) return ::testing::AssertionFailure() << "parsed: " << Serialize(*r);
  if (r.status().code() != StatusCode::kDataLoss) {
    return ::testing::AssertionFailure() << r.status().ToString();
  }
  const std::string want = "at byte " + std::to_string(at);
  const std::string msg = r.status().message();
  if (msg.size() < want.size() || msg.compare(msg.size() - want.size(), want.size(), want) != 0) {
    return ::testing::AssertionFailure()
           << "message '" << msg << "' does not end in '" << want << "'";
  }
  return ::testing::AssertionSuccess();
}

// ---- Scalars ----

TEST(JsonParse, Literals) {
  EXPECT_TRUE(MustParse("null").is_null());
  EXPECT_EQ(*MustParse("true").GetBool(), true);
  EXPECT_EQ(*MustParse(" \t\r\nfalse \n").GetBool(), false);
  EXPECT_EQ(MustParse("null").type(), Type::kNull);
}

TEST(JsonParse, IntegersStayInt64) {
  EXPECT_EQ(*MustParse("0").GetInt(), 0);
  EXPECT_EQ(*MustParse("-0").GetInt(), 0);
  EXPECT_EQ(*MustParse("123").GetInt(), 123);
  EXPECT_EQ(*MustParse("-42").GetInt(), -42);
  EXPECT_EQ(*MustParse("9223372036854775807").GetInt(), std::numeric_limits<int64_t>::max());
  EXPECT_EQ(*MustParse("-9223372036854775808").GetInt(), std::numeric_limits<int64_t>::min());
  // One past int64: a double.
  const Json big = MustParse("9223372036854775808");
  ASSERT_TRUE(big.is_double());
  EXPECT_EQ(*big.GetDouble(), 9223372036854775808.0);
  EXPECT_TRUE(MustParse("-9223372036854775809").is_double());
}

TEST(JsonParse, FractionsAndExponentsAreDoubles) {
  EXPECT_EQ(*MustParse("1.5").GetDouble(), 1.5);
  EXPECT_EQ(*MustParse("1.0").GetDouble(), 1.0);  // stays a double
  EXPECT_EQ(MustParse("1.0").GetInt(), nullptr);
  EXPECT_EQ(*MustParse("1e3").GetDouble(), 1000.0);
  EXPECT_EQ(*MustParse("1E+3").GetDouble(), 1000.0);
  EXPECT_EQ(*MustParse("-2.5e-3").GetDouble(), -0.0025);
  EXPECT_EQ(*MustParse("0.1").GetDouble(), 0.1);
  EXPECT_EQ(*MustParse("1.7976931348623157e308").GetDouble(), std::numeric_limits<double>::max());
  EXPECT_EQ(*MustParse("5e-324").GetDouble(), std::numeric_limits<double>::denorm_min());
  // Too small for a double: rounds to zero, keeping the sign.
  EXPECT_EQ(*MustParse("1e-400").GetDouble(), 0.0);
  EXPECT_TRUE(std::signbit(*MustParse("-1e-400").GetDouble()));
  EXPECT_EQ(*MustParse("0.000000000000000000000000000001e-300").GetDouble(), 0.0);
  // Many digits, exact value in range.
  EXPECT_EQ(*MustParse("100000000000000000000000000000000000000000e-40").GetDouble(), 10.0);
  double d = 0;
  EXPECT_TRUE(MustParse("7").GetNumber(&d));
  EXPECT_EQ(d, 7.0);
  EXPECT_FALSE(MustParse("\"7\"").GetNumber(&d));
}

TEST(JsonParse, NumbersOutOfRangeFail) {
  EXPECT_TRUE(FailsAt("1e400", 0));
  EXPECT_TRUE(FailsAt("[1, -1e309]", 4));
  EXPECT_TRUE(FailsAt("1e99999999999999999999999", 0));
  EXPECT_TRUE(FailsAt("123456789e400", 0));
}

// ---- Strings ----

TEST(JsonParse, StringEscapes) {
  EXPECT_EQ(*MustParse(R"("a\"b\\c\/d\be\ff\ng\rh\ti")").GetString(), "a\"b\\c/d\be\ff\ng\rh\ti");
  EXPECT_EQ(*MustParse(R"("\u0041\u00e9\u20AC")").GetString(), "A\xC3\xA9\xE2\x82\xAC");
  EXPECT_EQ(*MustParse(R"("\ud83d\ude00")").GetString(), "\xF0\x9F\x98\x80");
  EXPECT_EQ(*MustParse(R"("\u0000")").GetString(), std::string(1, '\0'));
  EXPECT_EQ(*MustParse("\"caf\xC3\xA9 \xF0\x9F\x98\x80\"").GetString(),
            "caf\xC3\xA9 \xF0\x9F\x98\x80");
  EXPECT_EQ(*MustParse("\"\x7F\"").GetString(), "\x7F");  // DEL needs no escape
}

TEST(JsonParse, BadStringsFail) {
  EXPECT_TRUE(FailsAt("\"abc", 0));  // unterminated
  EXPECT_TRUE(FailsAt("\"abc\\", 0));
  EXPECT_TRUE(FailsAt("\"a\nb\"", 2));  // raw control character
  EXPECT_TRUE(FailsAt(std::string_view("\"a\0b\"", 5), 2));
  EXPECT_TRUE(FailsAt(R"("\x")", 1));  // invalid escapes
  EXPECT_TRUE(FailsAt(R"("\U0041")", 1));
  EXPECT_TRUE(FailsAt(R"("\u12G4")", 1));
  EXPECT_TRUE(FailsAt(R"("\u12")", 1));
  EXPECT_TRUE(FailsAt(R"("ab\ud800")", 3));  // lone high surrogate
  EXPECT_TRUE(FailsAt(R"("\ud800x")", 1));
  EXPECT_TRUE(FailsAt(R"("\ud800\u0041")", 1));  // high then not-low
  EXPECT_TRUE(FailsAt(R"("\ud800\ud800")", 1));
  EXPECT_TRUE(FailsAt(R"("\udc00")", 1));        // lone low surrogate
  EXPECT_TRUE(FailsAt(R"("\ude00\ud83d")", 1));  // reversed pair
  // Invalid UTF-8: overlong, encoded surrogate, past U+10FFFF, stray
  // continuation, truncated sequence, invalid lead bytes.
  for (const char* bad : {"\"\xC0\x80\"", "\"\xC1\xBF\"", "\"\xE0\x80\x80\"", "\"\xED\xA0\x80\"",
                          "\"\xF4\x90\x80\x80\"", "\"\xF5\x80\x80\x80\"", "\"\x80\"",
                          "\"\xE2\x82\"", "\"\xFF\"", "\"\xF0\x9F\x98\""}) {
    EXPECT_TRUE(FailsAt(bad, 1)) << Serialize(Json(std::string(bad)));
  }
}

// ---- Structure ----

TEST(JsonParse, Containers) {
  const Json v = MustParse(R"( { "b" : [1, 2.5, "x", null, true, [], {}], "a": {"c": -1} } )");
  ASSERT_TRUE(v.is_object());
  const Object& o = *v.GetObject();
  ASSERT_EQ(o.size(), 2u);
  EXPECT_EQ(o.members()[0].first, "b");  // insertion order kept
  EXPECT_EQ(o.members()[1].first, "a");
  const Array& b = *v.Find("b")->GetArray();
  ASSERT_EQ(b.size(), 7u);
  EXPECT_EQ(*b[0].GetInt(), 1);
  EXPECT_EQ(*b[1].GetDouble(), 2.5);
  EXPECT_EQ(*b[2].GetString(), "x");
  EXPECT_TRUE(b[3].is_null());
  EXPECT_TRUE(b[5].GetArray()->empty());
  EXPECT_TRUE(b[6].GetObject()->empty());
  EXPECT_EQ(*v.Find("a")->Find("c")->GetInt(), -1);
  EXPECT_EQ(v.Find("zz"), nullptr);
  EXPECT_EQ(b[0].Find("a"), nullptr);  // not an object
  EXPECT_EQ(b[0].GetString(), nullptr);
}

TEST(JsonParse, SafetensorsStyleHeader) {
  const Json v = MustParse(R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],)"
                           R"("data_offsets":[0,24]}})");
  const Json* w = v.Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(*w->Find("dtype")->GetString(), "F32");
  const Array& offsets = *w->Find("data_offsets")->GetArray();
  EXPECT_EQ(*offsets[1].GetInt(), 24);
}

TEST(JsonParse, MalformedTextFailsWithOffsets) {
  struct Case {
    const char* text;
    size_t at;
  };
  const Case cases[] = {
      {"", 0},
      {"   ", 3},
      {"[", 1},
      {"]", 0},
      {"[1,]", 3},
      {"[,1]", 1},
      {"[1 2]", 3},
      {"[1,,2]", 3},
      {"{", 1},
      {"{\"a\":1,}", 7},
      {"{\"a\" 1}", 5},
      {"{a:1}", 1},
      {"{\"a\":}", 5},
      {"{\"a\":1", 6},
      {"{1:2}", 1},
      {"{\"a\":1}}", 7},
      {"01", 1},
      {"-01", 2},
      {"1.", 2},
      {".5", 0},
      {"-", 1},
      {"+1", 0},
      {"1e", 2},
      {"1e+", 3},
      {"1.e3", 2},
      {"tru", 0},
      {"nul", 0},
      {"True", 0},
      {"NaN", 0},
      {"Infinity", 0},
      {"-Infinity", 1},
      {"'a'", 0},
      {"1 2", 2},
      {"[1]x", 3},
      {"\"a\"\"b\"", 3},
      {"nullx", 4},
      {"\xEF\xBB\xBF{}", 0},
      {"\f1", 0},
      {"{\"a\":1,\"a\":2}", 7},
      {"[{\"k\":0,\"k\":0}]", 8},
  };
  for (const Case& c : cases) EXPECT_TRUE(FailsAt(c.text, c.at)) << "text: " << c.text;
  EXPECT_TRUE(FailsAt(std::string_view("[1]\0", 4), 3));  // a NUL after the value
}

TEST(JsonParse, DuplicateKeysCanBeAllowed) {
  ParseOptions options;
  options.allow_duplicate_keys = true;
  const Json v = MustParse(R"({"a":1,"b":2,"a":3})", options);
  const Object& o = *v.GetObject();
  ASSERT_EQ(o.size(), 2u);
  EXPECT_EQ(o.members()[0].first, "a");  // first position, last value (as Python)
  EXPECT_EQ(*o.members()[0].second.GetInt(), 3);
  const Result<Json> strict = Parse(R"({"a":1,"b":2,"a":3})");
  ASSERT_FALSE(strict.ok());
  EXPECT_NE(strict.status().message().find("duplicate key \"a\""), std::string::npos)
      << strict.status().message();
}

// ---- Caps ----

std::string Nested(int depth) { return std::string(depth, '[') + std::string(depth, ']'); }

TEST(JsonParse, DepthCap) {
  EXPECT_TRUE(Parse(Nested(128)).ok());
  const Result<Json> deep = Parse(Nested(129));
  EXPECT_EQ(deep.status().code(), StatusCode::kResourceExhausted);
  ParseOptions options;
  options.max_depth = 3;
  EXPECT_TRUE(Parse(R"({"a":[{}]})", options).ok());
  EXPECT_EQ(Parse(R"({"a":[{"b":[]}]})", options).status().code(), StatusCode::kResourceExhausted);
  // The cap is clamped so the parser's recursion stays bounded.
  options.max_depth = 1 << 30;
  EXPECT_TRUE(Parse(Nested(kMaxDepthLimit), options).ok());
  EXPECT_EQ(Parse(Nested(kMaxDepthLimit + 1), options).status().code(),
            StatusCode::kResourceExhausted);
  EXPECT_EQ(Parse(Nested(100000), options).status().code(), StatusCode::kResourceExhausted);
  options.max_depth = 0;  // clamped to 1
  EXPECT_TRUE(Parse("[1]", options).ok());
  EXPECT_FALSE(Parse("[[1]]", options).ok());
}

TEST(JsonParse, SizeAndValueCaps) {
  ParseOptions options;
  options.max_size = 10;
  EXPECT_TRUE(Parse("[1,2,3,45]", options).ok());
  EXPECT_EQ(Parse("[1,2,3,456]", options).status().code(), StatusCode::kResourceExhausted);
  options = ParseOptions();
  options.max_values = 4;
  EXPECT_TRUE(Parse("[1,2,3]", options).ok());
  EXPECT_EQ(Parse("[1,2,3,4]", options).status().code(), StatusCode::kResourceExhausted);
  EXPECT_TRUE(Parse(R"({"a":{"b":{"c":{}}}})", options).ok());
  EXPECT_EQ(Parse(R"({"a":{"b":{"c":{"d":{}}}}})", options).status().code(),
            StatusCode::kResourceExhausted);
}

// ---- Object ----

TEST(JsonObject, OrderLookupReplaceErase) {
  Object o;
  for (int i = 0; i < 1000; ++i) {
    EXPECT_TRUE(o.Insert("k" + std::to_string(i), Json(i)));
  }
  EXPECT_FALSE(o.Insert("k5", Json("x")));
  EXPECT_EQ(*o.Find("k5")->GetInt(), 5);
  for (int i = 0; i < 1000; ++i) {
    const Json* v = o.Find("k" + std::to_string(i));
    ASSERT_NE(v, nullptr) << i;
    EXPECT_EQ(*v->GetInt(), i);
    EXPECT_EQ(o.members()[i].first, "k" + std::to_string(i));
  }
  EXPECT_EQ(o.Find("k1000"), nullptr);
  EXPECT_EQ(o.Find(""), nullptr);
  o.Set("k10", Json("ten"));
  EXPECT_EQ(o.members()[10].first, "k10");
  EXPECT_EQ(*o.members()[10].second.GetString(), "ten");
  Json& added = o.Set("new", Json(true));
  EXPECT_TRUE(*added.GetBool());
  EXPECT_EQ(o.members().back().first, "new");
  EXPECT_TRUE(o.Erase("k0"));
  EXPECT_FALSE(o.Erase("k0"));
  EXPECT_EQ(o.Find("k0"), nullptr);
  EXPECT_EQ(o.members()[0].first, "k1");
  for (int i = 1; i < 1000; ++i) ASSERT_NE(o.Find("k" + std::to_string(i)), nullptr) << i;
  *o.Find("k2") = Json(-2);
  EXPECT_EQ(*o.value(1).GetInt(), -2);
  // Shrinking back to a linear scan keeps lookups right.
  for (int i = 1; i < 995; ++i) ASSERT_TRUE(o.Erase("k" + std::to_string(i)));
  EXPECT_EQ(o.size(), 6u);
  EXPECT_EQ(*o.Find("k999")->GetInt(), 999);
  EXPECT_TRUE(o.Contains("new"));
}

TEST(JsonObject, CopyMoveAndEquality) {
  Object a;
  for (int i = 0; i < 50; ++i) a.Set("key" + std::to_string(i), Json(i));
  Object b = a;
  b.Set("key3", Json("changed"));
  EXPECT_EQ(*a.Find("key3")->GetInt(), 3);
  EXPECT_FALSE(a == b);
  b.Set("key3", Json(3));
  EXPECT_TRUE(a == b);
  // Order does not matter for equality.
  Object reversed;
  for (int i = 49; i >= 0; --i) reversed.Set("key" + std::to_string(i), Json(i));
  EXPECT_TRUE(a == reversed);
  Object moved = std::move(b);
  EXPECT_EQ(moved.size(), 50u);
  EXPECT_TRUE(b.empty());  // NOLINT: moved-from state is documented as empty
  EXPECT_EQ(b.Find("key1"), nullptr);
  b.Set("fresh", Json(1));  // usable after the move
  EXPECT_EQ(*b.Find("fresh")->GetInt(), 1);
  EXPECT_EQ(*moved.Find("key49")->GetInt(), 49);
  Json j(std::move(moved));
  Json k = std::move(j);
  EXPECT_TRUE(j.is_null());  // NOLINT: a moved-from Json is null
  EXPECT_EQ(*k.Find("key7")->GetInt(), 7);
}

TEST(JsonValue, ConstructionAndTypes) {
  EXPECT_EQ(Json(int8_t{-3}).type(), Type::kNumber);
  EXPECT_EQ(*Json(uint64_t{5}).GetInt(), 5);
  EXPECT_TRUE(Json(std::numeric_limits<uint64_t>::max()).is_double());
  EXPECT_TRUE(Json(1.5f).is_double());
  EXPECT_TRUE(Json("s").is_string());
  EXPECT_TRUE(Json(std::string_view("s")).is_string());
  EXPECT_TRUE(Json(nullptr).is_null());
  EXPECT_TRUE(Json(false).is_bool());
  EXPECT_FALSE(Json(1) == Json(1.0));
  EXPECT_TRUE(Json(Array{1, "a", true}) == MustParse(R"([1,"a",true])"));
  EXPECT_EQ(TypeName(Json(Array{}).type()), "array");
  EXPECT_EQ(TypeName(Json(Object()).type()), "object");
  EXPECT_EQ(TypeName(Type::kString), "string");
}

// ---- Serialize ----

// Expected texts verified with Python: json.dumps(v, indent=2 / indent=0 /
// separators=(",", ":"), ensure_ascii=False) for the same value.
TEST(JsonSerialize, MatchesPythonLayout) {
  const Json v = MustParse(
      "{\"b\":1,\"a\":[true,null,\"x\\n\xC3\xA9\xF0\x9F\x98\x80\"],\"c\":{},\"d\":[],"
      "\"e\":{\"f\":[1.5,-0.0,3.0]}}");
  EXPECT_EQ(Serialize(v),
            "{\"b\":1,\"a\":[true,null,\"x\\n\xC3\xA9\xF0\x9F\x98\x80\"],\"c\":{},\"d\":[],"
            "\"e\":{\"f\":[1.5,-0.0,3.0]}}");
  EXPECT_EQ(
      Serialize(v, 2),
      "{\n  \"b\": 1,\n  \"a\": [\n    true,\n    null,\n    \"x\\n\xC3\xA9\xF0\x9F\x98\x80\"\n"
      "  ],\n  \"c\": {},\n  \"d\": [],\n  \"e\": {\n    \"f\": [\n      1.5,\n      -0.0,\n"
      "      3.0\n    ]\n  }\n}");
  EXPECT_EQ(
      Serialize(v, 0),
      "{\n\"b\": 1,\n\"a\": [\ntrue,\nnull,\n\"x\\n\xC3\xA9\xF0\x9F\x98\x80\"\n],\n\"c\": {},\n"
      "\"d\": [],\n\"e\": {\n\"f\": [\n1.5,\n-0.0,\n3.0\n]\n}\n}");
}

TEST(JsonSerialize, Numbers) {
  EXPECT_EQ(Serialize(Json(std::numeric_limits<int64_t>::min())), "-9223372036854775808");
  EXPECT_EQ(Serialize(Json(std::numeric_limits<int64_t>::max())), "9223372036854775807");
  EXPECT_EQ(Serialize(Json(0.1)), "0.1");
  EXPECT_EQ(Serialize(Json(3.0)), "3.0");
  EXPECT_EQ(Serialize(Json(-0.0)), "-0.0");
  EXPECT_EQ(Serialize(Json(1e20)), "1e+20");
  EXPECT_EQ(Serialize(Json(123456789012.0)), "123456789012.0");
  EXPECT_EQ(Serialize(Json(5e-324)), "5e-324");
  EXPECT_EQ(Serialize(Json(std::nan(""))), "null");
  EXPECT_EQ(Serialize(Json(std::numeric_limits<double>::infinity())), "null");
  EXPECT_EQ(Serialize(Json(-std::numeric_limits<double>::infinity())), "null");
  EXPECT_EQ(Serialize(Json(Array{Json(std::nan("")), Json(1)})), "[null,1]");
}

TEST(JsonSerialize, DoublesRoundTripExactly) {
  std::mt19937_64 rng(5);
  int checked = 0;
  for (int i = 0; i < 200000; ++i) {
    const uint64_t bits = rng();
    double d;
    std::memcpy(&d, &bits, sizeof(d));
    if (!std::isfinite(d)) continue;
    const std::string text = Serialize(Json(d));
    const Result<Json> back = Parse(text);
    ASSERT_TRUE(back.ok()) << text;
    ASSERT_TRUE(back->is_double()) << text;
    uint64_t back_bits;
    std::memcpy(&back_bits, back->GetDouble(), sizeof(back_bits));
    ASSERT_EQ(back_bits, bits) << text;
    ++checked;
  }
  EXPECT_GT(checked, 100000);
}

TEST(JsonSerialize, StringEscaping) {
  EXPECT_EQ(Serialize(Json("q\"b\\s/\b\f\n\r\t")), R"("q\"b\\s/\b\f\n\r\t")");
  EXPECT_EQ(Serialize(Json(std::string("\x01\x1f\x7f", 3))), "\"\\u0001\\u001f\x7f\"");
  EXPECT_EQ(Serialize(Json(std::string(1, '\0'))), "\"\\u0000\"");
  // Invalid UTF-8 becomes U+FFFD, one per bad byte, so the output parses.
  const std::string bad =
      "a\xFF"
      "b\xC3"
      "\xE2\x82";
  const std::string out = Serialize(Json(bad));
  EXPECT_EQ(out,
            "\"a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\"");
  EXPECT_TRUE(Parse(out).ok());
}

TEST(JsonSerialize, ParseSerializeRoundTrip) {
  const char* texts[] = {
      R"({"a":[1,2,{"b":null}],"c":"d\u0001\ud83d\ude00","e":-1.25e-5,"f":{}})",
      R"([[[[]]],{},"",0,-0.0,1e300,true,false])",
      R"("just a string")",
      "9223372036854775808",
  };
  for (const char* text : texts) {
    const Json v = MustParse(text);
    for (int indent : {-1, 0, 1, 4}) {
      const std::string s = Serialize(v, indent);
      const Json back = MustParse(s);
      EXPECT_TRUE(back == v) << s;
      EXPECT_EQ(Serialize(back, indent), s);
    }
  }
}

// ---- Robustness ----

TEST(JsonParse, RandomDamageIsSafe) {
  const std::string seed =
      R"({"__metadata__":{"format":"pt"},"w":{"dtype":"F32","shape":[2,3],)"
      R"("data_offsets":[0,24]},"s":"\u00e9\ud83d\ude00 x","n":[1.5e3,-0,true,null]})";
  std::mt19937 rng(9);
  int parsed = 0;
  for (int iter = 0; iter < 20000; ++iter) {
    std::string text = seed;
    const int changes = 1 + static_cast<int>(rng() % 4);
    for (int c = 0; c < changes; ++c) {
      const size_t at = rng() % text.size();
      switch (rng() % 3) {
        case 0:
          text[at] = static_cast<char>(rng());
          break;
        case 1:
          text.erase(at, 1 + rng() % 4);
          break;
        default:
          text.insert(at, 1, "[]{}\",:\\0e-."[rng() % 13]);
          break;
      }
      if (text.empty()) text = "x";
    }
    const Result<Json> r = Parse(text);
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("at byte"), std::string::npos) << r.status().message();
      continue;
    }
    ++parsed;
    const Result<Json> again = Parse(Serialize(*r));
    ASSERT_TRUE(again.ok());
    EXPECT_TRUE(*again == *r);
  }
  EXPECT_GT(parsed, 0);
}

// ---- Interop with Python's json module ----

int RunPython(const std::string& script, const std::string& input, std::string* output) {
  const std::string base = ::testing::TempDir() + "dcpp_json_test_" + std::to_string(getpid());
  {
    std::ofstream(base + ".py") << script;
    std::ofstream(base + ".in", std::ios::binary) << input;
  }
  FILE* p = popen(("python3 " + base + ".py < " + base + ".in 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  char buf[4096];
  size_t n;
  output->clear();
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) output->append(buf, n);
  const int rc = pclose(p);
  std::remove((base + ".py").c_str());
  std::remove((base + ".in").c_str());
  return rc;
}

TEST(JsonInterop, PythonAgrees) {
  std::string out;
  if (RunPython("import json\n", "", &out) != 0) GTEST_SKIP() << "python3 not available";
  // Python writes a document; we parse it and write it back; Python checks
  // that our text means the same.
  const std::string make =
      "import json, random, sys\n"
      "random.seed(3)\n"
      "def v(d):\n"
      "    k = random.randrange(8 if d < 4 else 5)\n"
      "    if k == 0: return random.randrange(-2**63, 2**63)\n"
      "    if k == 1: return random.uniform(-1e10, 1e10) * 10.0 ** random.randrange(-300, 290)\n"
      "    if k == 2: return ''.join(chr(random.choice([random.randrange(0, 0x80),\n"
      "        random.randrange(0x80, 0xd800), random.randrange(0xe000, 0x110000)]))\n"
      "        for _ in range(random.randrange(6)))\n"
      "    if k == 3: return random.choice([True, False, None])\n"
      "    if k == 4: return random.randrange(-1000, 1000)\n"
      "    if k in (5, 6): return [v(d + 1) for _ in range(random.randrange(4))]\n"
      "    return {str(i) + chr(random.randrange(0x20, 0x3000)): v(d + 1)\n"
      "            for i in range(random.randrange(4))}\n"
      "doc = [v(0) for _ in range(300)]\n"
      "sys.stdout.write(json.dumps(doc, ensure_ascii=random.random() < 0.5))\n";
  ASSERT_EQ(RunPython(make, "", &out), 0) << out;
  const std::string python_text = out;
  const Result<Json> v = Parse(python_text);
  ASSERT_TRUE(v.ok()) << v.status().ToString();
  for (int indent : {-1, 2}) {
    const std::string ours = Serialize(*v, indent);
    const std::string check =
        "import json, sys\n"
        "a, b = sys.stdin.read().split('\\n<<<SPLIT>>>\\n')\n"
        "x, y = json.loads(a), json.loads(b)\n"
        "def same(p, q):\n"
        "    if type(p) != type(q): return False\n"
        "    if isinstance(p, list): return len(p) == len(q) and all(map(same, p, q))\n"
        "    if isinstance(p, dict):\n"
        "        return list(p) == list(q) and all(same(p[k], q[k]) for k in p)\n"
        "    return p == q\n"
        "print('same' if same(x, y) else 'different')\n";
    ASSERT_EQ(RunPython(check, python_text + "\n<<<SPLIT>>>\n" + ours, &out), 0) << out;
    EXPECT_EQ(out, "same\n");
  }
}

}  // namespace
}  // namespace dcpp::format::json
