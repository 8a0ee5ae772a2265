// core/dispatch.cpp — picks the CPU kernel set once (CPUID + XSAVE check), overridable.
#include "core/dispatch.hpp"

#include <atomic>
#include <cstdlib>

#include "core/cpu_features.hpp"
#include "nybble/error.hpp"
#include "nybble/ops.hpp"

namespace nybble::core {
namespace {

const cpu::Kernels* best_available() {
  const auto& f = cpu_features();
  if (f.has_avx512_set() && cpu::avx512_kernels()) return cpu::avx512_kernels();
  if (f.has_avx2_set() && cpu::avx2_kernels()) return cpu::avx2_kernels();
  return &cpu::ref_kernels();
}

const cpu::Kernels* resolve(const std::string& isa) {
  const auto& f = cpu_features();
  if (isa == "auto" || isa.empty()) return best_available();
  if (isa == "ref") return &cpu::ref_kernels();
  if (isa == "avx2" || isa == "avx512") {
    const bool is512 = isa == "avx512";
    const cpu::Kernels* k = is512 ? cpu::avx512_kernels() : cpu::avx2_kernels();
    if (!k)
      throw Error(ErrorKind::Value, "cpu isa = '" + isa + "' is not compiled into this build of nybble");
    if (!(is512 ? f.has_avx512_set() : f.has_avx2_set()))
      throw Error(ErrorKind::Value, "cpu isa = '" + isa + "' cannot run on this CPU (features: " + f.describe() + ")");
    return k;
  }
  throw Error(ErrorKind::Value, "cpu isa = '" + isa + "' is unknown (must be ref, avx2, avx512 or auto)");
}

std::atomic<const cpu::Kernels*>& current() {
  static std::atomic<const cpu::Kernels*> k{[] {
    const char* env = std::getenv("NYBBLE_CPU_ISA");
    return resolve(env ? env : "auto");
  }()};
  return k;
}

}  // namespace

const cpu::Kernels& cpu_kernels() { return *current().load(std::memory_order_acquire); }

std::string select_cpu_kernels(const std::string& isa) {
  const cpu::Kernels* k = resolve(isa);
  current().store(k, std::memory_order_release);
  return k->name;
}

}  // namespace nybble::core

namespace nybble {
std::string cpu_isa() { return core::cpu_kernels().name; }
std::string set_cpu_isa(const std::string& isa) { return core::select_cpu_kernels(isa); }
std::string cpu_features() { return core::cpu_features().describe(); }
}  // namespace nybble
