// The token kernels (kernels/token_ops.cu) run under the CUDA-on-CPU emulator against their CPU
// twins cpu::embedding_forward / embedding_backward / cross_entropy_forward /
// cross_entropy_backward, in every thread order of cuda_emu_test_util.h. Shapes: one token or
// row, ragged widths and vocabularies (not multiples of 32 or of a block: D = 33, 100, 257;
// V = 7, 33, 300, 1000, 9000 with 1024 threads a row), repeated ids, ignored targets (-100),
// all rows ignored, and logits of +-100, where exp overflows float without the max shift.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <ostream>
#include <random>
#include <vector>

#include "backend/cpu/ops_cpu.h"
#include "cuda_emu_test_util.h"
#include "kernels/token_ops.cuh"
#include "test_compare.h"

namespace {

using ssmtune::DType;
using ssmtune::Tensor;
using namespace ssmtune::testing;  // DeviceArray, DeviceFloats, random_f32, require_*
namespace cpu = ssmtune::cpu;
namespace kernels = ssmtune::kernels;

constexpr std::int64_t kIgnore = -100;

// n ids drawn from [0, V); V < n makes repeats certain.
std::vector<std::int64_t> random_ids(std::int64_t n, std::int64_t V, std::mt19937_64& rng) {
  std::uniform_int_distribution<std::int64_t> pick(0, V - 1);
  std::vector<std::int64_t> ids(static_cast<std::size_t>(n));
  for (auto& id : ids) id = pick(rng);
  return ids;
}

// Targets in [0, V), each ignored (-100) with probability ignored_fraction.
std::vector<std::int64_t> random_targets(std::int64_t rows, std::int64_t V, double ignored_fraction,
                                         std::mt19937_64& rng) {
  std::vector<std::int64_t> targets = random_ids(rows, V, rng);
  std::bernoulli_distribution ignored(ignored_fraction);
  for (auto& t : targets)
    if (ignored(rng)) t = kIgnore;
  return targets;
}

struct EmbeddingShape {
  std::int64_t n, V, D;
};
// One token; V < n (repeats); ragged D; V = 1 (every token the same row: 40 sums in order).
const EmbeddingShape kEmbeddingShapes[] = {
    {1, 1, 1}, {5, 7, 33}, {17, 9, 100}, {40, 13, 257}, {40, 1, 70}};

struct CrossEntropyShape {
  std::int64_t rows, V;
  double logit_range;       // logits uniform in [-range, range]
  double ignored_fraction;  // of the targets, -100
};
// 9000: 32 warps a row (the most). 100: exp(100) overflows float, so only the max-shifted sum
// is finite. 1.0: every row ignored.
const CrossEntropyShape kCrossEntropyShapes[] = {
    {1, 7, 5, 0.0},    {5, 33, 5, 0.3},   {9, 300, 5, 0.3},   {4, 1000, 5, 0.0},
    {2, 9000, 5, 0.0}, {6, 300, 30, 0.2}, {6, 257, 100, 0.2}, {4, 33, 5, 1.0}};

std::ostream& operator<<(std::ostream& os, const CrossEntropyShape& s) {
  return os << "rows " << s.rows << ", V " << s.V << ", logits in +-" << s.logit_range
            << ", ignored fraction " << s.ignored_fraction;
}

// The emulated kernel uses glibc's expf (< 1 ulp) where the twin uses fast_exp (< 2 ulp), so
// each exp term differs by at most 3 ulp = 1.8e-7 relative; the double sum of the terms then
// by at most that relative, and log of it by that absolute: per counted row |error| <= 1.8e-7
// (plus double rounding, ~1e-15). 3e-7 per row leaves a margin; measured at most 8.4e-9
// (V = 33), since most terms differ by far less than the bound.
constexpr double kLossErrorPerRow = 3e-7;

// Backward: scale exp(x - float(lse)). The lse of the two runs differ by <= 3e-7 (above), which
// can flip float(lse) by one ulp: 2^-23 |lse| relative on every exp, plus the 3 ulp of the exps
// themselves (3 ulp <= 3 2^-23 relative). Normwise against the largest |dlogit| (<= scale);
// |lse| <= range + log V; a factor 2 of margin. Measured at most 2.2e-8 (V = 33).
double backward_rtol(const CrossEntropyShape& s) {
  return 2 * (s.logit_range + std::log(double(s.V)) + 3) * 0x1p-23;
}

// The backward's inputs, twin result and device buffers for one shape.
struct BackwardCase {
  Tensor logits, ref;
  std::vector<std::int64_t> targets;
  float scale;
};

BackwardCase backward_case(const CrossEntropyShape& s, std::mt19937_64& rng) {
  BackwardCase c{random_f32({s.rows, s.V}, rng, -s.logit_range, s.logit_range),
                 Tensor::empty({s.rows, s.V}, DType::F32),
                 random_targets(s.rows, s.V, s.ignored_fraction, rng), 0.0f};
  const auto counted =
      std::count_if(c.targets.begin(), c.targets.end(), [](std::int64_t t) { return t >= 0; });
  c.scale = 1.0f / float(counted > 0 ? counted : 1);  // the mean over counted rows, as training
  cpu::cross_entropy_backward<float>(s.rows, s.V, c.logits.data<float>(), c.targets.data(), c.scale,
                                     c.ref.data<float>());
  return c;
}

// Ignored rows must be exact zeros; a row of zeros is what the twin writes too.
void require_ignored_rows_zero(const Tensor& dlogits, const std::vector<std::int64_t>& targets,
                               std::int64_t V) {
  for (std::size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] >= 0) continue;
    INFO("ignored row " << r);
    const float* row = dlogits.data<float>() + std::int64_t(r) * V;
    REQUIRE(std::all_of(row, row + V, [](float g) { return g == 0.0f; }));
  }
}

}  // namespace

