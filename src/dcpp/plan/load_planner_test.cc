#include "dcpp/plan/load_planner.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace dcpp::plan {
namespace {

// A tensor entry of `global` shape saved as `chunks` (offsets, sizes), each
// stored untransformed in "f" at consecutive 1000-byte slots.
EntryMeta Entry(std::string fqn, Shape global, std::vector<std::pair<Shape, Shape>> chunks,
                DType dtype = DType::kFloat32) {
  EntryMeta e;
  e.fqn = std::move(fqn);
  e.size = std::move(global);
  e.properties.dtype = dtype;
  uint64_t offset = 0;
  for (auto& [o, s] : chunks) {
    ChunkMeta c;
    c.offsets = o;
    c.sizes = s;
    c.storage = {"f", offset, 1000, {}};
    offset += 1000;
    e.chunks.push_back(std::move(c));
  }
  return e;
}

// A plan as text: one "chunk <i>: <request>@<offsets>+<sizes> ..." per read.
std::string Describe(const TensorReadPlan& p) {
  std::string out;
  for (const ChunkRead& r : p.reads) {
    out += r.entry->fqn + "#" + std::to_string(r.chunk) + ":";
    for (const auto& piece : r.pieces)
      out += " " + std::to_string(piece.request) + "@" + ShapeToString(piece.box.offsets) + "+" +
             ShapeToString(piece.box.sizes);
    out += "\n";
  }
  return out;
}

struct PlanCase {
  const char* name;
  Shape global;
  std::vector<std::pair<Shape, Shape>> chunks;
  std::vector<Box> requests;
  std::string expected;  // Describe(plan), or the error's code name
};

TEST(LoadPlannerTest, Table) {
  const std::vector<PlanCase> cases = {
      {"whole tensor, one chunk", {4, 6}, {{{0, 0}, {4, 6}}}, {{{0, 0}, {4, 6}}},
       "w#0: 0@[0, 0]+[4, 6]\n"},
      {"row shards to whole", {4, 6}, {{{0, 0}, {2, 6}}, {{2, 0}, {2, 6}}}, {{{0, 0}, {4, 6}}},
       "w#0: 0@[0, 0]+[2, 6]\nw#1: 0@[2, 0]+[2, 6]\n"},
      {"row shards to column shards (each chunk read once, feeding both)",
       {4, 6},
       {{{0, 0}, {2, 6}}, {{2, 0}, {2, 6}}},
       {{{0, 0}, {4, 3}}, {{0, 3}, {4, 3}}},
       "w#0: 0@[0, 0]+[2, 3] 1@[0, 3]+[2, 3]\nw#1: 0@[2, 0]+[2, 3] 1@[2, 3]+[2, 3]\n"},
      {"a request inside one chunk skips the others", {4, 6},
       {{{0, 0}, {2, 6}}, {{2, 0}, {2, 6}}}, {{{3, 1}, {1, 2}}}, "w#1: 0@[3, 1]+[1, 2]\n"},
      {"0-d tensor", {}, {{{}, {}}}, {{{}, {}}}, "w#0: 0@[]+[]\n"},
      {"zero-size request reads nothing", {0, 5}, {{{0, 0}, {0, 5}}}, {{{0, 0}, {0, 5}}}, ""},
      {"chunks leave a gap", {4, 6}, {{{0, 0}, {2, 6}}}, {{{0, 0}, {4, 6}}}, "DATA_LOSS"},
      {"overlapping chunks (sum of elements right, one row twice, one missing)",
       {4, 2},
       {{{0, 0}, {2, 2}}, {{1, 0}, {2, 2}}},
       {{{0, 0}, {3, 2}}},
       "DATA_LOSS"},
      {"declared size larger than the chunks (an edited .metadata)", {1 << 30, 4},
       {{{0, 0}, {25, 4}}}, {{{0, 0}, {1 << 30, 4}}}, "DATA_LOSS"},
      {"chunk outside the tensor", {4}, {{{2}, {4}}}, {{{0}, {4}}}, "DATA_LOSS"},
      {"chunk of another rank", {4}, {{{0, 0}, {4, 1}}}, {{{0}, {4}}}, "DATA_LOSS"},
      {"negative chunk size", {4}, {{{0}, {4}}, {{4}, {-2}}}, {{{0}, {4}}}, "DATA_LOSS"},
      {"negative declared size", {-4}, {}, {{{0}, {0}}}, "DATA_LOSS"},
      {"request leaves the tensor", {4}, {{{0}, {4}}}, {{{2}, {4}}}, "DATA_LOSS"},
      {"request of the wrong rank", {4}, {{{0}, {4}}}, {{{0, 0}, {4, 1}}}, "INVALID_ARGUMENT"},
  };
  for (const PlanCase& c : cases) {
    SCOPED_TRACE(c.name);
    const EntryMeta e = Entry("w", c.global, c.chunks);
    std::vector<TensorRequest> requests;
    for (const Box& b : c.requests) requests.push_back({&e, b});
    auto plan = PlanTensorReads(requests);
    if (plan.ok()) {
      EXPECT_EQ(Describe(*plan), c.expected);
    } else {
      EXPECT_EQ(StatusCodeName(plan.status().code()), c.expected) << plan.status().ToString();
      EXPECT_NE(plan.status().message().find("'w'"), std::string::npos)
          << "the error names the FQN: " << plan.status().ToString();
    }
  }
}

TEST(LoadPlannerTest, GapMessageCountsElements) {
  const EntryMeta e = Entry("w", {4}, {{{0}, {4}}});
  const std::vector<TensorRequest> r = {{&e, {{2}, {4}}}};
  auto plan = PlanTensorReads(r);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("cover 2 of the 4 elements requested"),
            std::string::npos)
      << plan.status().ToString();
}

