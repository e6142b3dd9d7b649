#include "train/metrics_log.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "core/error.h"
#include "io/atomic_file.h"
#include "io/fault_injection.h"

namespace ssmtune {

MetricsLog::MetricsLog(std::filesystem::path path, std::int64_t keep_up_to_step)
    : path_(std::move(path)) {
  if (keep_up_to_step >= 0 && std::filesystem::exists(path_)) {
    std::ifstream in(path_);
    std::string line, kept;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // a last line without '\n' was cut by a crash
      const nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
      if (j.is_object() && j.contains("step") && j["step"].is_number_integer() &&
          j["step"].get<std::int64_t>() <= keep_up_to_step)
        kept += line + "\n";
    }
    write_file_atomic(path_, kept);
  }
  file_ = std::fopen(path_.c_str(), "a");
  if (!file_) throw Error(path_.string() + ": cannot open for writing: " + std::strerror(errno));
}

MetricsLog::~MetricsLog() {
  if (file_) std::fclose(file_);
}

void MetricsLog::write(const nlohmann::json& record) {
  const std::string line = record.dump() + "\n";
  if (std::fwrite(line.data(), 1, line.size(), file_) != line.size() || std::fflush(file_) != 0)
    throw Error(path_.string() + ": write failed: " + std::strerror(errno));
  kill_point("metrics: row written");
}

}  // namespace ssmtune
