#include "dcpp/format/pickle.h"

#include <gtest/gtest.h>

#include "memory_limit.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace dcpp::format::pickle {
namespace {

using namespace std::string_literals;

std::filesystem::path TestDataDir() {
  return std::filesystem::path(DCPP_TESTDATA_DIR);
}

std::string ReadTestFile(const std::string& name) {
  std::ifstream in(TestDataDir() / name, std::ios::binary);
  EXPECT_TRUE(in.good()) << "missing fixture " << (TestDataDir() / name)
                         << " (regenerate with testdata/make_testdata.py)";
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

ParseOptions AllowAll() {
  ParseOptions options;
  options.allow_global = [](std::string_view, std::string_view) { return true; };
  options.allow_persistent_id = true;
  return options;
}

std::string Hex(std::string_view s) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  for (char c : s) {
    auto b = static_cast<uint8_t>(c);
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 15]);
  }
  return out;
}

// UTF-8 -> code points; -1 entries for malformed input.
std::vector<int32_t> CodePoints(std::string_view s) {
  std::vector<int32_t> out;
  for (size_t k = 0; k < s.size();) {
    auto b = static_cast<uint8_t>(s[k]);
    int n = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
    int32_t cp = n == 1 ? b : n == 2 ? (b & 0x1F) : n == 3 ? (b & 0x0F) : (b & 0x07);
    if (k + n > s.size()) return {-1};
    for (int j = 1; j < n; ++j) cp = (cp << 6) | (static_cast<uint8_t>(s[k + j]) & 0x3F);
    out.push_back(cp);
    k += n;
  }
  return out;
}

bool IsGlobal(const Graph& g, NodeId id, std::string_view module, std::string_view name) {
  const Node& n = g.at(id);
  return n.kind == Kind::kGlobal && n.s == module && n.s2 == name;
}

// The canonical text form of plain data that make_testdata.py's canon()
// prints, computed from the graph. Interprets the reduce forms Python uses for
// bytes, bytearray, set and frozenset at protocols below 4/5.
std::string Canon(const Graph& g, NodeId id, int depth = 0) {
  if (depth > 100) return "<too deep>";
  const Node& n = g.at(id);
  auto join = [&](const std::vector<NodeId>& items, std::string_view sep_pair = "") {
    std::string out;
    for (size_t k = 0; k < items.size(); ++k) {
      if (k > 0) out += sep_pair.empty() || k % 2 == 0 ? "," : ":";
      out += Canon(g, items[k], depth + 1);
    }
    return out;
  };
  switch (n.kind) {
    case Kind::kNone:
      return "None";
    case Kind::kBool:
      return n.b ? "True" : "False";
    case Kind::kInt:
      return "int:" + std::to_string(n.i);
    case Kind::kBigInt:
      return "bigint:" + Hex(n.s);
    case Kind::kFloat: {
      char bytes[8];
      std::memcpy(bytes, &n.f, 8);
      return "float:" + Hex(std::string_view(bytes, 8));
    }
    case Kind::kString:
      return "str:" + Hex(n.s);
    case Kind::kBytes:
      return "bytes:" + Hex(n.s);
    case Kind::kTuple:
      return "(" + join(n.items) + ")";
    case Kind::kList:
      return "[" + join(n.items) + "]";
    case Kind::kDict:
      return "{" + join(n.items, ":") + "}";
    case Kind::kSet:
      return "set{" + join(n.items) + "}";
    case Kind::kFrozenSet:
      return "frozenset{" + join(n.items) + "}";
    case Kind::kReduce: {
      NodeId fn = n.items[0];
      const Node& args = g.at(n.items[1]);
      if (args.kind != Kind::kTuple) break;
      if (IsGlobal(g, fn, "_codecs", "encode") && args.items.size() == 2) {
        std::string bytes;
        for (int32_t cp : CodePoints(g.at(args.items[0]).s)) {
          if (cp < 0 || cp > 255) return "<bad latin-1>";
          bytes.push_back(static_cast<char>(cp));
        }
        return "bytes:" + Hex(bytes);
      }
      if ((IsGlobal(g, fn, "builtins", "bytes") || IsGlobal(g, fn, "builtins", "bytearray")) &&
          args.items.empty()) {
        return "bytes:";
      }
      if (IsGlobal(g, fn, "builtins", "bytearray") && args.items.size() == 1) {
        return Canon(g, args.items[0], depth + 1);
      }
      if (IsGlobal(g, fn, "builtins", "set") && args.items.size() == 1) {
        return "set{" + join(g.at(args.items[0]).items) + "}";
      }
      if (IsGlobal(g, fn, "builtins", "frozenset") && args.items.size() == 1) {
        return "frozenset{" + join(g.at(args.items[0]).items) + "}";
      }
      break;
    }
    default:
      break;
  }
  return "<" + std::string(KindName(n.kind)) + ">";
}

// ---------------------------------------------------------------- Writer

