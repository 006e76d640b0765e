#include "dcpp/transform/transform.h"

#include <gtest/gtest.h>
#include <zstd.h>

#include <chrono>
#include <cstring>
#include <random>
#include <thread>

#include "dcpp/transform/byte_shuffle.h"
#include "dcpp/transform/zstd_stream.h"

namespace dcpp::transform {
namespace {

const std::vector<std::string> kZstd = {"stream.zstd/1"};
const std::vector<std::string> kShuffle = {"dcpp.byteshuffle/1"};
const std::vector<std::string> kShuffleThenZstd = {"dcpp.byteshuffle/1", "stream.zstd/1"};

std::span<const uint8_t> Bytes(const std::string& s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  return s;
}

// Mildly compressible text-like bytes.
std::string TextBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  static const char* kWords[] = {"tensor ", "shard ", "weight ", "bias ", "layer.", "0", "1 "};
  std::string s;
  while (s.size() < n) s += kWords[rng() % 7];
  s.resize(n);
  return s;
}

// Little-endian bf16 values of normal(0, 0.02) floats, rounded to nearest
// even: what the weights of a trained model look like.
std::string Bf16Weights(size_t count, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::string s(count * 2, '\0');
  for (size_t i = 0; i < count; ++i) {
    const float f = normal(rng);
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const uint32_t bf = (u + 0x7FFF + ((u >> 16) & 1)) >> 16;
    s[2 * i] = static_cast<char>(bf & 0xFF);
    s[2 * i + 1] = static_cast<char>(bf >> 8);
  }
  return s;
}

// Encodes through NewEncoder, writing `data` in pieces of `piece` bytes.
std::string EncodeInPieces(const std::vector<std::string>& descriptors, EncodeOptions options,
                           const std::string& data, size_t piece,
                           std::vector<std::string>* recorded = nullptr) {
  std::string out;
  auto encoder = NewEncoder(
      descriptors, options,
      [&out](std::span<const uint8_t> b) {
        out.append(reinterpret_cast<const char*>(b.data()), b.size());
        return Status();
      },
      recorded);
  EXPECT_TRUE(encoder.ok()) << encoder.status().ToString();
  if (!encoder.ok()) return "";
  for (size_t pos = 0; pos < data.size(); pos += piece) {
    const size_t n = std::min(piece, data.size() - pos);
    Status s = (*encoder)->Write(Bytes(data).subspan(pos, n));
    EXPECT_TRUE(s.ok()) << s.ToString();
  }
  Status s = (*encoder)->Finish();
  EXPECT_TRUE(s.ok()) << s.ToString();
  return out;
}

std::string MustEncode(const std::vector<std::string>& descriptors, const std::string& data,
                       EncodeOptions options = {}) {
  auto r = EncodeAll(descriptors, options, Bytes(data), nullptr);
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  return r.ok() ? *r : "";
}

// Number of zstd frames in `s`, or -1 if it is not a sequence of whole frames.
int CountFrames(const std::string& s) {
  size_t pos = 0;
  int frames = 0;
  while (pos < s.size()) {
    const size_t n = ZSTD_findFrameCompressedSize(s.data() + pos, s.size() - pos);
    if (ZSTD_isError(n)) return -1;
    pos += n;
    ++frames;
  }
  return frames;
}

// Content_Checksum_Flag: bit 2 of the frame header descriptor, the byte
// after the 4-byte magic number (RFC 8878, section 3.1.1.1.1).
bool HasChecksum(const std::string& frame) {
  return frame.size() > 4 && (static_cast<uint8_t>(frame[4]) & 0x04) != 0;
}

// ---------------------------------------------------------------- descriptors

TEST(TransformDescriptors, KnownInStableOrder) {
  EXPECT_EQ(KnownDescriptors(), (std::vector<std::string>{"stream.zstd/1", "dcpp.byteshuffle/1"}));
}

TEST(TransformDescriptors, UnknownIsInvalidArgumentListingKnown) {
  std::vector<std::string> recorded;
  auto e = NewEncoder(
      {"x/1"}, {}, [](auto) { return Status(); }, &recorded);
  ASSERT_FALSE(e.ok());
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(e.status().message(),
            "unknown stream transform 'x/1' (known: stream.zstd/1, dcpp.byteshuffle/1)");
  auto d = DecodeAll({"x/1"}, Bytes("abc"), 100);
  ASSERT_FALSE(d.ok());
  EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument);
  EXPECT_EQ(d.status().message(),
            "unknown stream transform 'x/1' (known: stream.zstd/1, dcpp.byteshuffle/1)");
  // torch looks up the whole name before '/', local domain included.
  EXPECT_EQ(DecodeAll({"stream.zstd@site/1"}, Bytes("abc"), 100).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(TransformDescriptors, MalformedIsInvalidArgument) {
  for (const char* bad : {"", "stream.zstd", "/1", "stream.zstd/", "/"}) {
    auto e = NewEncoder(
        {bad}, {}, [](auto) { return Status(); }, nullptr);
    ASSERT_FALSE(e.ok()) << bad;
    EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(e.status().message().find("malformed"), std::string::npos) << e.status().ToString();
    auto d = DecodeAll({bad}, Bytes("abc"), 100);
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << bad;
  }
}

TEST(TransformDescriptors, ReadsMinorVersionsLikeTorchWritesOnlyOne) {
  const std::string data = TextBytes(1000, 1);
  const std::string z = MustEncode(kZstd, data);
  for (const char* ok : {"stream.zstd/1", "stream.zstd/1.0", "stream.zstd/1.7.2"}) {
    auto d = DecodeAll({ok}, Bytes(z), data.size());
    ASSERT_TRUE(d.ok()) << ok << ": " << d.status().ToString();
    EXPECT_EQ(*d, data);
  }
  for (const char* bad : {"stream.zstd/2", "stream.zstd/10", "stream.zstd/0.1", "stream.zstd/v1"}) {
    auto d = DecodeAll({bad}, Bytes(z), data.size());
    EXPECT_EQ(d.status().code(), StatusCode::kInvalidArgument) << bad;
    EXPECT_NE(d.status().message().find("stream.zstd/1, dcpp.byteshuffle/1"), std::string::npos);
  }
  auto e = NewEncoder(
      {"stream.zstd/1.0"}, {}, [](auto) { return Status(); }, nullptr);
  EXPECT_EQ(e.status().code(), StatusCode::kInvalidArgument);
}

TEST(TransformDescriptors, BadOptionsAreInvalidArgument) {
  auto sink = [](auto) { return Status(); };
  EncodeOptions o;
  o.zstd_level = ZSTD_maxCLevel() + 1;
  EXPECT_EQ(NewEncoder(kZstd, o, sink, nullptr).status().code(), StatusCode::kInvalidArgument);
  o = {};
  o.zstd_workers = -1;
  EXPECT_EQ(NewEncoder(kZstd, o, sink, nullptr).status().code(), StatusCode::kInvalidArgument);
  for (int w : {0, 17, -2}) {
    o = {};
    o.element_size = w;
    EXPECT_EQ(NewEncoder(kShuffle, o, sink, nullptr).status().code(), StatusCode::kInvalidArgument)
        << w;
  }
  EXPECT_EQ(NewEncoder(kZstd, {}, nullptr, nullptr).status().code(), StatusCode::kInvalidArgument);
}

// --------------------------------------------------------------------- chains

TEST(TransformChain, EmptyListPassesBytesThrough) {
  const std::string data = RandomBytes(5000, 2);
  std::vector<std::string> recorded = {"stale"};
  EXPECT_EQ(EncodeInPieces({}, {}, data, 777, &recorded), data);
  EXPECT_TRUE(recorded.empty());
  auto d = DecodeAll({}, Bytes(data), data.size());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(*d, data);
  EXPECT_EQ(DecodeAll({}, Bytes(data), data.size() - 1).status().code(), StatusCode::kDataLoss);
}

TEST(TransformChain, RecordsReverseOrderAndAppliesInListedOrder) {
  EncodeOptions o;
  o.element_size = 2;
  const std::string data = Bf16Weights(100000, 3);
  std::vector<std::string> recorded;
  auto stored = EncodeAll(kShuffleThenZstd, o, Bytes(data), &recorded);
  ASSERT_TRUE(stored.ok()) << stored.status().ToString();
  EXPECT_EQ(recorded, (std::vector<std::string>{"stream.zstd/1", "dcpp.byteshuffle/1"}));
  // Applied byte shuffle first: the stored bytes are one zstd frame whose
  // content is a byte-shuffle stream (header: width 2, default block).
  ASSERT_EQ(CountFrames(*stored), 1);
  std::string inner(data.size() + 2, '\0');
  const size_t n = ZSTD_decompress(inner.data(), inner.size(), stored->data(), stored->size());
  ASSERT_FALSE(ZSTD_isError(n)) << ZSTD_getErrorName(n);
  ASSERT_EQ(n, data.size() + 2);
  EXPECT_EQ(static_cast<uint8_t>(inner[0]), 2);
  EXPECT_EQ(static_cast<uint8_t>(inner[1]), internal::kShuffleDefaultBlockLog2);

  // The exact item size is enough although the intermediate is larger.
  auto back = DecodeAll(recorded, Bytes(*stored), data.size());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, data);
  EXPECT_EQ(DecodeAll(recorded, Bytes(*stored), data.size() - 1).status().code(),
            StatusCode::kDataLoss);
  // Undoing in the wrong order fails cleanly.
  auto wrong = DecodeAll(kShuffleThenZstd, Bytes(*stored), data.size());
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(wrong.status().message().find("dcpp.byteshuffle/1"), std::string::npos);
}

TEST(TransformChain, ZstdThenShuffleRoundTrips) {
  EncodeOptions o;
  o.element_size = 4;
  const std::string data = TextBytes(300001, 4);
  std::vector<std::string> recorded;
  const std::string stored =
      EncodeInPieces({"stream.zstd/1", "dcpp.byteshuffle/1"}, o, data, 4093, &recorded);
  EXPECT_EQ(recorded, (std::vector<std::string>{"dcpp.byteshuffle/1", "stream.zstd/1"}));
  EXPECT_EQ(static_cast<uint8_t>(stored[0]), 4);
  auto back = DecodeAll(recorded, Bytes(stored), data.size());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, data);
}

