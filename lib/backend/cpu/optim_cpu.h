// CPU reference of the optimizer ops (Backend::sum_squares, adamw_update).
#pragma once

#include <cstdint>

namespace ssmtune::cpu {

// Sum of x[i]^2 in double: fixed-size blocks summed in parallel, then the block sums in order,
// so the result is the same for every thread count.
template <class T>
double sum_squares(std::int64_t n, const T* x);

// torch.optim.AdamW's update for n elements (see Backend::adamw_update).
template <class T>
void adamw_update(std::int64_t n, T* param, const T* grad, T* m, T* v, double lr, double beta1,
                  double beta2, double eps, double weight_decay, std::int64_t step);

}  // namespace ssmtune::cpu