// Expected bytes below were produced by CPython 3.11.7's pickle.dumps(obj,
// protocol=2) (see make_testdata.py --print-writer-cases); each Writer
// program issues the calls Python's pickler makes for that object.

TEST(PickleWriterTest, DictListTupleMatchesPython) {
  // {'a': [1, 2, (3, 4.5)], 'b': None, 'c': True, 'd': False}
  Writer w;
  w.EmptyDict();
  w.Memoize();
  w.Mark();
  w.String("a");
  w.Memoize();
  w.EmptyList();
  w.Memoize();
  w.Mark();
  w.Int(1);
  w.Int(2);
  w.Int(3);
  w.Float(4.5);
  w.Tuple(2);
  w.Memoize();
  w.Appends();
  w.String("b");
  w.Memoize();
  w.None();
  w.String("c");
  w.Memoize();
  w.Bool(true);
  w.String("d");
  w.Memoize();
  w.Bool(false);
  w.SetItems();
  EXPECT_EQ(Hex(w.Finish()),
            Hex("\x80\x02\x7d\x71\x00\x28\x58\x01\x00\x00\x00\x61\x71\x01\x5d\x71\x02\x28\x4b\x01"
                "\x4b\x02\x4b\x03\x47\x40\x12\x00\x00\x00\x00\x00\x00\x86\x71\x03\x65\x58\x01\x00"
                "\x00\x00\x62\x71\x04\x4e\x58\x01\x00\x00\x00\x63\x71\x05\x88\x58\x01\x00\x00\x00"
                "\x64\x71\x06\x89\x75\x2e"s));
}

TEST(PickleWriterTest, IntsMatchPython) {
  // [0, 255, 256, 65535, 65536, -1, -2**31, 2**31-1, 2**31, 2**63-1, -2**63, 128, -128, -129]
  Writer w;
  w.EmptyList();
  w.Memoize();
  w.Mark();
  for (int64_t v : {int64_t{0}, int64_t{255}, int64_t{256}, int64_t{65535}, int64_t{65536},
                    int64_t{-1}, int64_t{-2147483648LL}, int64_t{2147483647}, int64_t{2147483648LL},
                    std::numeric_limits<int64_t>::max(), std::numeric_limits<int64_t>::min(),
                    int64_t{128}, int64_t{-128}, int64_t{-129}}) {
    w.Int(v);
  }
  w.Appends();
  EXPECT_EQ(Hex(w.Finish()),
            Hex("\x80\x02\x5d\x71\x00\x28\x4b\x00\x4b\xff\x4d\x00\x01\x4d\xff\xff\x4a\x00\x00\x01"
                "\x00\x4a\xff\xff\xff\xff\x4a\x00\x00\x00\x80\x4a\xff\xff\xff\x7f\x8a\x05\x00\x00"
                "\x00\x80\x00\x8a\x08\xff\xff\xff\xff\xff\xff\xff\x7f\x8a\x08\x00\x00\x00\x00\x00"
                "\x00\x00\x80\x4b\x80\x4a\x80\xff\xff\xff\x4a\x7f\xff\xff\xff\x65\x2e"s));
}

TEST(PickleWriterTest, UIntBeyondInt64UsesNineByteLong1) {
  // pickle.dumps(2**64 - 1, 2) == b'\x80\x02\x8a\x09' + b'\xff' * 8 + b'\x00.'
  Writer w;
  w.UInt(~uint64_t{0});
  EXPECT_EQ(Hex(w.Finish()), Hex("\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00."s));
  Writer small;
  small.UInt(300);
  EXPECT_EQ(Hex(small.Finish()), Hex("\x80\x02M\x2c\x01."s));
}

TEST(PickleWriterTest, BytesMatchPython) {
  // pickle.dumps(b'abc', 2)
  Writer one;
  one.Bytes("abc");
  one.Memoize();
  EXPECT_EQ(Hex(one.Finish()), Hex("\x80\x02\x63_codecs\nencode\nq\x00X\x03\x00\x00\x00"
                                   "abcq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04."s));

  // [b'abc', b'', b'\xff\x00', b'abc'] (the last is the same object: BINGET)
  Writer w;
  w.EmptyList();
  w.Memoize();
  w.Mark();
  w.Bytes("abc");
  uint32_t abc = w.Memoize();
  w.Bytes("");
  w.Memoize();
  w.Bytes("\xff\x00"s);
  w.Memoize();
  w.Get(abc);
  w.Appends();
  EXPECT_EQ(Hex(w.Finish()),
            Hex("\x80\x02\x5d\x71\x00\x28\x63\x5f\x63\x6f\x64\x65\x63\x73\x0a\x65\x6e\x63\x6f\x64"
                "\x65\x0a\x71\x01\x58\x03\x00\x00\x00\x61\x62\x63\x71\x02\x58\x06\x00\x00\x00\x6c"
                "\x61\x74\x69\x6e\x31\x71\x03\x86\x71\x04\x52\x71\x05\x63\x5f\x5f\x62\x75\x69\x6c"
                "\x74\x69\x6e\x5f\x5f\x0a\x62\x79\x74\x65\x73\x0a\x71\x06\x29\x52\x71\x07\x68\x01"
                "\x58\x03\x00\x00\x00\xc3\xbf\x00\x71\x08\x68\x03\x86\x71\x09\x52\x71\x0a\x68\x05"
                "\x65\x2e"s));
}