TEST(LoadPlannerTest, SeveralEntriesKeepRequestOrder) {
  const EntryMeta a = Entry("a", {2}, {{{0}, {2}}});
  const EntryMeta b = Entry("b", {4}, {{{0}, {2}}, {{2}, {2}}});
  const std::vector<TensorRequest> r = {{&b, {{1}, {2}}}, {&a, {{0}, {2}}}, {&b, {{0}, {4}}}};
  auto plan = PlanTensorReads(r);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  EXPECT_EQ(Describe(*plan),
            "b#0: 0@[1]+[1] 2@[0]+[2]\n"
            "b#1: 0@[2]+[1] 2@[2]+[2]\n"
            "a#0: 1@[0]+[2]\n");
  EXPECT_FALSE(PlanTensorReads(std::vector<TensorRequest>{{nullptr, {{0}, {1}}}}).ok());
}

// Every request box of a successful plan is covered exactly once by its
// pieces: the property that lets the engine skip zero-filling.
TEST(LoadPlannerTest, PiecesCoverEachRequestExactlyOnce) {
  // A 2-D tensor saved as an uneven 3 x 2 grid, loaded as every box of a
  // 4 x 3 grid and a few odd boxes.
  const Shape global = {10, 7};
  std::vector<std::pair<Shape, Shape>> chunks;
  for (int64_t r : {0, 3, 8})
    for (int64_t c : {0, 5})
      chunks.push_back({{r, c}, {(r == 0 ? 3 : r == 3 ? 5 : 2), (c == 0 ? 5 : 2)}});
  const EntryMeta e = Entry("g", global, chunks);
  std::vector<TensorRequest> requests;
  for (int64_t r = 0; r < 10; r += 3)
    for (int64_t c = 0; c < 7; c += 3)
      requests.push_back(
          {&e, {{r, c}, {std::min<int64_t>(3, 10 - r), std::min<int64_t>(3, 7 - c)}}});
  requests.push_back({&e, {{1, 1}, {8, 5}}});
  requests.push_back({&e, {{0, 0}, {10, 7}}});
  auto plan = PlanTensorReads(requests);
  ASSERT_TRUE(plan.ok()) << plan.status().ToString();
  std::vector<std::vector<int>> hits(requests.size(), std::vector<int>(70, 0));
  for (const ChunkRead& read : plan->reads) {
    const ChunkMeta& c = read.entry->chunks[read.chunk];
    for (const auto& piece : read.pieces) {
      const Box& req = requests[piece.request].box;
      for (int64_t i = 0; i < piece.box.sizes[0]; ++i)
        for (int64_t j = 0; j < piece.box.sizes[1]; ++j) {
          const int64_t gi = piece.box.offsets[0] + i, gj = piece.box.offsets[1] + j;
          ASSERT_TRUE(gi >= c.offsets[0] && gi < c.offsets[0] + c.sizes[0]);
          ASSERT_TRUE(gi >= req.offsets[0] && gi < req.offsets[0] + req.sizes[0]);
          ASSERT_TRUE(gj >= req.offsets[1] && gj < req.offsets[1] + req.sizes[1]);
          hits[piece.request][gi * 7 + gj]++;
        }
    }
  }
  for (size_t r = 0; r < requests.size(); ++r) {
    const Box& req = requests[r].box;
    for (int64_t gi = 0; gi < 10; ++gi)
      for (int64_t gj = 0; gj < 7; ++gj) {
        const bool inside = gi >= req.offsets[0] && gi < req.offsets[0] + req.sizes[0] &&
                            gj >= req.offsets[1] && gj < req.offsets[1] + req.sizes[1];
        EXPECT_EQ(hits[r][gi * 7 + gj], inside ? 1 : 0) << "request " << r << " at " << gi << ","
                                                        << gj;
      }
  }
}

