// safetensors_fuzz.cpp — arbitrary bytes into the safetensors reader; a file it accepts then goes
// through `nybble verify`'s checks (which read tensor data and parse QuantState JSON). Errors
// must be nybble::Error; anything else (a crash, an out-of-bounds read, undefined behaviour, a
// foreign exception, a hang) is a bug.
#include <cstddef>
#include <cstdint>
#include <vector>

#include "io/checkpoint.hpp"
#include "io/checkpoint_verify.hpp"
#include "nybble/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace nybble::io;
  try {
    auto file = SafetensorsFile::parse(std::vector<uint8_t>(data, data + size), "fuzz.safetensors");
    // Every accepted range lies inside the input: touch both ends of each tensor.
    volatile uint8_t sink = 0;
    for (const auto& [name, t] : file.tensors())
      if (t.nbytes() > 0) sink = static_cast<uint8_t>(sink ^ file.data(name)[0] ^ file.data(name)[t.nbytes() - 1]);
    (void)verify_checkpoint(Checkpoint::from_file(std::move(file)));
  } catch (const nybble::Error&) {
  }
  return 0;
}
