// io/checkpoint.hpp — a checkpoint on disk: one safetensors file, or a Hugging Face model folder
// (config.json with model.safetensors, or the shards that model.safetensors.index.json lists).
//
// Opening checks the folder's structure (the index's file names, that every tensor of every shard
// is listed under that shard and nothing else is, no tensor in two shards) and each file's header
// (io/safetensors.hpp); tensor data is mapped, not read.
#pragma once

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "io/safetensors.hpp"

namespace nybble::io {

inline constexpr const char* kConfigFile = "config.json";
inline constexpr const char* kSingleFile = "model.safetensors";
inline constexpr const char* kIndexFile = "model.safetensors.index.json";

class Checkpoint {
 public:
  // path: a .safetensors file or a model folder. Throws nybble::Error naming the file and rule.
  static Checkpoint open(const std::string& path);
  // A checkpoint of one file already in memory (no folder, no config).
  static Checkpoint from_file(SafetensorsFile file);

  bool is_folder() const { return !folder_.empty(); }
  const std::filesystem::path& folder() const { return folder_; }
  // The safetensors files, in the index's order of first appearance (one without an index).
  const std::vector<SafetensorsFile>& files() const { return files_; }
  // File names relative to the folder (or the file's path for a lone file), parallel to files().
  const std::vector<std::string>& file_names() const { return file_names_; }
  // config.json (a JSON object) when the folder has one.
  const std::optional<nlohmann::json>& config() const { return config_; }
  // The index's JSON when the model is sharded.
  const std::optional<nlohmann::json>& index() const { return index_; }

  // Every tensor name, sorted, and where each lives.
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  const SafetensorsFile& file_of(const std::string& name) const;
  const SafetensorsTensor& info(const std::string& name) const { return file_of(name).info(name); }
  const uint8_t* data(const std::string& name) const { return file_of(name).data(name); }
  uint64_t tensor_bytes() const;  // sum of all tensors' data

 private:
  void add_file(SafetensorsFile file, const std::string& name);

  std::filesystem::path folder_;
  std::vector<SafetensorsFile> files_;
  std::vector<std::string> file_names_;
  std::map<std::string, size_t> where_;
  std::optional<nlohmann::json> config_, index_;
};

// Reads a JSON file; throws nybble::Error naming it when it cannot be read or parsed.
nlohmann::json read_json_file(const std::filesystem::path& path);

}  // namespace nybble::io