TEST(PickleWriterTest, GlobalsMemoizedAndNewObjMatchPython) {
  // [collections.OrderedDict, collections.OrderedDict, argparse.Namespace]
  Writer w;
  w.EmptyList();
  w.Memoize();
  w.Mark();
  w.Global("collections", "OrderedDict");
  w.Global("collections", "OrderedDict");
  w.Global("argparse", "Namespace");
  w.Appends();
  EXPECT_EQ(Hex(w.Finish()),
            Hex("\x80\x02\x5d\x71\x00\x28\x63\x63\x6f\x6c\x6c\x65\x63\x74\x69\x6f\x6e\x73\x0a\x4f"
                "\x72\x64\x65\x72\x65\x64\x44\x69\x63\x74\x0a\x71\x01\x68\x01\x63\x61\x72\x67\x70"
                "\x61\x72\x73\x65\x0a\x4e\x61\x6d\x65\x73\x70\x61\x63\x65\x0a\x71\x02\x65\x2e"s));

  // argparse.Namespace(x=1, y='s')
  Writer n;
  n.Global("argparse", "Namespace");
  n.EmptyTuple();
  n.NewObj();
  n.Memoize();
  n.EmptyDict();
  n.Memoize();
  n.Mark();
  n.String("x");
  n.Memoize();
  n.Int(1);
  n.String("y");
  n.Memoize();
  n.String("s");
  n.Memoize();
  n.SetItems();
  n.Build();
  EXPECT_EQ(Hex(n.Finish()),
            Hex("\x80\x02\x63\x61\x72\x67\x70\x61\x72\x73\x65\x0a\x4e\x61\x6d\x65\x73\x70\x61\x63"
                "\x65\x0a\x71\x00\x29\x81\x71\x01\x7d\x71\x02\x28\x58\x01\x00\x00\x00\x78\x71\x03"
                "\x4b\x01\x58\x01\x00\x00\x00\x79\x71\x04\x58\x01\x00\x00\x00\x73\x71\x05\x75\x62"
                "\x2e"s));
}

TEST(PickleWriterTest, LongTupleLongStringAndLongMemoMatchPython) {
  // (1, 2, 3, 4, 5)
  Writer t;
  t.Mark();
  for (int v = 1; v <= 5; ++v) t.Int(v);
  t.Tuple(5);
  t.Memoize();
  EXPECT_EQ(Hex(t.Finish()), Hex("\x80\x02(K\x01K\x02K\x03K\x04K\x05tq\x00."s));

  // 'x' * 300: BINUNICODE with a 4-byte length.
  Writer s;
  s.String(std::string(300, 'x'));
  s.Memoize();
  EXPECT_EQ(Hex(s.Finish()), Hex("\x80\x02X\x2c\x01\x00\x00"s + std::string(300, 'x') + "q\x00."s));

  // many = [str(i) for i in range(300)]; many.append(many[-1]): the tail shows
  // LONG_BINPUT 298..300 and LONG_BINGET 300.
  Writer m;
  m.EmptyList();
  m.Memoize();
  m.Mark();
  uint32_t last = 0;
  for (int i = 0; i < 300; ++i) {
    m.String(std::to_string(i));
    last = m.Memoize();
  }
  m.Get(last);
  m.Appends();
  std::string out = m.Finish();
  std::string tail =
      "\x39\x37\x72\x2a\x01\x00\x00\x58\x03\x00\x00\x00\x32\x39\x38\x72\x2b\x01\x00\x00\x58\x03"
      "\x00\x00\x00\x32\x39\x39\x72\x2c\x01\x00\x00\x6a\x2c\x01\x00\x00\x65\x2e"s;
  ASSERT_GE(out.size(), tail.size());
  EXPECT_EQ(Hex(out.substr(out.size() - tail.size())), Hex(tail));
}

// ---------------------------------------------------------------- round trips

