#include "model/linear_hook.h"

namespace ssmtune {

const char* linear_site_name(LinearSite site) {
  switch (site) {
    case LinearSite::InProj: return "in_proj";
    case LinearSite::XProj: return "x_proj";
    case LinearSite::DtProj: return "dt_proj";
    case LinearSite::OutProj: return "out_proj";
  }
  return "?";
}

}  // namespace ssmtune
