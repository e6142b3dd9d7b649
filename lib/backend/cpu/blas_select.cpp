#include "backend/cpu/blas_select.h"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <utility>
#include <vector>

// OpenBLAS's reporting functions, declared weak so that ssmtune still links and runs against
// another cblas (they are then null and nothing is forced).
extern "C" {
char* openblas_get_corename(void) __attribute__((weak));
char* openblas_get_config(void) __attribute__((weak));
int openblas_get_num_threads(void) __attribute__((weak));
int openblas_get_parallel(void) __attribute__((weak));
}

namespace ssmtune::cpu {

namespace {

// Set in the re-executed process; its value is the core OpenBLAS had detected by itself.
constexpr const char* kReexecMarker = "SSMTUNE_BLAS_REEXEC";  // the core OpenBLAS detected
constexpr const char* kReexecDone = "SSMTUNE_REEXEC";         // set in the re-executed process
constexpr const char* kSpinCount = "10000";

// Why re-executing failed, if it did (shown by blas_description).
std::string& exec_failure() {
  static std::string reason;
  return reason;
}

// Case-insensitive, as OpenBLAS compares OPENBLAS_CORETYPE with its core names.
bool same_name(std::string_view a, std::string_view b) {
  const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? char(c - 'A' + 'a') : c; };
  return std::equal(a.begin(), a.end(), b.begin(), b.end(),
                    [&](char x, char y) { return lower(x) == lower(y); });
}

// OpenBLAS's x86-64 core names (driver/others/dynamic.c, 0.3.21 and later), ranked by the SIMD
// width their sgemm/dgemm kernels use: 0 SSE, 1 AVX, 2 AVX2+FMA, 3 AVX-512. -1: not in this table.
int openblas_core_rank(std::string_view core) {
  static constexpr std::pair<std::string_view, int> kRanks[] = {
      {"Unknown", 0},     {"Katmai", 0},       {"Coppermine", 0},    {"Northwood", 0},
      {"Prescott", 0},    {"Banias", 0},       {"Atom", 0},          {"Core2", 0},
      {"Penryn", 0},      {"Dunnington", 0},   {"Nehalem", 0},       {"Athlon", 0},
      {"Opteron", 0},     {"Opteron_SSE3", 0}, {"Barcelona", 0},     {"Nano", 0},
      {"Bobcat", 0},      {"Sandybridge", 1},  {"Bulldozer", 1},     {"Piledriver", 1},
      {"Steamroller", 1}, {"Haswell", 2},      {"Excavator", 2},     {"Zen", 2},
      {"SkylakeX", 3},    {"Cooperlake", 3},   {"SapphireRapids", 3}};
  for (const auto& [name, rank] : kRanks)
    if (same_name(name, core)) return rank;
  return -1;
}

bool is_dynamic_arch_openblas() {
  return openblas_get_config && std::strstr(openblas_get_config(), "DYNAMIC_ARCH") != nullptr;
}

}  // namespace

std::string best_openblas_core_for_cpu() {
#if defined(__x86_64__)
  // GCC's checks include the OS enabling the AVX / AVX-512 register state (XCR0).
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512cd") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512vl"))
    return "SkylakeX";
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return "Haswell";
#endif
  return "";
}

std::optional<std::string> openblas_core_to_force(const std::string& active_core,
                                                  bool user_set_coretype,
                                                  const std::string& best_core) {
  if (user_set_coretype || best_core.empty()) return std::nullopt;
  const int active_rank = openblas_core_rank(active_core);
  if (active_rank < 0 || active_rank >= openblas_core_rank(best_core)) return std::nullopt;
  return best_core;
}

void ensure_fast_blas(int argc, char** argv) {
  if (std::getenv(kReexecDone)) return;  // this is the re-executed process
  std::vector<const char*> set_here;      // what to undo if the exec fails
  if (openblas_get_corename && is_dynamic_arch_openblas()) {
    const std::string active_core = openblas_get_corename();
    const auto core = openblas_core_to_force(
        active_core, std::getenv("OPENBLAS_CORETYPE") != nullptr, best_openblas_core_for_cpu());
    if (core) {
      setenv("OPENBLAS_CORETYPE", core->c_str(), 1);
      setenv(kReexecMarker, active_core.c_str(), 1);
      set_here.insert(set_here.end(), {"OPENBLAS_CORETYPE", kReexecMarker});
    }
  }
  // libgomp lets idle threads spin for about 0.3 s before sleeping. Between ssmtune's many short
  // parallel regions that is fine on idle cores, but when other processes share the cores the
  // spinning threads take their time slices: training ran over 3x slower. A short spin keeps
  // the idle speed (docs/cpu_blas.md "OpenMP waiting"). libgomp reads it when it loads.
  if (!std::getenv("OMP_WAIT_POLICY") && !std::getenv("GOMP_SPINCOUNT")) {
    setenv("GOMP_SPINCOUNT", kSpinCount, 1);
    set_here.push_back("GOMP_SPINCOUNT");
  }
  if (set_here.empty() || argc < 1 || argv[argc] != nullptr) return;

  setenv(kReexecDone, "1", 1);
  std::fflush(nullptr);
  execv("/proc/self/exe", argv);  // returns only on failure
  exec_failure() = std::string("re-executing with the chosen environment failed: ") +
                   std::strerror(errno);
  for (const char* name : set_here) unsetenv(name);
  unsetenv(kReexecDone);
}

std::string blas_description() {
  if (!openblas_get_corename || !openblas_get_config)
    return "cblas (not OpenBLAS; kernels unknown)";
  // "OpenBLAS 0.3.21 NO_LAPACKE DYNAMIC_ARCH ..." -> "OpenBLAS 0.3.21"
  std::string s = openblas_get_config();
  if (const size_t first_space = s.find(' '); first_space != std::string::npos)
    s.resize(std::min(s.size(), s.find(' ', first_space + 1)));
  if (openblas_get_parallel) {
    const int parallel = openblas_get_parallel();
    s += parallel == 0 ? ", sequential" : parallel == 2 ? ", openmp" : ", pthreads";
  }
  if (openblas_get_num_threads) s += ", " + std::to_string(openblas_get_num_threads()) + " threads";
  const std::string core = openblas_get_corename();
  s += ", core " + core;

  const char* env_core = std::getenv("OPENBLAS_CORETYPE");
  const char* detected = std::getenv(kReexecMarker);
  const std::string best = best_openblas_core_for_cpu();
  if (!is_dynamic_arch_openblas()) {
    s += " (fixed when OpenBLAS was built)";
  } else if (!exec_failure().empty()) {
    s += " (detected by OpenBLAS; " + exec_failure() + ")";
  } else if (detected && env_core) {
    s += " (set by ssmtune; OpenBLAS detected " + std::string(detected) + ")";
  } else if (env_core) {
    s += " (OPENBLAS_CORETYPE=" + std::string(env_core) + " from the environment";
    if (openblas_core_rank(core) >= 0 && openblas_core_rank(core) < openblas_core_rank(best))
      s += "; this CPU can run " + best;
    s += ")";
  } else {
    s += " (detected by OpenBLAS)";
  }
  return s;
}

}  // namespace ssmtune::cpu