TEST(TransformChain, SizeHintMismatchIsAnErrorNotABadFrame) {
  for (const auto& chain : {std::vector<std::string>{}, kZstd, kShuffleThenZstd}) {
    EncodeOptions o;
    o.size_hint = 10;
    std::string out;
    auto sink = [&out](std::span<const uint8_t> b) {
      out.append(reinterpret_cast<const char*>(b.data()), b.size());
      return Status();
    };
    // Too little.
    auto e = NewEncoder(chain, o, sink, nullptr);
    ASSERT_TRUE(e.ok());
    ASSERT_TRUE((*e)->Write(Bytes("12345")).ok());
    Status s = (*e)->Finish();
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
    // Too much.
    e = NewEncoder(chain, o, sink, nullptr);
    ASSERT_TRUE(e.ok());
    ASSERT_TRUE((*e)->Write(Bytes("1234567890")).ok());
    EXPECT_EQ((*e)->Write(Bytes("1")).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ((*e)->Finish().code(), StatusCode::kInvalidArgument);  // unusable now
  }
}

TEST(TransformChain, SinkErrorStopsTheEncoder) {
  int calls = 0;
  auto sink = [&calls](std::span<const uint8_t>) {
    ++calls;
    return ResourceExhaustedError("disk full");
  };
  const std::string data = RandomBytes(3 << 20, 5);
  auto e = NewEncoder(kZstd, {}, sink, nullptr);
  ASSERT_TRUE(e.ok());
  Status s = (*e)->Write(Bytes(data));
  if (s.ok()) s = (*e)->Finish();
  EXPECT_EQ(s, ResourceExhaustedError("disk full"));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ((*e)->Write(Bytes("x")).code(), StatusCode::kInvalidArgument);
  EXPECT_EQ((*e)->Finish().code(), StatusCode::kInvalidArgument);
}

TEST(TransformChain, StreamingDecoderTakesAnyPiecesAndEmitsBoundedOnes) {
  EncodeOptions o;
  o.element_size = 2;
  const std::string data = Bf16Weights(3 << 20, 11);  // 6 MiB decoded
  for (const auto& chain : {kZstd, kShuffleThenZstd}) {
    std::vector<std::string> recorded;
    auto stored = EncodeAll(chain, o, Bytes(data), &recorded);
    ASSERT_TRUE(stored.ok());
    for (size_t piece : {size_t{1}, size_t{4093}, size_t{1} << 22}) {
      if (piece == 1 && chain.size() > 1) continue;  // a byte at a time: once is enough
      std::string back;
      size_t largest = 0;
      auto d = NewDecoder(recorded, data.size(), [&](std::span<const uint8_t> b) {
        largest = std::max(largest, b.size());
        back.append(reinterpret_cast<const char*>(b.data()), b.size());
        return Status();
      });
      ASSERT_TRUE(d.ok()) << d.status().ToString();
      for (size_t pos = 0; pos < stored->size(); pos += piece)
        ASSERT_TRUE((*d)->Write(Bytes(*stored).subspan(pos, std::min(piece, stored->size() - pos)))
                        .ok());
      ASSERT_TRUE((*d)->Finish().ok());
      EXPECT_EQ(back, data) << chain.size() << " transforms, pieces of " << piece;
      EXPECT_LE(largest, size_t{2} << 20);  // bounded output pieces, whatever the input
    }
    // Cut short: the end of the stream is where truncation shows.
    auto d = NewDecoder(recorded, data.size(), [](std::span<const uint8_t>) { return Status(); });
    ASSERT_TRUE(d.ok());
    ASSERT_TRUE((*d)->Write(Bytes(*stored).first(stored->size() / 2)).ok());
    Status s = (*d)->Finish();
    EXPECT_EQ(s.code(), StatusCode::kDataLoss);
    EXPECT_NE(s.message().find("truncated"), std::string::npos) << s.ToString();
    // The sink's own error comes back unchanged, without a transform's name.
    auto failing = NewDecoder(recorded, data.size(), [](std::span<const uint8_t>) {
      return DataLossError("the archive is odd");
    });
    ASSERT_TRUE(failing.ok());
    s = (*failing)->Write(Bytes(*stored));
    if (s.ok()) s = (*failing)->Finish();
    EXPECT_EQ(s, DataLossError("the archive is odd"));
  }
  EXPECT_EQ(NewDecoder({"stream.nope/1"}, 1, [](auto) { return Status(); }).status().code(),
            StatusCode::kInvalidArgument);
}

TEST(TransformChain, ErrorsNameTheStageTheyStartIn) {
  // Applied zstd, then shuffle: undone shuffle (stage 0), then zstd (stage
  // 1). Cut at a shuffle block boundary, the shuffle stage decodes and
  // finishes fine and zstd, finishing next, finds its frame truncated: the
  // error names zstd, not the stage before it.
  EncodeOptions o;
  o.element_size = 2;
  const std::string data = Bf16Weights(1 << 20, 12);
  std::vector<std::string> recorded;
  auto stored = EncodeAll({"stream.zstd/1", "dcpp.byteshuffle/1"}, o, Bytes(data), &recorded);
  ASSERT_TRUE(stored.ok());
  ASSERT_EQ(recorded, (std::vector<std::string>{"dcpp.byteshuffle/1", "stream.zstd/1"}));
  const size_t block = size_t{2} << internal::kShuffleDefaultBlockLog2;  // element width 2
  ASSERT_GT(stored->size(), internal::kShuffleHeaderSize + block);
  auto r = DecodeAll(recorded, Bytes(*stored).first(internal::kShuffleHeaderSize + block),
                     data.size());
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("transform 1 'stream.zstd/1'"), std::string::npos)
      << r.status().ToString();
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().ToString();
}