// CheckStoredSizes: what .metadata declares against what is stored.
struct SizeCase {
  const char* name;
  Shape chunk_sizes;                // one chunk covering the tensor, float32
  StorageInfo storage;              // of the chunk
  uint64_t file_size;
  const char* expected;             // "OK" or the error's code name
};

TEST(LoadPlannerTest, StoredSizesTable) {
  const std::vector<std::string> zstd = {"stream.zstd/1"};
  const std::vector<SizeCase> cases = {
      {"fits", {100}, {"f", 0, 1200, {}}, 1200, "OK"},
      {"exactly the tensor bytes", {100}, {"f", 10, 400, {}}, 410, "OK"},
      {"archive shorter than the tensor bytes", {100}, {"f", 0, 399, {}}, 1000, "DATA_LOSS"},
      {"edited to claim 16 GiB over 100 elements", {int64_t{1} << 32}, {"f", 0, 1200, {}}, 1200,
       "DATA_LOSS"},
      {"range past the end of the file", {100}, {"f", 1000, 1200, {}}, 2000, "DATA_LOSS"},
      {"offset past the end of the file", {100}, {"f", 5000, 400, {}}, 2000, "DATA_LOSS"},
      {"offset + length overflows", {100}, {"f", UINT64_MAX - 10, 400, {}}, 2000, "DATA_LOSS"},
      {"transformed within the bound", {250}, {"f", 0, 100, zstd}, 100, "OK"},
      {"transformed beyond the bound", {1 << 20}, {"f", 0, 100, zstd}, 100, "DATA_LOSS"},
      {"unknown file", {100}, {"g", 0, 1200, {}}, 1200, "INTERNAL"},
  };
  for (const SizeCase& c : cases) {
    SCOPED_TRACE(c.name);
    EntryMeta e = Entry("w", c.chunk_sizes, {{Shape(c.chunk_sizes.size(), 0), c.chunk_sizes}});
    e.chunks[0].storage = c.storage;
    const std::vector<TensorRequest> r = {{&e, {Shape(c.chunk_sizes.size(), 0), c.chunk_sizes}}};
    auto plan = PlanTensorReads(r);
    ASSERT_TRUE(plan.ok()) << plan.status().ToString();
    // A bound of 10x for the test's transform.
    auto bound = [](const StorageInfo& s) -> Result<uint64_t> { return s.length * 10; };
    Status s = CheckStoredSizes(*plan, {}, FileSizes{{"f", c.file_size}}, bound);
    EXPECT_EQ(s.ok() ? std::string("OK") : std::string(StatusCodeName(s.code())), c.expected)
        << s.ToString();
    if (!s.ok() && s.code() == StatusCode::kDataLoss) {
      EXPECT_NE(s.message().find("'w'"), std::string::npos) << s.ToString();
      EXPECT_NE(s.message().find("'f'"), std::string::npos) << s.ToString();
    }
  }
}

TEST(LoadPlannerTest, StoredSizesOfValuesAndFileList) {
  EntryMeta v;
  v.fqn = "step";
  v.kind = EntryMeta::Kind::kBytes;
  v.storage = {"b", 100, 50, {}};
  const EntryMeta t = Entry("w", {10}, {{{0}, {10}}});
  const std::vector<TensorRequest> r = {{&t, {{0}, {10}}}};
  auto plan = PlanTensorReads(r);
  ASSERT_TRUE(plan.ok());
  const EntryMeta* values[] = {&v};
  EXPECT_EQ(DataFilesRead(*plan, values), (std::vector<std::string>{"b", "f"}));
  EXPECT_TRUE(CheckStoredSizes(*plan, values, {{"b", 150}, {"f", 1000}}, nullptr).ok());
  Status s = CheckStoredSizes(*plan, values, {{"b", 149}, {"f", 1000}}, nullptr);
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("'step'"), std::string::npos) << s.ToString();
  // A transform bound that fails is reported with the item.
  EntryMeta z = Entry("z", {10}, {{{0}, {10}}});
  z.chunks[0].storage.transform_descriptors = {"nope/1"};
  const std::vector<TensorRequest> rz = {{&z, {{0}, {10}}}};
  auto pz = PlanTensorReads(rz);
  ASSERT_TRUE(pz.ok());
  s = CheckStoredSizes(*pz, {}, {{"f", 1000}}, [](const StorageInfo&) -> Result<uint64_t> {
    return InvalidArgumentError("unknown stream transform 'nope/1'");
  });
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("'z'"), std::string::npos) << s.ToString();
}

}  // namespace
}  // namespace dcpp::plan
