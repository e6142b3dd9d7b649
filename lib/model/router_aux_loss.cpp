#include "model/router_aux_loss.h"

#include "core/error.h"

namespace ssmtune {

RouterAuxLoss router_aux_loss(const std::vector<LayerRouting>& layers, std::int64_t X) {
  RouterAuxLoss out;
  out.dprob.assign(std::size_t(X), 0.0);
  if (layers.empty()) return out;
  const std::int64_t k = layers[0].experts.dim(1);
  std::vector<double> count(std::size_t(k * X), 0.0), prob_sum(std::size_t(X), 0.0);
  std::int64_t n_counted = 0;
  for (const LayerRouting& l : layers) {
    const std::int64_t rows = l.probs.dim(0);
    check(l.probs.dim(1) == X && l.experts.shape() == Shape{rows, k},
          "router_aux_loss: routing shapes disagree");
    const std::int64_t* sel = l.experts.data<std::int64_t>();
    for (std::int64_t t = 0; t < rows; ++t) {
      if (l.counted.defined() && l.counted.data<std::int64_t>()[t] == 0) continue;
      ++n_counted;
      for (std::int64_t j = 0; j < k; ++j) count[std::size_t(j * X + sel[t * k + j])] += 1;
      for (std::int64_t e = 0; e < X; ++e)
        prob_sum[std::size_t(e)] += l.probs.dtype() == DType::F32
                                        ? double(l.probs.data<float>()[t * X + e])
                                        : l.probs.data<double>()[t * X + e];
    }
  }
  if (n_counted == 0) return out;
  const double n = double(n_counted);
  for (std::int64_t e = 0; e < X; ++e) {
    double f_sum = 0;  // sum_j f[j, e]
    for (std::int64_t j = 0; j < k; ++j) f_sum += count[std::size_t(j * X + e)] / n;
    out.value += double(X) * f_sum * prob_sum[std::size_t(e)] / n;
    out.dprob[std::size_t(e)] = double(X) * f_sum / n;
  }
  return out;
}

}  // namespace ssmtune