TEST(TransformChain, WriteAfterFinishIsRefused) {
  for (const auto& chain : {std::vector<std::string>{}, kZstd, kShuffle}) {
    auto e = NewEncoder(
        chain, {}, [](auto) { return Status(); }, nullptr);
    ASSERT_TRUE(e.ok());
    ASSERT_TRUE((*e)->Finish().ok());
    EXPECT_EQ((*e)->Write(Bytes("x")).code(), StatusCode::kInvalidArgument);
    EXPECT_EQ((*e)->Finish().code(), StatusCode::kInvalidArgument);
  }
}

TEST(TransformChain, DecodeIsThreadSafe) {
  std::vector<std::string> inputs, stored;
  for (int i = 0; i < 4; ++i) {
    inputs.push_back(TextBytes(200000 + i * 1000, 10 + i));
    EncodeOptions o;
    o.element_size = 4;
    stored.push_back(MustEncode(kShuffleThenZstd, inputs.back(), o));
  }
  std::vector<int> good(4, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < 20; ++round) {
        auto d =
            DecodeAll({"stream.zstd/1", "dcpp.byteshuffle/1"}, Bytes(stored[t]), inputs[t].size());
        if (d.ok() && *d == inputs[t]) ++good[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(good, (std::vector<int>{20, 20, 20, 20}));
}

// ----------------------------------------------------------------------- zstd

TEST(TransformZstd, RoundTripsSmallAndOddSizes) {
  for (size_t n : {size_t{0}, size_t{1}, size_t{2}, size_t{127}, size_t{128} << 10,
                   (size_t{128} << 10) + 1, size_t{1} << 20, (size_t{3} << 20) + 5}) {
    const std::string data = n % 2 ? RandomBytes(n, n) : TextBytes(n, n);
    for (size_t piece : {size_t{1} << 30, size_t{65537}}) {
      if (piece < (size_t{1} << 30) && n > (size_t{1} << 20)) continue;  // keep it quick
      std::string stored = EncodeInPieces(kZstd, {}, data, piece);
      EXPECT_EQ(CountFrames(stored), 1) << n;
      auto back = DecodeAll(kZstd, Bytes(stored), n);
      ASSERT_TRUE(back.ok()) << n << ": " << back.status().ToString();
      EXPECT_EQ(*back, data) << n;
    }
  }
}

TEST(TransformZstd, FrameHasChecksumAndContentSizeWhenKnown) {
  const std::string data = TextBytes(100000, 6);
  const std::string known = MustEncode(kZstd, data);  // EncodeAll knows the size
  EXPECT_EQ(ZSTD_getFrameContentSize(known.data(), known.size()), data.size());
  EXPECT_TRUE(HasChecksum(known));

  const std::string unknown = EncodeInPieces(kZstd, {}, data, 1000);  // no size_hint
  EXPECT_EQ(ZSTD_getFrameContentSize(unknown.data(), unknown.size()), ZSTD_CONTENTSIZE_UNKNOWN);
  EXPECT_TRUE(HasChecksum(unknown));
  EXPECT_EQ(CountFrames(unknown), 1);
  auto back = DecodeAll(kZstd, Bytes(unknown), data.size());
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, data);
}

TEST(TransformZstd, LevelsChangeTheOutput) {
  const std::string data = TextBytes(1 << 20, 7);
  EncodeOptions fast, strong;
  fast.zstd_level = -5;
  strong.zstd_level = 9;
  const std::string a = MustEncode(kZstd, data, fast), b = MustEncode(kZstd, data, strong);
  EXPECT_GT(a.size(), b.size());
  for (const std::string* s : {&a, &b}) {
    auto back = DecodeAll(kZstd, Bytes(*s), data.size());
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, data);
  }
}

