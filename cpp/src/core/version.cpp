// core/version.cpp — the library version, set by CMake from project(VERSION).
#include "nybble/ops.hpp"

namespace nybble {
std::string version() { return NYBBLE_VERSION; }
}  // namespace nybble
