// Planning over the compact metadata against the planner over Metadata
// (load_planner.cc), on randomized shardings, requests and damage: the same
// plans and the same errors.
#include "dcpp/plan/compact_load_planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace dcpp::plan {
namespace {

using format::CompactMetadata;

// A tensor of random shape (0-3 dims, some of size 0) cut into a random grid
// of chunks, in a random order, stored in a few files with some transforms;
// sometimes damaged (a chunk dropped, doubled or grown) so it no longer tiles.
EntryMeta RandomEntry(std::mt19937& rng, const std::string& fqn) {
  auto pick = [&](int n) { return static_cast<int64_t>(rng() % static_cast<unsigned>(n)); };
  EntryMeta e;
  e.fqn = fqn;
  e.properties.dtype = pick(2) ? DType::kFloat32 : DType::kBFloat16;
  const int nd = static_cast<int>(pick(4));
  std::vector<std::vector<int64_t>> cuts(nd);
  for (int d = 0; d < nd; ++d) {
    const int64_t n = pick(8) == 0 ? 0 : 1 + pick(9);
    e.size.push_back(n);
    cuts[d] = {0, n};
    for (int k = pick(4); k > 0 && n > 1; --k) cuts[d].push_back(1 + pick(static_cast<int>(n) - 1));
    std::sort(cuts[d].begin(), cuts[d].end());
    // (a dimension of size 0 keeps its one empty cell)
    if (n > 0) cuts[d].erase(std::unique(cuts[d].begin(), cuts[d].end()), cuts[d].end());
  }
  // Every cell of the grid.
  std::vector<size_t> at(nd, 0);
  while (true) {
    ChunkMeta c;
    for (int d = 0; d < nd; ++d) {
      c.offsets.push_back(cuts[d][at[d]]);
      c.sizes.push_back(cuts[d][at[d] + 1] - cuts[d][at[d]]);
    }
    const std::vector<std::string> transforms =
        pick(4) == 0 ? std::vector<std::string>{"stream.zstd/1"} : std::vector<std::string>{};
    c.storage = {"__" + std::to_string(pick(3)) + "_0.distcp", static_cast<uint64_t>(pick(1000)),
                 static_cast<uint64_t>(1 + pick(1000)), transforms};
    e.chunks.push_back(std::move(c));
    int d = nd - 1;
    while (d >= 0 && ++at[d] + 1 == cuts[d].size()) at[d--] = 0;
    if (d < 0) break;
  }
  std::shuffle(e.chunks.begin(), e.chunks.end(), rng);
  switch (pick(12)) {
    case 0:
      if (e.chunks.size() > 1) e.chunks.pop_back();  // a gap (unless all empty)
      break;
    case 1:
      e.chunks.push_back(e.chunks.front());  // an overlap
      break;
    case 2:
      if (nd > 0) e.chunks.back().sizes[0] += 1;  // leaves the tensor
      break;
    default:
      break;
  }
  return e;
}

Box RandomBox(std::mt19937& rng, const Shape& size) {
  auto pick = [&](int64_t n) { return n <= 0 ? 0 : static_cast<int64_t>(rng() % (n + 1)); };
  Box b;
  for (int64_t n : size) {
    const int64_t lo = pick(n);
    b.offsets.push_back(lo);
    b.sizes.push_back(pick(n - lo));
  }
  switch (rng() % 16) {
    case 0:
      if (!b.sizes.empty()) b.sizes[0] += 2;  // beyond the tensor
      break;
    case 1:
      b.offsets.push_back(0);  // wrong rank
      b.sizes.push_back(1);
      break;
    case 2:
      if (!b.sizes.empty()) b.sizes.back() = -1;
      break;
    default:
      break;
  }
  return b;
}

std::string Describe(const Status& s) { return s.ToString(); }

TEST(CompactLoadPlannerTest, SamePlansAndErrorsAsThePlannerOverMetadata) {
  std::mt19937 rng(2026);
  int plans = 0, errors = 0;
  for (int trial = 0; trial < 400; ++trial) {
    Metadata md;
    const int entries = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < entries; ++k) md.entries.push_back(RandomEntry(rng, "t" + std::to_string(k)));
    EntryMeta value;
    value.fqn = "step";
    value.kind = EntryMeta::Kind::kBytes;
    value.storage = {"__0_0.distcp", 5, 6, {}};
    md.entries.push_back(value);
    const CompactMetadata compact = format::Compact(Metadata(md));

    std::vector<TensorRequest> old_requests;
    std::vector<CompactRequest> requests;
    for (int k = static_cast<int>(rng() % 6); k > 0; --k) {
      const size_t e = rng() % static_cast<unsigned>(entries);
      Box b = RandomBox(rng, md.entries[e].size);
      old_requests.push_back({&md.entries[e], b});
      requests.push_back({e, b});
    }
    const bool wrong_entry = rng() % 20 == 0;  // the bytes entry
    if (wrong_entry) {
      old_requests.push_back({&md.entries.back(), {}});
      requests.push_back({md.entries.size() - 1, {}});
    }
    Result<TensorReadPlan> old = PlanTensorReads(old_requests);
    Result<CompactReadPlan> mine = PlanCompactReads(compact, requests);
    const size_t values[] = {md.entries.size() - 1};
    Result<PrunedLoad> pruned = PlanLoad(compact, requests, values);
    ASSERT_EQ(old.ok(), mine.ok()) << "trial " << trial << ": " << Describe(old.status()) << " | "
                                   << Describe(mine.status());
    ASSERT_EQ(old.ok(), pruned.ok()) << "trial " << trial;
    if (!old.ok()) {
      ++errors;
      EXPECT_EQ(Describe(old.status()), Describe(mine.status())) << "trial " << trial;
      EXPECT_EQ(Describe(old.status()), Describe(pruned.status())) << "trial " << trial;
      continue;
    }
    ++plans;
    ASSERT_EQ(old->reads.size(), mine->reads.size()) << "trial " << trial;
    ASSERT_EQ(old->reads.size(), pruned->plan.reads.size()) << "trial " << trial;
    size_t kept_chunks = 0;
    for (const EntryMeta& e : pruned->metadata->entries) kept_chunks += e.chunks.size();
    EXPECT_EQ(kept_chunks, old->reads.size()) << "only the chunks read are kept";
    for (size_t i = 0; i < old->reads.size(); ++i) {
      const ChunkRead& o = old->reads[i];
      const CompactChunkRead& m = mine->reads[i];
      const ChunkRead& p = pruned->plan.reads[i];
      EXPECT_EQ(&md.entries[m.entry], o.entry);
      EXPECT_EQ(m.chunk, o.chunk);
      EXPECT_EQ(p.entry->fqn, o.entry->fqn);
      EXPECT_EQ(p.entry->chunks[p.chunk], o.entry->chunks[o.chunk]);
      ASSERT_EQ(o.pieces.size(), m.pieces.size());
      ASSERT_EQ(o.pieces.size(), p.pieces.size());
      for (size_t k = 0; k < o.pieces.size(); ++k) {
        EXPECT_EQ(o.pieces[k].request, m.pieces[k].request);
        EXPECT_EQ(o.pieces[k].box.offsets, m.pieces[k].box.offsets);
        EXPECT_EQ(o.pieces[k].box.sizes, m.pieces[k].box.sizes);
        EXPECT_EQ(o.pieces[k].box.offsets, p.pieces[k].box.offsets);
        EXPECT_EQ(o.pieces[k].box.sizes, p.pieces[k].box.sizes);
      }
    }
    ASSERT_EQ(pruned->requests.size(), old_requests.size());
    for (size_t r = 0; r < old_requests.size(); ++r) {
      EXPECT_EQ(pruned->requests[r].entry->fqn, old_requests[r].entry->fqn);
      EXPECT_EQ(pruned->requests[r].entry->size, old_requests[r].entry->size);
      EXPECT_EQ(pruned->requests[r].entry->properties, old_requests[r].entry->properties);
    }
    ASSERT_EQ(pruned->values.size(), 1u);
    EXPECT_EQ(*pruned->values[0], md.entries.back());
    EXPECT_EQ(pruned->metadata->storage_meta, md.storage_meta);
    // The checks that follow planning see the same files.
    const EntryMeta* old_values[] = {&md.entries.back()};
    EXPECT_EQ(DataFilesRead(*old, old_values),
              DataFilesRead(pruned->plan, pruned->values));
  }
  // Both outcomes are exercised.
  EXPECT_GT(plans, 100);
  EXPECT_GT(errors, 40);
}

TEST(CompactLoadPlannerTest, RejectsIndicesOutOfRange) {
  Metadata md;
  md.entries.push_back(EntryMeta{.fqn = "v", .kind = EntryMeta::Kind::kBytes});
  const CompactMetadata c = format::Compact(std::move(md));
  const CompactRequest bad[] = {{5, {}}};
  EXPECT_EQ(PlanCompactReads(c, bad).status().code(), StatusCode::kInvalidArgument);
  const size_t values[] = {3};
  EXPECT_EQ(PlanLoad(c, {}, values).status().code(), StatusCode::kInvalidArgument);
  const size_t ok[] = {0};
  auto planned = PlanLoad(c, {}, ok);
  ASSERT_TRUE(planned.ok()) << planned.status().ToString();
  EXPECT_EQ(planned->values[0]->fqn, "v");
}

}  // namespace
}  // namespace dcpp::plan
