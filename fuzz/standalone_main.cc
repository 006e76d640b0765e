// A driver for the fuzz targets where libFuzzer is not available (g++):
// runs the target on every seed file given, then on deterministic random
// mutations of them (byte flips, truncations, splices, inserted bytes).
// Under AddressSanitizer/UBSan this finds the same class of bugs, more
// slowly. With clang, build with -DDCPP_BUILD_FUZZERS=ON for real libFuzzer.
//
//   <target>_replay [--iterations N] SEED_FILE_OR_DIR...
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

std::vector<std::string> LoadSeeds(const std::vector<std::string>& paths) {
  std::vector<std::string> seeds;
  auto add = [&](const std::filesystem::path& p) {
    std::ifstream in(p, std::ios::binary);
    seeds.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  };
  for (const auto& p : paths) {
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file() && e.file_size() < (1 << 20)) add(e.path());
    } else if (std::filesystem::exists(p)) {
      add(p);
    }
  }
  if (seeds.empty()) seeds.emplace_back();
  return seeds;
}

void Run(const std::string& s) {
  LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(s.data()), s.size());
}

}  // namespace

int main(int argc, char** argv) {
  long iterations = 2000;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--iterations") && i + 1 < argc) {
      iterations = std::atol(argv[++i]);
    } else {
      paths.push_back(argv[i]);
    }
  }
  const auto seeds = LoadSeeds(paths);
  for (const auto& s : seeds) {
    Run(s);
    for (size_t n = 0; n < s.size(); n += 1 + s.size() / 64) Run(s.substr(0, n));  // truncations
  }
  std::mt19937_64 rng(12345);
  for (long it = 0; it < iterations; ++it) {
    std::string s = seeds[rng() % seeds.size()];
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = s.empty() ? 0 : rng() % s.size();
      switch (rng() % 5) {
        case 0:
          if (!s.empty()) s[pos] = static_cast<char>(s[pos] ^ (1 << (rng() % 8)));
          break;
        case 1:
          if (!s.empty()) s[pos] = static_cast<char>(rng());
          break;
        case 2: s.insert(pos, 1, static_cast<char>(rng())); break;
        case 3: s.resize(pos); break;
        case 4: {  // splice in a piece of another seed
          const std::string& o = seeds[rng() % seeds.size()];
          if (o.empty()) break;
          const size_t from = rng() % o.size();
          s.insert(pos, o.substr(from, rng() % 64));
          break;
        }
      }
    }
    Run(s);
  }
  std::printf("%zu seeds, %ld mutations: no crash\n", seeds.size(), iterations);
  return 0;
}
