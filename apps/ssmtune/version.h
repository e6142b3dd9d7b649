// What `ssmtune --version` prints: the version and what this build can run on.
#pragma once

#include <string>

namespace ssmtune {
std::string version_text();
}