TEST(PickleRoundTripTest, WriterOutputParsesBack) {
  Writer w;
  w.Global("mod", "Cls");  // memo 0
  w.EmptyTuple();
  w.NewObj();
  w.Memoize();  // 1
  w.EmptyDict();
  w.Memoize();  // 2
  w.Mark();
  w.String("ints");
  w.Mark();
  w.Int(-5);
  w.Int(70000);
  w.Int(std::numeric_limits<int64_t>::min());
  w.UInt(~uint64_t{0});
  w.Tuple(4);
  w.String("f");
  w.Float(-0.125);
  w.String("bytes");
  w.Bytes("\x00\x80\xff"s);
  w.String("list");
  w.EmptyList();
  uint32_t list = w.Memoize();
  w.Get(list);  // DUP through the memo
  w.Append();   // the list now contains itself (a cycle)
  w.String("cls_again");
  w.Global("mod", "Cls");
  w.String("pid");
  w.String("storage");
  w.Tuple(1);
  w.BinPersId();
  w.SetItems();
  w.Build();
  std::string bytes = w.Finish();

  Result<Graph> g = Parse(bytes, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const Node& root = g->at(g->root);
  ASSERT_EQ(root.kind, Kind::kNewObj);
  ASSERT_EQ(root.items.size(), 2u);
  EXPECT_TRUE(IsGlobal(*g, root.items[0], "mod", "Cls"));
  EXPECT_EQ(g->at(root.items[1]).kind, Kind::kTuple);
  ASSERT_NE(root.state, kNoNode);
  const Node& state = g->at(root.state);
  ASSERT_EQ(state.kind, Kind::kDict);
  ASSERT_EQ(state.items.size(), 12u);
  auto value = [&](int k) -> const Node& { return g->at(state.items[2 * k + 1]); };
  EXPECT_EQ(g->at(state.items[0]).s, "ints");

  const Node& ints = value(0);
  ASSERT_EQ(ints.items.size(), 4u);
  EXPECT_EQ(g->at(ints.items[0]).i, -5);
  EXPECT_EQ(g->at(ints.items[1]).i, 70000);
  EXPECT_EQ(g->at(ints.items[2]).kind, Kind::kInt);
  EXPECT_EQ(g->at(ints.items[2]).i, std::numeric_limits<int64_t>::min());
  EXPECT_EQ(g->at(ints.items[3]).kind, Kind::kBigInt);
  EXPECT_EQ(Hex(g->at(ints.items[3]).s), "ffffffffffffffff00");

  EXPECT_EQ(value(1).kind, Kind::kFloat);
  EXPECT_EQ(value(1).f, -0.125);
  EXPECT_EQ(Canon(*g, state.items[5]), "bytes:0080ff");

  const Node& l = value(3);
  ASSERT_EQ(l.kind, Kind::kList);
  ASSERT_EQ(l.items.size(), 1u);
  EXPECT_EQ(l.items[0], state.items[7]);  // itself

  EXPECT_EQ(state.items[9], root.items[0]);  // BINGET of the memoized global
  const Node& pid = value(5);
  ASSERT_EQ(pid.kind, Kind::kPersistentId);
  ASSERT_EQ(pid.items.size(), 1u);
  EXPECT_EQ(Canon(*g, pid.items[0]), "(str:" + Hex("storage") + ")");
}

// ---------------------------------------------------------------- Python pickles

TEST(PickleParseTest, PythonNestedDataAllProtocols) {
  std::string expected = ReadTestFile("nested.expected.txt");
  ASSERT_FALSE(expected.empty());
  expected.pop_back();  // newline
  for (int proto = 0; proto <= 5; ++proto) {
    SCOPED_TRACE("protocol " + std::to_string(proto));
    std::string bytes = ReadTestFile("nested_p" + std::to_string(proto) + ".pkl");
    Result<Graph> g = Parse(bytes, AllowAll());
    ASSERT_TRUE(g.ok()) << g.status().ToString();
    EXPECT_EQ(Canon(*g, g->root), expected);
  }
}

TEST(PickleParseTest, ProtocolTwoMapsPython2BuiltinNames) {
  std::string bytes = ReadTestFile("nested_p2.pkl");
  std::vector<std::string> seen;
  ParseOptions options = AllowAll();
  options.allow_global = [&](std::string_view m, std::string_view n) {
    seen.push_back(std::string(m) + "." + std::string(n));
    return true;
  };
  ASSERT_TRUE(Parse(bytes, options).ok());
  // The file spells it c__builtin__\nset\n; Python 3 loads builtins.set.
  EXPECT_NE(std::find(seen.begin(), seen.end(), "builtins.set"), seen.end());
  EXPECT_EQ(std::find(seen.begin(), seen.end(), "__builtin__.set"), seen.end());
  EXPECT_NE(std::find(seen.begin(), seen.end(), "_codecs.encode"), seen.end());

  // Protocol 3 and later keep names as written.
  std::string p3 = "\x80\x03\x63__builtin__\nset\n."s;
  seen.clear();
  ASSERT_TRUE(Parse(p3, options).ok());
  EXPECT_EQ(seen, std::vector<std::string>{"__builtin__.set"});
}

TEST(PickleParseTest, ProtocolZeroText) {
  // pickle.dumps({'a': [1, 2.5, 'xé\\u', (None, True)], 'b': 2**70, 'c': b'z',
  //               'd': {1}, 'e': -3}, 0) from CPython 3.11.7.
  std::string bytes =
      "(dp0\nVa\np1\n(lp2\nI1\naF2.5\naVx\xe9\\u005cu\np3\na(NI01\ntp4\nasVb\np5\n"
      "L1180591620717411303424L\nsVc\np6\nc_codecs\nencode\np7\n(Vz\np8\nVlatin1\np9\ntp10\n"
      "Rp11\nsVd\np12\nc__builtin__\nset\np13\n((lp14\nI1\natp15\nRp16\nsVe\np17\nI-3\ns."s;
  Result<Graph> g = Parse(bytes, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  double f = 2.5;
  char fb[8];
  std::memcpy(fb, &f, 8);
  EXPECT_EQ(Canon(*g, g->root), "{str:61:[int:1,float:" + Hex(std::string_view(fb, 8)) +
                                    ",str:" + Hex("x\xc3\xa9\\u") +
                                    ",(None,True)],str:62:bigint:" + Hex("\0\0\0\0\0\0\0\0\x40"s) +
                                    ",str:63:bytes:7a,str:64:set{int:1},str:65:int:-3}");
}

TEST(PickleParseTest, TorchSaveDataPkl) {
  std::string bytes = ReadTestFile("torch_save_data.pkl");
  Result<Graph> g = Parse(bytes, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const Node& root = g->at(g->root);
  ASSERT_EQ(root.kind, Kind::kReduce);
  EXPECT_TRUE(IsGlobal(*g, root.items[0], "collections", "OrderedDict"));
  ASSERT_EQ(root.dict_items.size(), 4u);
  EXPECT_EQ(g->at(root.dict_items[0]).s, "w");
  EXPECT_EQ(g->at(root.dict_items[2]).s, "b");
  const Node& w = g->at(root.dict_items[1]);
  ASSERT_EQ(w.kind, Kind::kReduce);
  EXPECT_TRUE(IsGlobal(*g, w.items[0], "torch._utils", "_rebuild_tensor_v2"));
  const Node& args = g->at(w.items[1]);
  ASSERT_EQ(args.items.size(), 6u);
  const Node& pid = g->at(args.items[0]);
  ASSERT_EQ(pid.kind, Kind::kPersistentId);
  const Node& pid_tuple = g->at(pid.items[0]);
  ASSERT_EQ(pid_tuple.items.size(), 5u);
  EXPECT_EQ(g->at(pid_tuple.items[0]).s, "storage");
  EXPECT_TRUE(IsGlobal(*g, pid_tuple.items[1], "torch", "FloatStorage"));
  EXPECT_EQ(g->at(pid_tuple.items[2]).s, "0");
  EXPECT_EQ(g->at(pid_tuple.items[4]).i, 6);
  EXPECT_EQ(Canon(*g, args.items[2]), "(int:2,int:3)");
  EXPECT_EQ(Canon(*g, args.items[3]), "(int:3,int:1)");
  EXPECT_EQ(g->at(args.items[4]).kind, Kind::kBool);
  // The second tensor shares the memoized 'storage' string and the rebuild global.
  const Node& b = g->at(root.dict_items[3]);
  EXPECT_EQ(b.items[0], w.items[0]);

  ParseOptions no_pid = AllowAll();
  no_pid.allow_persistent_id = false;
  Result<Graph> refused = Parse(bytes, no_pid);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), StatusCode::kInvalidArgument);
  EXPECT_NE(refused.status().message().find("BINPERSID"), std::string::npos);
}

// ---------------------------------------------------------------- bad input

TEST(PickleParseTest, EveryTruncationIsDataLoss) {
  Writer w;
  w.Global("m", "n");
  w.Mark();
  w.Int(1);
  w.Int(-70000);
  w.Int(int64_t{1} << 40);
  w.Float(1.5);
  w.String("text");
  w.Memoize();
  w.Bytes("raw");
  w.Tuple(5);
  w.Reduce();
  w.Memoize();
  w.Get(0);
  w.BinPersId();
  w.Tuple(2);
  std::string written = w.Finish();
  std::string p0 =
      "(dp0\nVa\np1\n(lp2\nI1\naF2.5\naVx\xe9\\u005cu\np3\na(NI01\ntp4\nasVb\np5\n"
      "L1180591620717411303424L\nsg1\ng5\ns."s;
  for (const std::string& bytes : {written, p0, ReadTestFile("torch_save_data.pkl"),
                                   ReadTestFile("nested_p4.pkl"), ReadTestFile("nested_p5.pkl")}) {
    ASSERT_TRUE(Parse(bytes, AllowAll()).ok());
    // Large fixtures: every prefix near the ends, a stride through the middle.
    for (size_t n = 0; n < bytes.size(); n += (n < 600 || n + 600 > bytes.size()) ? 1 : 13) {
      Result<Graph> g = Parse(std::string_view(bytes).substr(0, n), AllowAll());
      ASSERT_FALSE(g.ok()) << "prefix " << n;
      ASSERT_EQ(g.status().code(), StatusCode::kDataLoss) << g.status().ToString();
    }
  }
}

TEST(PickleParseTest, TruncationMessageNamesOpcodeAndOffset) {
  Result<Graph> g = Parse(
      "\x80\x02X\x05\x00\x00\x00"
      "ab"s,
      AllowAll());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().ToString(), "DATA_LOSS: pickle: truncated BINUNICODE at offset 2");
}

