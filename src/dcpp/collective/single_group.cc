// The one-process ProcessGroup: rank 0 of 1. Collectives never wait, so the
// timeout does not apply; a root other than 0 is InvalidArgument, as it is
// for the other groups.
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "dcpp/process_group.h"

namespace dcpp {
namespace {

Status CheckRoot(std::string_view collective, int root) {
  if (root == 0) return Status();
  return InvalidArgumentError(std::string(collective) + ": root " + std::to_string(root) +
                              " is out of range for 1 rank");
}

class SingleProcessGroup final : public ProcessGroup {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string_view kind() const override { return "single"; }

  Status Barrier() override { return Status(); }

  Result<std::vector<std::string>> Gather(std::string data, int root) override {
    DCPP_RETURN_IF_ERROR(CheckRoot("Gather", root));
    std::vector<std::string> out;
    out.push_back(std::move(data));
    return out;
  }

  Result<std::string> Broadcast(std::string data, int root) override {
    DCPP_RETURN_IF_ERROR(CheckRoot("Broadcast", root));
    return data;
  }

  Result<std::vector<std::string>> AllGather(std::string data) override {
    std::vector<std::string> out;
    out.push_back(std::move(data));
    return out;
  }

  Result<std::string> Scatter(std::vector<std::string> parts, int root) override {
    DCPP_RETURN_IF_ERROR(CheckRoot("Scatter", root));
    if (parts.size() != 1) {
      return InvalidArgumentError("Scatter: root 0 passed " + std::to_string(parts.size()) +
                                  " parts for 1 rank");
    }
    return std::move(parts[0]);
  }

  Result<std::unique_ptr<ProcessGroup>> Duplicate() override { return MakeSingleProcessGroup(); }
};

}  // namespace

Result<std::unique_ptr<ProcessGroup>> ProcessGroup::Duplicate() {
  return UnimplementedError("this " + std::string(kind()) +
                            " process group cannot be duplicated (ProcessGroup::Duplicate), "
                            "which an async save needs for its background collectives");
}

std::unique_ptr<ProcessGroup> MakeSingleProcessGroup() {
  return std::make_unique<SingleProcessGroup>();
}

}  // namespace dcpp