TEST_CASE("emulated embedding kernels match cpu::embedding_forward and embedding_backward",
          "[cuda-emu][token-ops]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(31);
  for (const EmbeddingShape& s : kEmbeddingShapes) {
    INFO("n " << s.n << ", V " << s.V << ", D " << s.D);
    const std::vector<std::int64_t> ids = random_ids(s.n, s.V, rng);
    const Tensor table = random_f32({s.V, s.D}, rng, -1, 1);
    const Tensor dout = random_f32({s.n, s.D}, rng, -1, 1);
    const Tensor dtable0 = random_f32({s.V, s.D}, rng, -1, 1);  // accumulated into: not zero
    Tensor out_ref = Tensor::empty({s.n, s.D}, DType::F32);
    Tensor dtable_ref = dtable0.clone();
    cpu::embedding_forward<float>(s.n, s.D, ids.data(), table.data<float>(), out_ref.data<float>());
    cpu::embedding_backward<float>(s.n, s.D, ids.data(), dout.data<float>(),
                                   dtable_ref.data<float>());

    DeviceArray<std::int64_t> d_ids(ids);
    DeviceFloats d_table(table), d_out(s.n * s.D), d_dout(dout), d_dtable(dtable0);
    kernels::embedding_forward(s.n, s.D, d_ids.get(), d_table.get(), d_out.get(), nullptr);
    require_launch_ok();
    kernels::embedding_backward(s.n, s.D, d_ids.get(), d_dout.get(), d_dtable.get(), nullptr);
    require_launch_ok();
    // Forward copies. Backward makes the twin's additions in the twin's order (each column's
    // tokens in token order, no product to fuse): both exact.
    require_close("out", d_out.to_host({s.n, s.D}), out_ref, 0, 0);
    require_close("dtable", d_dtable.to_host({s.V, s.D}), dtable_ref, 0, 0);
  }
}

TEST_CASE("emulated cross_entropy_forward matches cpu::cross_entropy_forward",
          "[cuda-emu][token-ops]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(32);
  for (const CrossEntropyShape& s : kCrossEntropyShapes) {
    INFO(s);
    const Tensor logits = random_f32({s.rows, s.V}, rng, -s.logit_range, s.logit_range);
    const std::vector<std::int64_t> targets = random_targets(s.rows, s.V, s.ignored_fraction, rng);
    std::int64_t count_ref = -1;
    const double loss_ref = cpu::cross_entropy_forward<float>(s.rows, s.V, logits.data<float>(),
                                                              targets.data(), &count_ref);

    DeviceFloats d_logits(logits);
    DeviceArray<std::int64_t> d_targets(targets), d_count(1);
    DeviceArray<double> d_loss(1);
    DeviceArray<unsigned char> d_work(kernels::cross_entropy_workspace_bytes(s.rows));
    kernels::cross_entropy_forward(s.rows, s.V, d_logits.get(), d_targets.get(), d_loss.get(),
                                   d_count.get(), d_work.get(), nullptr);
    require_launch_ok();
    const double loss = d_loss.to_host()[0];
    INFO("loss " << loss << ", twin " << loss_ref << ", |error| " << std::fabs(loss - loss_ref));
    REQUIRE(d_count.to_host()[0] == count_ref);
    REQUIRE(std::fabs(loss - loss_ref) <= kLossErrorPerRow * double(count_ref));
    if (count_ref == 0) REQUIRE(loss == 0.0);
  }
}

TEST_CASE("emulated cross_entropy_backward matches cpu::cross_entropy_backward, in place too",
          "[cuda-emu][token-ops]") {
  const cuda_emu::Schedule order = GENERATE(from_range(kSchedules));
  cuda_emu::ScheduleScope scope(order);
  INFO("schedule " << cuda_emu::schedule_name(order));
  std::mt19937_64 rng(33);
  for (const CrossEntropyShape& s : kCrossEntropyShapes) {
    INFO(s);
    const BackwardCase c = backward_case(s, rng);
    DeviceArray<std::int64_t> d_targets(c.targets);
    // Out of place: dlogits starts as NaN, so an element never written fails; logits unchanged.
    DeviceFloats d_logits(c.logits), d_dlogits(s.rows * s.V);
    kernels::cross_entropy_backward(s.rows, s.V, d_logits.get(), d_targets.get(), c.scale,
                                    d_dlogits.get(), nullptr);
    require_launch_ok();
    const Tensor out_of_place = d_dlogits.to_host({s.rows, s.V});
    require_close("logits after", d_logits.to_host({s.rows, s.V}), c.logits, 0, 0);
    // In place: the gradient overwrites the logits.
    DeviceFloats d_inplace(c.logits);
    kernels::cross_entropy_backward(s.rows, s.V, d_inplace.get(), d_targets.get(), c.scale,
                                    d_inplace.get(), nullptr);
    require_launch_ok();
    const Tensor in_place = d_inplace.to_host({s.rows, s.V});

    require_ignored_rows_zero(out_of_place, c.targets, s.V);
    require_ignored_rows_zero(in_place, c.targets, s.V);
    // The same operations on the same inputs: in place and out of place agree to the bit.
    if (s.ignored_fraction < 1.0) {
      require_close("in place vs out of place", in_place, out_of_place, 0, 0);
      require_close("dlogits", out_of_place, c.ref, backward_rtol(s), 0);
    }
  }
}