TEST(TransformZstd, WorkerCountPolicy) {
  EXPECT_EQ(internal::ZstdWorkersFor(0, 0), 0);
  EXPECT_EQ(internal::ZstdWorkersFor(0, internal::kZstdWorkersMinSize - 1), 0);
  EXPECT_EQ(internal::ZstdWorkersFor(1, 1ull << 40), 0);
  const ZSTD_bounds b = ZSTD_cParam_getBounds(ZSTD_c_nbWorkers);
  if (b.upperBound > 0) {
    EXPECT_EQ(internal::ZstdWorkersFor(3, 100), 3);
    EXPECT_GE(internal::ZstdWorkersFor(0, 1ull << 30), 0);
  } else {
    EXPECT_EQ(internal::ZstdWorkersFor(3, 100), 0);
  }
}

TEST(TransformZstd, LargeItemWithWorkersIsOneFrame) {
  const std::string data = Bf16Weights(25'000'000, 8);  // 50 MB
  for (int workers : {0, 2}) {                          // 0: chosen by size (>= 8 MiB: several)
    EncodeOptions o;
    o.zstd_workers = workers;
    o.size_hint = data.size();
    size_t pieces = 0, largest = 0;
    std::string stored;
    auto e = NewEncoder(
        kZstd, o,
        [&](std::span<const uint8_t> b) {
          ++pieces;
          largest = std::max(largest, b.size());
          stored.append(reinterpret_cast<const char*>(b.data()), b.size());
          return Status();
        },
        nullptr);
    ASSERT_TRUE(e.ok());
    for (size_t pos = 0; pos < data.size(); pos += 3 << 20) {
      ASSERT_TRUE(
          (*e)->Write(Bytes(data).subspan(pos, std::min<size_t>(3 << 20, data.size() - pos))).ok());
    }
    ASSERT_TRUE((*e)->Finish().ok());
    EXPECT_EQ(CountFrames(stored), 1);
    EXPECT_EQ(ZSTD_getFrameContentSize(stored.data(), stored.size()), data.size());
    // Output arrives in bounded pieces, not all at the end.
    EXPECT_LE(largest, 8 * ZSTD_CStreamOutSize());
    EXPECT_GE(pieces, stored.size() / (8 * ZSTD_CStreamOutSize()));
    auto back = DecodeAll(kZstd, Bytes(stored), data.size());
    ASSERT_TRUE(back.ok()) << back.status().ToString();
    EXPECT_TRUE(*back == data);
  }
}