TEST(PickleParseTest, DisallowedGlobal) {
  ParseOptions options;
  options.allow_global = [](std::string_view m, std::string_view n) {
    return m == "collections" && n == "OrderedDict";
  };
  EXPECT_TRUE(Parse("\x80\x02\x63\x63ollections\nOrderedDict\n)R."s, options).ok());
  Result<Graph> g = Parse("\x80\x02\x63os\nsystem\nX\x02\x00\x00\x00ls\x85R."s, options);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(g.status().message(), "pickle: global 'os.system' is not allowed");

  // STACK_GLOBAL goes through the same policy.
  g = Parse("\x80\x04\x8c\x02os\x8c\x06system\x93."s, options);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().message(), "pickle: global 'os.system' is not allowed");

  // A null policy rejects every global.
  g = Parse("\x80\x02\x63\x63ollections\nOrderedDict\n."s, ParseOptions{});
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kInvalidArgument);
}

TEST(PickleParseTest, MemoErrors) {
  Result<Graph> g = Parse("\x80\x02h\x05."s, AllowAll());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().ToString(), "DATA_LOSS: pickle: memo key 5 not found in BINGET at offset 2");
  g = Parse("\x80\x02Nq\x00j\x01\x00\x00\x00."s, AllowAll());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kDataLoss);
  // A far-away index is stored sparsely and found again.
  g = Parse(
      "\x80\x02Nr\xff\xff\xff\xff"
      "0j\xff\xff\xff\xff."s,
      AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->at(g->root).kind, Kind::kNone);
  // PUT with nothing on the stack.
  g = Parse("\x80\x02q\x00N."s, AllowAll());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kDataLoss);
  // Text GET / PUT.
  g = Parse("Vx\np7\n0g7\n."s, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->at(g->root).s, "x");
  EXPECT_FALSE(Parse("Vx\np-1\n."s, AllowAll()).ok());
}

