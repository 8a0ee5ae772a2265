// io/staging_dir.cpp — the temporary folder and the final rename (see staging_dir.hpp).
#include "io/staging_dir.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <vector>

#include "nybble/error.hpp"

namespace nybble::io {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void os_fail(const fs::path& p, const std::string& what) {
  const std::string name = p.string();
  throw Error(ErrorKind::Runtime, "'" + name + "': " + what + " (" + std::strerror(errno) + ")");
}

void fsync_path(const fs::path& p, int flags) {
  const int fd = ::open(p.c_str(), flags | O_CLOEXEC);
  if (fd < 0) os_fail(p, "cannot be opened to flush it");
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  errno = err;
  if (rc != 0) os_fail(p, "cannot be flushed to disk");
}

}  // namespace

StagingDir::StagingDir(const fs::path& target, bool replace) : target_(target), replace_(replace) {
  if (target_.filename().empty()) target_ = target_.parent_path();  // "out/" names "out"
  const fs::path parent = target_.has_parent_path() ? target_.parent_path() : fs::path(".");
  std::error_code ec;
  if (!fs::is_directory(parent, ec)) throw Error(ErrorKind::Runtime, "output '" + target_.string() + "': the folder '" + parent.string() + "' does not exist");
  if (fs::symlink_status(target_, ec).type() != fs::file_type::not_found && !replace_)
    throw Error(ErrorKind::Runtime, "output '" + target_.string() + "' exists (remove it, choose another path, or pass --force)");
  const std::string name = target_.filename().string();
  const std::string tmpl = (parent / ("." + name + ".nybble-tmp-XXXXXX")).string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (::mkdtemp(buf.data()) == nullptr) os_fail(tmpl, "temporary folder cannot be created");
  tmp_ = buf.data();
}

StagingDir::~StagingDir() {
  if (committed_) return;
  std::error_code ec;
  fs::remove_all(tmp_, ec);  // nothing is left behind; a failure here has no one to report to
}

void StagingDir::commit() {
  fsync_path(tmp_, O_RDONLY | O_DIRECTORY);
  std::error_code ec;
  const bool exists = fs::symlink_status(target_, ec).type() != fs::file_type::not_found;
  if (exists && !replace_) throw Error(ErrorKind::Runtime, "output '" + target_.string() + "' appeared while it was being written");
  const fs::path old = tmp_.string() + ".old";
  if (exists && std::rename(target_.c_str(), old.c_str()) != 0) os_fail(target_, "cannot be moved aside to be replaced");
  if (std::rename(tmp_.c_str(), target_.c_str()) != 0) {
    const int err = errno;
    if (exists) std::rename(old.c_str(), target_.c_str());
    errno = err;
    os_fail(target_, "the finished output cannot be renamed into place");
  }
  committed_ = true;
  if (exists) fs::remove_all(old, ec);
  fsync_path(target_.has_parent_path() ? target_.parent_path() : fs::path("."), O_RDONLY | O_DIRECTORY);
}

void write_text_file(const fs::path& path, const std::string& text) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) os_fail(path, "cannot be created");
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t k = ::write(fd, text.data() + done, text.size() - done);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) {
      const int err = errno;
      ::close(fd);
      errno = err;
      os_fail(path, "write failed");
    }
    done += static_cast<size_t>(k);
  }
  const int rc = ::fsync(fd);
  const int err = errno;
  ::close(fd);
  errno = err;
  if (rc != 0) os_fail(path, "cannot be flushed to disk");
}

}  // namespace nybble::io
