// tools/progress.cpp — drawing the progress bar (see progress.hpp).
#include "progress.hpp"

#include <sys/ioctl.h>
#include <unistd.h>

#include <cstdio>

namespace nybble::cli {
namespace {

constexpr int kBarWidth = 24;
constexpr auto kRedraw = std::chrono::milliseconds(100);

int terminal_width() {
  winsize w{};
  if (::ioctl(STDERR_FILENO, TIOCGWINSZ, &w) == 0 && w.ws_col >= 40) return w.ws_col;
  return 80;
}

}  // namespace

std::string human_bytes(uint64_t n) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(n);
  int u = 0;
  while (v >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof(buf), "%llu B", static_cast<unsigned long long>(n));
  else std::snprintf(buf, sizeof(buf), v < 100.0 ? "%.2f %s" : "%.1f %s", v, units[u]);
  return buf;
}

Progress::Progress(std::ostream& out, std::string label, bool tty)
    : out_(out), label_(std::move(label)), tty_(tty), start_(std::chrono::steady_clock::now()) {}

std::string Progress::status(uint64_t done, uint64_t total, size_t items, size_t items_total) const {
  const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%3d%%  %zu/%zu tensors  %s/%s  %.1f s", static_cast<int>(frac * 100.0), items, items_total,
                human_bytes(done).c_str(), human_bytes(total).c_str(), secs);
  return buf;
}

void Progress::update(uint64_t done, uint64_t total, size_t items, size_t items_total, std::string_view what) {
  const double frac = total ? static_cast<double>(done) / static_cast<double>(total) : 1.0;
  if (!tty_) {
    const int tenth = static_cast<int>(frac * 10.0);
    if (tenth == last_tenth_) return;
    last_tenth_ = tenth;
    out_ << label_ << ": " << status(done, total, items, items_total) << '\n' << std::flush;
    return;
  }
  const auto now = std::chrono::steady_clock::now();
  if (drawn_ && items != items_total && now - last_draw_ < kRedraw) return;
  last_draw_ = now;
  drawn_ = true;
  const int filled = static_cast<int>(frac * kBarWidth);
  std::string line = label_ + " [" + std::string(static_cast<size_t>(filled), '#') +
                     std::string(static_cast<size_t>(kBarWidth - filled), '.') + "] " + status(done, total, items, items_total);
  if (!what.empty()) line += "  " + std::string(what);
  const auto width = static_cast<size_t>(terminal_width() - 1);
  if (line.size() > width) line.resize(width);
  out_ << "\r\033[K" << line << std::flush;
}

void Progress::finish() {
  if (tty_ && drawn_) out_ << '\n' << std::flush;
}

}  // namespace nybble::cli
