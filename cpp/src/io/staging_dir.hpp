// io/staging_dir.hpp — all-or-nothing output: files are written into a temporary folder beside the
// target, which is renamed onto the target only when everything is written. Until then the target
// is untouched; on an error (or an exception unwinding past it) the temporary folder is removed,
// so a failed run leaves nothing behind.
#pragma once

#include <filesystem>
#include <string>

namespace nybble::io {

class StagingDir {
 public:
  // Refuses (nybble::Error) when target exists and replace is false, or its parent folder does not
  // exist. With replace, an existing target is removed only once the new one is in place.
  StagingDir(const std::filesystem::path& target, bool replace);
  ~StagingDir();
  StagingDir(const StagingDir&) = delete;
  StagingDir& operator=(const StagingDir&) = delete;

  const std::filesystem::path& path() const { return tmp_; }
  // Flushes the folder to disk and renames it onto the target.
  void commit();

 private:
  std::filesystem::path target_, tmp_;
  bool replace_ = false, committed_ = false;
};

// Writes a small text file and flushes it to disk; throws nybble::Error naming it on failure.
void write_text_file(const std::filesystem::path& path, const std::string& text);

}  // namespace nybble::io