TEST(TransformZstd, PledgedSizeIsEnforcedByTheZstdStageToo) {
  auto sink = [](auto) { return Status(); };
  auto e = internal::NewZstdEncoder(1, 0, 10, sink);
  ASSERT_TRUE(e.ok());
  ASSERT_TRUE((*e)->Write(Bytes("12345")).ok());
  EXPECT_EQ((*e)->Finish().code(), StatusCode::kInvalidArgument);
  e = internal::NewZstdEncoder(1, 0, 10, sink);
  ASSERT_TRUE(e.ok());
  Status s = (*e)->Write(Bytes(RandomBytes(1000, 9)));
  if (s.ok()) s = (*e)->Finish();
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.ToString();
}

TEST(TransformZstd, TwoEncodersOnOneThreadDoNotShareState) {
  const std::string a = TextBytes(500000, 11), b = RandomBytes(500000, 12);
  std::string out_a, out_b;
  auto sink_to = [](std::string* out) {
    return [out](std::span<const uint8_t> x) {
      out->append(reinterpret_cast<const char*>(x.data()), x.size());
      return Status();
    };
  };
  auto ea = NewEncoder(kZstd, {}, sink_to(&out_a), nullptr);
  auto eb = NewEncoder(kZstd, {}, sink_to(&out_b), nullptr);
  ASSERT_TRUE(ea.ok() && eb.ok());
  for (size_t pos = 0; pos < a.size(); pos += 50000) {
    ASSERT_TRUE((*ea)->Write(Bytes(a).subspan(pos, 50000)).ok());
    ASSERT_TRUE((*eb)->Write(Bytes(b).subspan(pos, 50000)).ok());
  }
  ASSERT_TRUE((*eb)->Finish().ok());
  ASSERT_TRUE((*ea)->Finish().ok());
  EXPECT_EQ(*DecodeAll(kZstd, Bytes(out_a), a.size()), a);
  EXPECT_EQ(*DecodeAll(kZstd, Bytes(out_b), b.size()), b);
}

TEST(TransformZstd, ReadsConcatenatedAndSkippableFrames) {
  const std::string a = TextBytes(70000, 13), b = RandomBytes(3000, 14);
  // A skippable frame: magic 0x184D2A5? little-endian, 4-byte size, payload.
  const std::string skippable("\x50\x2A\x4D\x18\x03\x00\x00\x00xyz", 11);
  const std::string stored = MustEncode(kZstd, a) + skippable + MustEncode(kZstd, b);
  auto back = DecodeAll(kZstd, Bytes(stored), a.size() + b.size());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, a + b);
  EXPECT_EQ(DecodeAll(kZstd, Bytes(stored), a.size() + b.size() - 1).status().code(),
            StatusCode::kDataLoss);
}