TEST(PickleParseTest, BadOpcodes) {
  Result<Graph> g = Parse("\x80\x02\xff."s, AllowAll());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().ToString(), "UNIMPLEMENTED: pickle: unknown opcode 0xff at offset 2");
  g = Parse("\x80\x05\x97."s, AllowAll());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().ToString(),
            "UNIMPLEMENTED: pickle: unsupported opcode 0x97 (NEXT_BUFFER) at offset 2");
  for (std::string op : {"\x98"s, "\x82\x01"s, "\x83\x01\x00"s, "\x84\x01\x00\x00\x00"s, "S'x'\n"s,
                         "(i__main__\nC\n"s, "(o"s}) {
    g = Parse("\x80\x02"s + op + "."s, AllowAll());
    ASSERT_FALSE(g.ok());
    EXPECT_EQ(g.status().code(), StatusCode::kUnimplemented) << g.status().ToString();
  }
  g = Parse("\x80\x06N."s, AllowAll());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kUnimplemented);
}

TEST(PickleParseTest, StructuralErrors) {
  struct Case {
    std::string bytes;
    std::string message_part;
  };
  const Case cases[] = {
      {"\x80\x02."s, "stack underflow in STOP"},
      {"\x80\x02Na."s, "stack underflow in APPEND"},
      {"\x80\x02]u."s, "no MARK in SETITEMS"},
      {"\x80\x02N(a."s, "stack underflow in APPEND"},  // cannot reach below a MARK
      {"\x80\x02N(\x85."s, "stack underflow in TUPLE1"},
      {"\x80\x02(NNNd."s, "odd number of items in DICT"},
      {"\x80\x02}(Nu."s, "odd number of items in SETITEMS"},
      {"\x80\x02NNs."s, "stack underflow in SETITEM"},
      {"\x80\x02)NNs."s, "setting items on a tuple"},
      {"\x80\x02)Na."s, "appending to a tuple"},
      {"\x80\x02](N\x90."s, "adding items to a list"},
      {"\x80\x02]}b."s, "state for a list"},
      {"\x80\x02\x63m\nC\n)\x81}b}b."s, "second state for one object"},
      {"\x80\x02\x63m\nC\nN\x81."s, "arguments are not a tuple in NEWOBJ"},
      {"\x80\x04NN\x93."s, "module or name is not a str in STACK_GLOBAL"},
      {"\x80\x02\x8b\xff\xff\xff\xff."s, "negative byte count in LONG4"},
      {"\x80\x02T\xff\xff\xff\xff."s, "negative byte count in BINSTRING"},
      {"I12x\n."s, "bad integer literal in INT"},
      {"Fnotafloat\n."s, "bad float literal in FLOAT"},
      {"V\\u12\n."s, "truncated \\u escape in UNICODE"},
      {"\x80\x02N"s, "input ends at offset 3 without STOP"},
      {"\x80\x04\x95\xff\x00\x00\x00\x00\x00\x00\x00N."s, "truncated FRAME at offset 2"},
  };
  for (const Case& c : cases) {
    Result<Graph> g = Parse(c.bytes, AllowAll());
    ASSERT_FALSE(g.ok()) << Hex(c.bytes);
    EXPECT_EQ(g.status().code(), StatusCode::kDataLoss) << g.status().ToString();
    EXPECT_NE(g.status().message().find(c.message_part), std::string::npos)
        << g.status().ToString() << " lacks " << c.message_part;
  }
}

