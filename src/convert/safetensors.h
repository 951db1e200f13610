// Reader for the official DeepSeek V4 checkpoint container (formats.md 4.1): safetensors
// shards, each memory-mapped, plus model.safetensors.index.json naming the shard of every
// tensor. Headers are validated completely when a shard is opened (dtype, shape, offsets
// inside the file and consistent with the element count), so tensor bytes can be used in
// place afterwards. Only the mapping is held: the converter decodes one tensor at a time and
// releases the pages it read (release()), so memory stays bounded on a 150 GB checkpoint.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace ds4::convert {

enum class StDtype { F32, BF16, F16, F8_E4M3, F8_E8M0, I8, I64, I32, U8 };

std::string_view dtype_name(StDtype d);
size_t dtype_size(StDtype d);

struct StTensor {
  std::string name;
  StDtype dtype = StDtype::F32;
  std::vector<int64_t> shape;  // torch order (outermost first)
  const uint8_t* data = nullptr;
  size_t nbytes = 0;
  std::string shard;           // file name of the shard holding it (for messages)

  int64_t numel() const;
  std::string shape_string() const;  // "[512, 128]"
  std::string describe() const;      // "BF16 [512, 128]"
};

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  static std::unique_ptr<SafetensorsFile> open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::map<std::string, StTensor>& tensors() const { return tensors_; }
  // Tells the kernel the pages of `t` are no longer needed (they are file-backed and clean,
  // so this only drops them from this process's resident set).
  void release(const StTensor& t) const;

 private:
  SafetensorsFile() = default;
  std::string path_;
  int fd_ = -1;
  uint8_t* map_ = nullptr;
  size_t size_ = 0;
  std::map<std::string, StTensor> tensors_;
};

// A checkpoint directory: model.safetensors.index.json + shards, or a lone model.safetensors.
class Checkpoint {
 public:
  explicit Checkpoint(const std::string& dir);
  ~Checkpoint();

  const std::string& dir() const { return dir_; }
  // Every tensor of every shard, by name (sorted).
  const std::map<std::string, const StTensor*>& tensors() const { return all_; }
  const StTensor* find(std::string_view name) const;
  const StTensor& get(std::string_view name) const;  // throws "missing tensor NAME"
  void release(const StTensor& t) const;

 private:
  std::string dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> shards_;
  std::map<std::string, const StTensor*> all_;
  std::map<const StTensor*, const SafetensorsFile*> owner_;
};

}  // namespace ds4::convert
