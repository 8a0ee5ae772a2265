// tools/progress.hpp — progress of a long run on stderr: a bar redrawn in place on a terminal, a
// plain line at every tenth of the work otherwise (logs, CI).
#pragma once

#include <chrono>
#include <cstdint>
#include <ostream>
#include <string>
#include <string_view>

namespace nybble::cli {

class Progress {
 public:
  // label: what is running ("quantize"); tty: draw a bar (stderr is a terminal).
  Progress(std::ostream& out, std::string label, bool tty);
  // done/total in bytes; items of items_total (tensors); what: the item just finished.
  void update(uint64_t done, uint64_t total, size_t items, size_t items_total, std::string_view what);
  // Ends the bar's line.
  void finish();

 private:
  std::string status(uint64_t done, uint64_t total, size_t items, size_t items_total) const;

  std::ostream& out_;
  std::string label_;
  bool tty_;
  int last_tenth_ = -1;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

// "1.23 GiB", "456.0 MiB", "12 B".
std::string human_bytes(uint64_t n);

}  // namespace nybble::cli