TEST(PickleParseTest, StackOpsAndObjectMutation) {
  // POP removes a MARK on top; POP_MARK drops items; DUP; trailing bytes ignored.
  Result<Graph> g = Parse(
      "\x80\x02(0K\x01(K\x02K\x03"
      "12\x86.trailing garbage"s,
      AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(Canon(*g, g->root), "(int:1,int:1)");

  // Empty SETITEMS / APPENDS / ADDITEMS do not look at their target (as in Python).
  g = Parse("\x80\x02)(u(e(\x90."s, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->at(g->root).kind, Kind::kTuple);

  // APPEND(S) / SETITEM(S) on a reduced object land in list_items/dict_items.
  g = Parse(
      "\x80\x02\x63m\nC\n)R(K\x01K\x02"
      "eK\x03"
      "aX\x01\x00\x00\x00kNs."s,
      AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  const Node& obj = g->at(g->root);
  ASSERT_EQ(obj.list_items.size(), 3u);
  EXPECT_EQ(g->at(obj.list_items[2]).i, 3);
  ASSERT_EQ(obj.dict_items.size(), 2u);
  EXPECT_EQ(g->at(obj.dict_items[0]).s, "k");

  // NEWOBJ_EX keeps kwargs as a third item; PERSID holds a str.
  g = Parse("\x80\x04\x63m\nC\n)}\x92."s, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(g->at(g->root).kind, Kind::kNewObj);
  EXPECT_EQ(g->at(g->root).items.size(), 3u);
  g = Parse("Pkey\n."s, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  ASSERT_EQ(g->at(g->root).kind, Kind::kPersistentId);
  EXPECT_EQ(g->at(g->at(g->root).items[0]).s, "key");

  // LONG1 that fits int64 is kInt even with redundant bytes; a zero-length LONG1 is 0.
  g = Parse("\x80\x02\x8a\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x8a\x00\x86."s, AllowAll());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_EQ(Canon(*g, g->root), "(int:-1,int:0)");
}

TEST(PickleParseTest, Caps) {
  ParseOptions options = AllowAll();
  options.max_nodes = 3;
  Result<Graph> g = Parse("\x80\x02NNNN\x87."s, options);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted);
  options.max_nodes = 4;
  EXPECT_TRUE(Parse("\x80\x02NNN\x87."s, options).ok());

  options = AllowAll();
  options.max_string_bytes = 5;
  EXPECT_TRUE(Parse("\x80\x02X\x05\x00\x00\x00"
                    "abcde."s,
                    options)
                  .ok());
  g = Parse(
      "\x80\x02X\x03\x00\x00\x00"
      "abcX\x03\x00\x00\x00"
      "abc\x86."s,
      options);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted);

  options = AllowAll();
  options.max_memo = 2;
  EXPECT_TRUE(Parse("\x80\x02Nq\x00q\x01q\x00."s, options).ok());  // re-PUT is not new
  g = Parse("\x80\x02N\x94\x94\x94."s, options);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted);

  options = AllowAll();
  options.max_stack_depth = 4;
  EXPECT_TRUE(Parse("\x80\x02NNNN0000N."s, options).ok());
  g = Parse("\x80\x02Nq\x00h\x00h\x00h\x00h\x00."s, options);  // GET pushes without nodes
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted);
  g = Parse("\x80\x02(((((N."s, options);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted);
}

}  // namespace
}  // namespace dcpp::format::pickle

namespace dcpp::format::pickle {
namespace {

TEST(NodeArenaTest, IndexesEveryNodeAcrossBlocksWithoutMovingIt) {
  NodeArena arena;
  std::vector<const Node*> addresses;
  for (size_t i = 0; i < 3 * NodeArena::kBlockNodes + 7; ++i) {
    Node& n = arena.emplace_back();
    n.i = static_cast<int64_t>(i);
    addresses.push_back(&n);
  }
  ASSERT_EQ(arena.size(), addresses.size());
  EXPECT_LT(arena.capacity() - arena.size(), NodeArena::kBlockNodes);
  for (size_t i = 0; i < addresses.size(); ++i) {
    ASSERT_EQ(&arena[i], addresses[i]) << i;
    ASSERT_EQ(arena[i].i, static_cast<int64_t>(i));
  }
  NodeArena small;
  small.emplace_back();
  EXPECT_EQ(small.capacity(), NodeArena::kFirstBlockNodes);
}

}  // namespace
}  // namespace dcpp::format::pickle