TEST(TransformZstd, ReadsFramesWithoutChecksumOrContentSize) {
  // As a plain streaming writer makes them (Python's zstandard stream_writer).
  const std::string data = TextBytes(400000, 15);
  ZSTD_CCtx* c = ZSTD_createCCtx();
  std::string stored(ZSTD_compressBound(data.size()), '\0');
  ZSTD_outBuffer out{stored.data(), stored.size(), 0};
  for (size_t pos = 0; pos < data.size(); pos += 100000) {
    ZSTD_inBuffer in{data.data() + pos, 100000, 0};
    while (in.pos < in.size)
      ASSERT_FALSE(ZSTD_isError(ZSTD_compressStream2(c, &out, &in, ZSTD_e_continue)));
  }
  ZSTD_inBuffer none{nullptr, 0, 0};
  while (size_t r = ZSTD_compressStream2(c, &out, &none, ZSTD_e_end)) ASSERT_FALSE(ZSTD_isError(r));
  ZSTD_freeCCtx(c);
  stored.resize(out.pos);
  ASSERT_EQ(ZSTD_getFrameContentSize(stored.data(), stored.size()), ZSTD_CONTENTSIZE_UNKNOWN);
  ASSERT_FALSE(HasChecksum(stored));
  auto back = DecodeAll(kZstd, Bytes(stored), data.size());
  ASSERT_TRUE(back.ok()) << back.status().ToString();
  EXPECT_EQ(*back, data);
  // Without a declared size the cap is enforced while decoding.
  auto capped = DecodeAll(kZstd, Bytes(stored), data.size() - 1);
  EXPECT_EQ(capped.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(capped.status().message().find("exceeds the limit"), std::string::npos);
}

TEST(TransformZstd, OutputCap) {
  const std::string data = TextBytes(1 << 20, 16);
  const std::string stored = MustEncode(kZstd, data);
  EXPECT_TRUE(DecodeAll(kZstd, Bytes(stored), data.size()).ok());
  auto r = DecodeAll(kZstd, Bytes(stored), data.size() - 1);
  ASSERT_EQ(r.status().code(), StatusCode::kDataLoss);
  EXPECT_NE(r.status().message().find("stream.zstd/1"), std::string::npos);
  // A frame that declares an absurd size is refused before allocating.
  EXPECT_EQ(DecodeAll(kZstd, Bytes(stored), 1000).status().code(), StatusCode::kDataLoss);
  // The empty item.
  const std::string empty = MustEncode(kZstd, "");
  auto e = DecodeAll(kZstd, Bytes(empty), 0);
  ASSERT_TRUE(e.ok()) << e.status().ToString();
  EXPECT_EQ(*e, "");
}

TEST(TransformZstd, CorruptBytesAreDataLoss) {
  const std::string data = TextBytes(300000, 17) + RandomBytes(100000, 18);
  const std::string stored = MustEncode(kZstd, data);
  int positions = 0, harmless = 0;
  for (size_t pos = 0; pos < stored.size(); pos += 1 + stored.size() / 300) {
    for (uint8_t mask : {uint8_t{0x01}, uint8_t{0xFF}}) {
      std::string bad = stored;
      bad[pos] = static_cast<char>(bad[pos] ^ mask);
      auto r = DecodeAll(kZstd, Bytes(bad), data.size() * 2);
      ++positions;
      if (r.ok()) {
        // A few bits of an entropy-coded stream do not matter (padding,
        // unused table entries): decoding must then give the data exactly.
        ASSERT_TRUE(*r == data) << "byte " << pos << " ^ " << int{mask} << " went unnoticed";
        ++harmless;
        continue;
      }
      EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << r.status().ToString();
      EXPECT_NE(r.status().message().find("stream.zstd/1"), std::string::npos);
    }
  }
  EXPECT_GT(positions, 500);
  EXPECT_LT(harmless, positions / 50);
}

TEST(TransformZstd, FrameEndingAsTheOutputBufferFillsIsComplete) {
  // The decoder hands output on in pieces of 8 x ZSTD_CStreamOutSize()
  // bytes; an item of exactly one or two such pieces ends its frame just as
  // a piece fills, which must not read as a frame left open.
  const size_t piece = 8 * ZSTD_CStreamOutSize();
  for (size_t n : {piece, 2 * piece}) {
    const std::string data = TextBytes(n, 9);
    std::vector<std::string> recorded;
    auto stored = EncodeAll(kZstd, {}, Bytes(data), &recorded);
    ASSERT_TRUE(stored.ok());
    auto back = DecodeAll(recorded, Bytes(*stored), n);
    ASSERT_TRUE(back.ok()) << n << ": " << back.status().ToString();
    EXPECT_EQ(*back, data);
  }
}

TEST(TransformZstd, TruncatedIsDataLoss) {
  const std::string data = TextBytes(200000, 19);
  const std::string stored = MustEncode(kZstd, data);
  for (size_t len = 0; len < stored.size(); len += (len < 64 ? 1 : 97)) {
    auto r = DecodeAll(kZstd, Bytes(stored).subspan(0, len), data.size());
    ASSERT_FALSE(r.ok()) << len;
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss) << len;
  }
  auto r = DecodeAll(kZstd, Bytes(stored).subspan(0, stored.size() - 1), data.size());
  EXPECT_NE(r.status().message().find("truncated"), std::string::npos) << r.status().ToString();
}

TEST(TransformZstd, TrailingGarbageIsDataLoss) {
  const std::string data = TextBytes(5000, 20);
  const std::string stored = MustEncode(kZstd, data);
  for (const std::string& tail : {std::string("garbage!"), std::string("\0\0", 2),
                                  std::string(1000, '\0'), RandomBytes(100, 21)}) {
    auto r = DecodeAll(kZstd, Bytes(stored + tail), data.size() * 2);
    ASSERT_FALSE(r.ok()) << tail.size();
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  }
  auto r = DecodeAll(kZstd, Bytes(stored + "garbage!"), data.size());
  EXPECT_NE(r.status().message().find("not a zstd frame"), std::string::npos)
      << r.status().ToString();
}

TEST(TransformZstd, NotZstdAtAllIsDataLoss) {
  for (const std::string& bad :
       {std::string(), std::string("PK\3\4 a zip file"), RandomBytes(4096, 22)}) {
    auto r = DecodeAll(kZstd, Bytes(bad), 1 << 20);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
  }
}

