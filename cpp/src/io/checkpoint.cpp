// io/checkpoint.cpp — opening a checkpoint file or folder (see checkpoint.hpp).
#include "io/checkpoint.hpp"

#include <fstream>
#include <set>
#include <sstream>

#include "nybble/error.hpp"

namespace nybble::io {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void bad(const fs::path& where, const std::string& what) {
  const std::string name = where.string();
  throw Error(ErrorKind::Value, "'" + name + "': " + what);
}

// A shard named by the index must be a plain file name inside the folder.
bool plain_file_name(const std::string& s) {
  return !s.empty() && s != "." && s != ".." && s.find('/') == std::string::npos && s.find('\\') == std::string::npos &&
         s.find('\0') == std::string::npos;
}

}  // namespace

nlohmann::json read_json_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  const std::string name = path.string();
  if (!in) throw Error(ErrorKind::Runtime, "'" + name + "': cannot be opened");
  std::stringstream text;
  text << in.rdbuf();
  try {
    return nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    bad(path, std::string("is not valid JSON (") + e.what() + ")");
  }
}

void Checkpoint::add_file(SafetensorsFile file, const std::string& name) {
  const size_t k = files_.size();
  for (const auto& [tensor, info] : file.tensors()) {
    auto [it, fresh] = where_.emplace(tensor, k);
    if (!fresh)
      bad(file.origin(), "tensor '" + tensor + "' is also in '" + files_[it->second].origin() + "'");
  }
  files_.push_back(std::move(file));
  file_names_.push_back(name);
}

Checkpoint Checkpoint::from_file(SafetensorsFile file) {
  Checkpoint c;
  const std::string name = file.origin();
  c.add_file(std::move(file), name);
  return c;
}

Checkpoint Checkpoint::open(const std::string& path_arg) {
  const fs::path path(path_arg);
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (ec || !fs::exists(status)) throw Error(ErrorKind::Runtime, "'" + path_arg + "': no such file or folder");
  if (!fs::is_directory(status)) return from_file(SafetensorsFile::read(path_arg));

  Checkpoint c;
  c.folder_ = path;
  if (fs::exists(path / kConfigFile)) {
    c.config_ = read_json_file(path / kConfigFile);
    if (!c.config_->is_object()) bad(path / kConfigFile, "is not a JSON object");
  }
  if (fs::exists(path / kIndexFile)) {
    const fs::path index_path = path / kIndexFile;
    c.index_ = read_json_file(index_path);
    const auto& index = *c.index_;
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      bad(index_path, "has no \"weight_map\" object (tensor name -> shard file)");
    std::vector<std::string> shards;
    std::map<std::string, std::set<std::string>> listed;  // shard -> tensors the index puts there
    for (const auto& [tensor, shard] : index["weight_map"].items()) {
      if (!shard.is_string() || !plain_file_name(shard.get<std::string>()))
        bad(index_path, "weight_map['" + tensor + "'] = " + shard.dump() + " is not a file name in the folder");
      const auto name = shard.get<std::string>();
      if (!listed.count(name)) shards.push_back(name);
      listed[name].insert(tensor);
    }
    for (const auto& shard : shards) {
      c.add_file(SafetensorsFile::read((path / shard).string()), shard);
      const auto& file = c.files_.back();
      for (const auto& [tensor, info] : file.tensors())
        if (!listed[shard].count(tensor))
          bad(index_path, "tensor '" + tensor + "' of '" + shard + "' is not listed under that file in weight_map");
      for (const auto& tensor : listed[shard])
        if (!file.contains(tensor)) bad(index_path, "weight_map puts tensor '" + tensor + "' in '" + shard + "', which does not hold it");
    }
  } else if (fs::exists(path / kSingleFile)) {
    c.add_file(SafetensorsFile::read((path / kSingleFile).string()), kSingleFile);
  } else {
    bad(path, std::string("holds neither ") + kSingleFile + " nor " + kIndexFile);
  }
  return c;
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> v;
  v.reserve(where_.size());
  for (const auto& [name, k] : where_) v.push_back(name);
  return v;
}

const SafetensorsFile& Checkpoint::file_of(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) throw Error(ErrorKind::Value, "checkpoint: no tensor named '" + name + "'");
  return files_[it->second];
}

uint64_t Checkpoint::tensor_bytes() const {
  uint64_t n = 0;
  for (const auto& f : files_)
    for (const auto& [name, t] : f.tensors()) n += t.nbytes();
  return n;
}

}  // namespace nybble::io