namespace dcpp::format::pickle {
namespace {

ParseOptions Permissive() {
  ParseOptions options;
  options.allow_global = [](std::string_view, std::string_view) { return true; };
  return options;
}

// PROTO 2, `body` repeated `times` times, then `tail`.
std::string Repeat(std::string_view head, std::string_view body, size_t times,
                   std::string_view tail) {
  std::string out(head);
  out.reserve(head.size() + body.size() * times + tail.size());
  for (size_t i = 0; i < times; ++i) out += body;
  out += tail;
  return out;
}

// The hostile file of the finding: one-byte EMPTY_LISTs, each a 160-byte
// node (2.8 GB from 17 MB before the cap). The default cap stops it at
// 64 x its size, and under an address-space limit it fails cleanly (the
// uncapped parse needs 640 MiB, more than the limit allows).
TEST(PickleMemoryCapTest, EmptyListBombStopsAtTheCap) {
  const std::string bomb = Repeat("\x80\x02", "]", size_t{4} << 20, ".");
  const size_t cap = Permissive().MemoryCap(bomb.size());
  EXPECT_EQ(cap, 64 * bomb.size() + (size_t{16} << 20));
  Result<Graph> g = Parse(bomb, Permissive());
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted);
  EXPECT_NE(g.status().message().find("bytes of memory"), std::string::npos)
      << g.status().ToString();
  if (!testing::kCanLimitAddressSpace) GTEST_SKIP() << "sanitizer build: no RLIMIT_AS";
  const auto child = testing::RunWithAddressSpaceLimit(uint64_t{512} << 20, [&] {
    Result<Graph> r = Parse(bomb, Permissive());
    return r.ok() ? 0 : static_cast<int>(r.status().code());
  });
  EXPECT_EQ(child.signal, 0);
  EXPECT_EQ(child.exit_code, static_cast<int>(StatusCode::kResourceExhausted));
}

// BINGET + APPENDS: every two-byte BINGET is a 4-byte stack entry, then a
// 4-byte item of the list; a list of a million references to itself. Counted (by
// capacity), so a tighter cap stops it, and the count is what it holds.
TEST(PickleMemoryCapTest, CountsStacksAndContainers) {
  const std::string dups = Repeat("\x80\x02]q\x00("s, "h\x00"s, size_t{1} << 20, "e.");
  Result<Graph> ok = Parse(dups, Permissive());
  ASSERT_TRUE(ok.ok()) << ok.status().ToString();
  EXPECT_EQ(ok->nodes[ok->root].items.size(), size_t{1} << 20);
  // Stack and items: at least 8 bytes per BINGET.
  EXPECT_GE(ok->memory_bytes, 8 * (size_t{1} << 20));
  EXPECT_LE(ok->memory_bytes, 24 * (size_t{1} << 20));
  ParseOptions tight = Permissive();
  tight.memory_per_input_byte = 2;
  tight.memory_base_bytes = 0;
  Result<Graph> g = Parse(dups, tight);
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), StatusCode::kResourceExhausted) << g.status().ToString();
}

// Memo GETs nest lists of references to the previous level: the graph
// stays linear in the input (sharing is not copied), and is counted.
TEST(PickleMemoryCapTest, SharedReferencesStayLinear) {
  // ] BINPUT 0, then per level: MARK, 8 x BINGET 0, LIST, BINPUT 0.
  const std::string nested =
      Repeat("\x80\x02]q\x00"s, "(h\x00h\x00h\x00h\x00h\x00h\x00h\x00h\x00lq\x00"s, 100000, ".");
  Result<Graph> g = Parse(nested, Permissive());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  EXPECT_LE(g->nodes.size(), 100001u);
  EXPECT_LE(g->memory_bytes, 64 * nested.size());
  ParseOptions tight = Permissive();
  tight.memory_per_input_byte = 2;
  tight.memory_base_bytes = 0;
  EXPECT_EQ(Parse(nested, tight).status().code(), StatusCode::kResourceExhausted);
}

// Long strings: their heap bytes are counted once, however often DUP or a
// memo GET refers to them.
TEST(PickleMemoryCapTest, CountsStringBytes) {
  const std::string text(1 << 20, 'x');
  std::string p = "\x80\x02X"s;
  const uint32_t n = static_cast<uint32_t>(text.size());
  p += {static_cast<char>(n), static_cast<char>(n >> 8), static_cast<char>(n >> 16),
        static_cast<char>(n >> 24)};
  p += text;
  p += Repeat("", "2", 1000, "0.");
  for (int k = 0; k < 3; ++k) p = p.substr(0, p.size() - 1) + p.substr(2);  // more strings
  Result<Graph> g = Parse(p, Permissive());
  ASSERT_TRUE(g.ok()) << g.status().ToString();
  size_t strings = 0;
  for (size_t i = 0; i < g->nodes.size(); ++i) strings += g->nodes[i].s.size();
  EXPECT_GE(g->memory_bytes, strings);
  EXPECT_LE(g->memory_bytes, strings + (size_t{1} << 20));
}

}  // namespace
}  // namespace dcpp::format::pickle