// ----------------------------------------------------------------- byteshuffle

// The layout docs/format.md specifies, written out independently of the
// encoder: block by block, byte j of value i goes to j * n + i.
std::string ReferenceShuffle(const std::string& data, int width, int block_log2) {
  std::string out = {static_cast<char>(width), static_cast<char>(block_log2)};
  const size_t block = static_cast<size_t>(width) << block_log2;
  for (size_t start = 0; start < data.size(); start += block) {
    const size_t len = std::min(block, data.size() - start);
    const size_t n = len / width;
    std::string b(len, '\0');
    for (size_t i = 0; i < n; ++i) {
      for (int j = 0; j < width; ++j) b[j * n + i] = data[start + i * width + j];
    }
    for (size_t k = n * width; k < len; ++k) b[k] = data[start + k];
    out += b;
  }
  return out;
}

TEST(TransformByteShuffle, BlockLayoutByHand) {
  const uint8_t in[] = {0x10, 0x11, 0x20, 0x21, 0x30, 0x31, 0x40};
  uint8_t out[8];
  internal::ShuffleBlock(in, 7, 2, out);
  const uint8_t want[] = {0x10, 0x20, 0x30, 0x11, 0x21, 0x31, 0x40};
  EXPECT_EQ(std::memcmp(out, want, 7), 0);
  uint8_t again[7];
  internal::UnshuffleBlock(out, 7, 2, again);
  EXPECT_EQ(std::memcmp(again, in, 7), 0);
  const uint8_t in3[] = {1, 2, 3, 4, 5, 6, 7, 8};
  const uint8_t want3[] = {1, 4, 2, 5, 3, 6, 7, 8};
  internal::ShuffleBlock(in3, 8, 3, out);
  EXPECT_EQ(std::memcmp(out, want3, 8), 0);
}

TEST(TransformByteShuffle, MatchesTheDocumentedLayoutForAllWidths) {
  for (int width = 1; width <= 16; ++width) {
    for (int block_log2 : {0, 2, 5}) {
      const size_t block = static_cast<size_t>(width) << block_log2;
      for (size_t n : {size_t{0}, size_t{1}, block - 1, block, block + 1, 3 * block + width - 1,
                       7 * block + 3}) {
        const std::string data = RandomBytes(n, n * 31 + width);
        for (size_t piece : {size_t{1}, size_t{3}, block, size_t{1} << 20}) {
          std::string stored;
          auto e = internal::NewByteShuffleEncoder(width, block_log2, [&](auto b) {
            stored.append(reinterpret_cast<const char*>(b.data()), b.size());
            return Status();
          });
          ASSERT_TRUE(e.ok());
          for (size_t pos = 0; pos < n; pos += piece) {
            ASSERT_TRUE((*e)->Write(Bytes(data).subspan(pos, std::min(piece, n - pos))).ok());
          }
          ASSERT_TRUE((*e)->Finish().ok());
          ASSERT_EQ(stored, ReferenceShuffle(data, width, block_log2))
              << "width " << width << " block 2^" << block_log2 << " size " << n;
          // Decoded in the same pieces: blocks arrive split or several at once.
          std::string back;
          auto d = internal::NewByteShuffleDecoder(n, [&](auto b) {
            back.append(reinterpret_cast<const char*>(b.data()), b.size());
            return Status();
          });
          ASSERT_TRUE(d.ok());
          for (size_t pos = 0; pos < stored.size(); pos += piece) {
            ASSERT_TRUE(
                (*d)->Write(Bytes(stored).subspan(pos, std::min(piece, stored.size() - pos))).ok());
          }
          ASSERT_TRUE((*d)->Finish().ok());
          ASSERT_EQ(back, data);
        }
      }
    }
  }
}

TEST(TransformByteShuffle, DefaultBlockThroughThePublicApi) {
  for (int width : {1, 2, 4, 8}) {
    EncodeOptions o;
    o.element_size = width;
    const size_t n = (static_cast<size_t>(width) << internal::kShuffleDefaultBlockLog2) * 2 + 5;
    const std::string data = RandomBytes(n, 23 + width);
    std::vector<std::string> recorded;
    const std::string stored = EncodeInPieces(kShuffle, o, data, 100003, &recorded);
    EXPECT_EQ(recorded, kShuffle);
    EXPECT_EQ(stored, ReferenceShuffle(data, width, internal::kShuffleDefaultBlockLog2));
    auto back = DecodeAll(kShuffle, Bytes(stored), n);
    ASSERT_TRUE(back.ok());
    EXPECT_EQ(*back, data);
  }
}

TEST(TransformByteShuffle, BadHeaderOrCapIsDataLoss) {
  const std::string body = "abcdefgh";
  for (const std::string& bad :
       {std::string(), std::string("\x02", 1), std::string("\x00\x04", 2) + body,
        std::string("\x11\x04", 2) + body, std::string("\xFF\x04", 2) + body,
        std::string("\x02\x1F", 2) + body}) {
    auto r = DecodeAll(kShuffle, Bytes(bad), 100);
    ASSERT_FALSE(r.ok()) << bad.size();
    EXPECT_EQ(r.status().code(), StatusCode::kDataLoss);
    EXPECT_NE(r.status().message().find("dcpp.byteshuffle/1"), std::string::npos);
  }
  const std::string good = std::string("\x02\x04", 2) + body;
  EXPECT_TRUE(DecodeAll(kShuffle, Bytes(good), body.size()).ok());
  EXPECT_EQ(DecodeAll(kShuffle, Bytes(good), body.size() - 1).status().code(),
            StatusCode::kDataLoss);
  // Header alone: the empty item.
  auto empty = DecodeAll(kShuffle, Bytes(std::string("\x04\x12", 2)), 0);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, "");
}

