// The C++ quick start of README.md, made runnable: save a small state dict
// into a new temporary directory, load it in place and with LoadAll, and
// check every value. Exit status 0 when everything matches.
#include <dcpp/checkpoint.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <string>
#include <vector>

namespace {

int failures = 0;

bool IsInt(const dcpp::Value* v, int64_t want) {
  return v != nullptr && v->kind() == dcpp::Value::Kind::kInt && v->as_int() == want;
}

bool IsString(const dcpp::Value* v, const std::string& want) {
  return v != nullptr && v->kind() == dcpp::Value::Kind::kString && v->as_string() == want;
}

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::cerr << "FAILED: " << what << "\n";
    ++failures;
  }
}

}  // namespace

int main() {
  char dir_template[] = "/tmp/dcpp_quick_start_XXXXXX";
  if (mkdtemp(dir_template) == nullptr) {
    std::perror("mkdtemp");
    return 2;
  }
  const std::filesystem::path root = dir_template;
  const std::string ckpt = (root / "step_1000").string();

  // bfloat16 bit patterns; a small matrix instead of the README's 4096 x 4096.
  constexpr int64_t kRows = 64, kCols = 32;
  std::vector<uint16_t> weights(kRows * kCols);
  for (size_t i = 0; i < weights.size(); ++i) weights[i] = static_cast<uint16_t>(0x3f80 + i * 7);

  // ---- the README's quick start ----
  dcpp::Value sd;
  sd["model"]["weight"] = dcpp::Tensor::Borrow(
      dcpp::MakeView(weights.data(), dcpp::DType::kBFloat16, {kRows, kCols}));  // no copy
  sd["optim"]["step"] = 1000;
  sd["run"] = "llama-7b";

  auto md = dcpp::Save(sd, ckpt);  // like dcp.save
  if (!md.ok()) std::cerr << md.status().ToString() << "\n";
  Check(md.ok(), "Save");

  // Load in place: clear the buffer first so the check sees loaded bytes.
  const std::vector<uint16_t> saved = weights;
  std::fill(weights.begin(), weights.end(), 0);
  sd["optim"]["step"] = 0;
  sd["run"] = "";
  dcpp::Status s = dcpp::Load(sd, ckpt);  // like dcp.load: in place
  auto everything = dcpp::LoadAll(ckpt);  // allocate from .metadata
  // ---- end of the quick start ----

  Check(s.ok(), "Load: " + s.ToString());
  Check(weights == saved, "Load filled model.weight in place");
  Check(IsInt(sd["optim"].Find("step"), 1000), "Load restored optim.step");
  Check(IsString(sd.Find("run"), "llama-7b"), "Load restored run");

  Check(everything.ok(), "LoadAll: " + (everything.ok() ? std::string() : everything.status().ToString()));
  if (everything.ok()) {
    const dcpp::Value& all = *everything;
    const dcpp::Value* model = all.Find("model");
    const dcpp::Value* w = model != nullptr ? model->Find("weight") : nullptr;
    Check(w != nullptr && w->is_tensor(), "LoadAll has model.weight");
    if (w != nullptr && w->is_tensor()) {
      const dcpp::Tensor& t = w->tensor();
      Check(t.dtype() == dcpp::DType::kBFloat16, "LoadAll model.weight dtype");
      Check(t.shape() == dcpp::Shape{kRows, kCols}, "LoadAll model.weight shape");
      Check(t.nbytes() == saved.size() * sizeof(uint16_t) &&
                std::memcmp(t.data(), saved.data(), t.nbytes()) == 0,
            "LoadAll model.weight bytes");
    }
    const dcpp::Value* optim = all.Find("optim");
    const dcpp::Value* step = optim != nullptr ? optim->Find("step") : nullptr;
    Check(IsInt(step, 1000), "LoadAll optim.step");
    const dcpp::Value* run = all.Find("run");
    Check(IsString(run, "llama-7b"), "LoadAll run");
  }

  std::error_code ec;
  std::filesystem::remove_all(root, ec);
  if (failures == 0) std::cout << "quick start: saved and loaded " << ckpt << ", all values match\n";
  return failures == 0 ? 0 : 1;
}