// ------------------------------------------------------------- compressibility

// What byte shuffling is for, on weights-like data; prints the numbers the
// docs quote (throughput depends on the machine and is not asserted).
TEST(TransformMeasure, ShuffleImprovesZstdOnBf16Weights) {
  const std::string data = Bf16Weights(8 << 20, 24);  // 16 MiB
  double ratio[2], mbps[2];
  for (int shuffle = 0; shuffle < 2; ++shuffle) {
    EncodeOptions o;
    o.zstd_level = 1;
    o.zstd_workers = 1;
    o.element_size = 2;
    const auto t0 = std::chrono::steady_clock::now();
    const std::string stored = MustEncode(shuffle ? kShuffleThenZstd : kZstd, data, o);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ratio[shuffle] = static_cast<double>(data.size()) / stored.size();
    mbps[shuffle] = data.size() / s / 1e6;
    std::vector<std::string> recorded(shuffle ? 2 : 1);
    recorded[0] = "stream.zstd/1";
    if (shuffle) recorded[1] = "dcpp.byteshuffle/1";
    auto back = DecodeAll(recorded, Bytes(stored), data.size());
    ASSERT_TRUE(back.ok());
    EXPECT_TRUE(*back == data);
  }
  std::printf(
      "bf16 normal(0,0.02), zstd level 1, one thread: plain ratio %.3f at %.0f MB/s; "
      "byteshuffle ratio %.3f at %.0f MB/s\n",
      ratio[0], mbps[0], ratio[1], mbps[1]);
  EXPECT_GT(ratio[0], 1.15);
  EXPECT_GT(ratio[1], ratio[0] * 1.08);
}

}  // namespace
}  // namespace dcpp::transform

namespace dcpp::transform {
namespace {

// MaxDecodedSize bounds what real frames decode to, even the most
// compressible data at zstd's strongest level, and a hand-made frame of one
// RLE block of the largest size its header can state (which libzstd
// decodes although the format caps blocks at 128 KiB).
TEST(MaxDecodedSize, BoundsTheMostCompressibleFrames) {
  const std::vector<std::string> zstd = {"stream.zstd/1"};
  const std::string zeros(64 << 20, '\0');
  for (int level : {1, ZSTD_maxCLevel()}) {
    std::vector<std::string> recorded;
    EncodeOptions o;
    o.zstd_level = level;
    o.zstd_workers = 1;
    auto stored = EncodeAll(zstd, o, {reinterpret_cast<const uint8_t*>(zeros.data()), zeros.size()},
                            &recorded);
    ASSERT_TRUE(stored.ok()) << stored.status().ToString();
    auto bound = MaxDecodedSize(recorded, stored->size());
    ASSERT_TRUE(bound.ok());
    EXPECT_GE(*bound, zeros.size()) << "level " << level << ": " << stored->size() << " bytes";
  }
  // Hand-made frames: magic, frame header (no content size, 2 MiB window),
  // 64 RLE blocks of `n` bytes each (4 bytes a block). The format caps a
  // block at 128 KiB, but the header's size field holds up to 2^21 - 1;
  // whatever this build's decoder accepts must be within the bound.
  for (uint32_t n : {1u << 17, (1u << 17) + 1, (1u << 21) - 1}) {
    SCOPED_TRACE(n);
    std::string frame = {'\x28', '\xB5', '\x2F', '\xFD', '\x00', '\x58'};
    constexpr int kBlocks = 64;
    for (int b = 0; b < kBlocks; ++b) {
      const uint32_t block = (b == kBlocks - 1 ? 1u : 0u) | (1u << 1) | (n << 3);
      frame += {static_cast<char>(block), static_cast<char>(block >> 8),
                static_cast<char>(block >> 16), '\x07'};
    }
    auto decoded = DecodeAll(zstd, {reinterpret_cast<const uint8_t*>(frame.data()), frame.size()},
                             uint64_t{1} << 30);
    if (n == 1u << 17) ASSERT_TRUE(decoded.ok()) << decoded.status().ToString();
    if (!decoded.ok()) continue;
    EXPECT_EQ(decoded->size(), uint64_t{n} * kBlocks);
    auto bound = MaxDecodedSize(zstd, frame.size());
    ASSERT_TRUE(bound.ok());
    EXPECT_GE(*bound, decoded->size());
  }

  EXPECT_EQ(*MaxDecodedSize({"dcpp.byteshuffle/1"}, 1000), 1000u);
  EXPECT_EQ(*MaxDecodedSize({}, 1000), 1000u);
  EXPECT_EQ(*MaxDecodedSize(zstd, UINT64_MAX / 2), UINT64_MAX);  // saturates
  EXPECT_EQ(MaxDecodedSize({"nope/1"}, 10).status().code(), StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace dcpp::transform
