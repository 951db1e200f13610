// The conversion pipeline (formats.md 4.4): config.json -> tensor plan -> validation against
// the checkpoint -> GGUF header -> per tensor (per expert for routed experts): exact f32 ->
// recipe type -> written, then the source pages and the buffers are released. Peak memory is
// one expert matrix or one row chunk in f32 plus its encoding, whatever the model size.
#include "convert/convert.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <memory>
#include <optional>
#include <vector>

#include "convert/imatrix.h"
#include "convert/model_config.h"
#include "convert/recipe.h"
#include "convert/safetensors.h"
#include "convert/source_decode.h"
#include "convert/tensor_plan.h"
#include "convert/tokenizer_hook.h"
#include "core/error.h"
#include "core/fp16.h"
#include "core/thread_pool.h"
#include "gguf/gguf.h"
#include "quant/quant.h"

namespace ds4::convert {

namespace fs = std::filesystem;

namespace {

// Rows of a non-expert tensor decoded at once: bounds the f32 buffer to ~64 MiB.
constexpr int64_t kChunkElems = int64_t(16) << 20;

struct Job {
  const PlannedTensor* plan;
  GgmlType type;
};

// Encodes rows x cols floats into `type`.
void encode(GgmlType type, const PlannedTensor& t, const float* src, int64_t rows, int64_t cols,
            const float* importance, ThreadPool* pool, std::vector<uint8_t>& out) {
  const size_t n = static_cast<size_t>(rows * cols);
  out.resize(row_bytes(type, cols) * static_cast<size_t>(rows));
  switch (type) {
    case GgmlType::F32:
      std::copy(src, src + n, reinterpret_cast<float*>(out.data()));
      return;
    case GgmlType::BF16: {
      auto* o = reinterpret_cast<uint16_t*>(out.data());
      for (size_t i = 0; i < n; ++i) o[i] = f32_to_bf16(src[i]);
      return;
    }
    case GgmlType::F16: {
      auto* o = reinterpret_cast<uint16_t*>(out.data());
      for (size_t i = 0; i < n; ++i) {
        o[i] = f32_to_fp16(src[i]);
        // A finite weight that F16 cannot hold would silently become infinity.
        if (std::isfinite(src[i]) && (o[i] & 0x7C00u) == 0x7C00u)
          fail("tensor {}: value {} at element {} does not fit in F16 (max 65504); this recipe "
               "cannot store it",
               t.name, src[i], i);
      }
      return;
    }
    default:
      quant::quantize_rows(type, src, out.data(), rows, cols, importance, pool);
  }
}

// The types whose searches take an importance vector (formats.md 3.7).
bool uses_importance(GgmlType t) {
  return t == GgmlType::Q2_K || t == GgmlType::Q4_K || t == GgmlType::IQ2_XXS;
}

const StTensor* scale_of(const Checkpoint& ck, const StTensor& w) {
  if (w.dtype == StDtype::F8_E4M3 || w.dtype == StDtype::I8) return &ck.get(scale_name(w.name));
  return nullptr;
}

void decode_parallel(const StTensor& w, const StTensor* scale, int64_t r0, int64_t r1,
                     int64_t cols, float* out, ThreadPool* pool) {
  const int64_t grain = std::max<int64_t>(1, 65536 / std::max<int64_t>(cols, 1));
  parallel_for(pool, r1 - r0, grain, [&](int64_t b, int64_t e, int) {
    decode_rows(w, scale, r0 + b, r0 + e, out + b * cols);
  });
}

class Converter {
 public:
  explicit Converter(const ConvertOptions& o) : opts_(o), pool_(o.threads) {}

  void run() {
    const fs::path dir(opts_.input_dir);
    if (!fs::is_directory(dir)) fail("input {} is not a directory", opts_.input_dir);
    const ModelConfig cfg = load_model_config((dir / "config.json").string());
    const Recipe recipe = parse_recipe(opts_.recipe);
    Checkpoint ck(opts_.input_dir);
    const std::vector<PlannedTensor> plan = build_plan(cfg);
    validate_checkpoint(plan, cfg, ck);

    std::optional<Imatrix> im;
    if (!opts_.imatrix_path.empty()) im = Imatrix::load(opts_.imatrix_path);

    std::vector<Job> jobs;
    size_t total_units = 0;
    for (const PlannedTensor& p : plan) {
      jobs.push_back({&p, choose_type(recipe, p, ck.get(p.sources[0]).dtype)});
      total_units += p.sources.size();
      // Look every expert up now, so a wrongly sized imatrix entry fails before hours of work.
      if (im && uses_importance(jobs.back().type) && is_routed_expert(p.role))
        for (size_t e = 0; e < p.sources.size(); ++e)
          (void)im->find_expert(p.name, p.sources[e], static_cast<int64_t>(e), p.src_shape[1],
                                static_cast<int64_t>(p.sources.size()));
    }

    gguf::Writer w(opts_.output_path, 32);
    std::string name = fs::path(opts_.input_dir).lexically_normal().filename().string();
    if (name.empty())
      name = fs::path(opts_.input_dir).lexically_normal().parent_path().filename().string();
    std::vector<gguf::KeyValue> kv = model_metadata(cfg, name);
    if (fs::exists(dir / "tokenizer.json"))
      merge_tokenizer(kv, tokenizer_metadata((dir / "tokenizer.json").string(), cfg.vocab));
    if (im) {
      kv.push_back({"quantize.imatrix.file", gguf::Value::string(opts_.imatrix_path)});
      kv.push_back({"quantize.imatrix.entries_count", gguf::Value::u64(im->entries().size())});
      if (!im->dataset().empty())
        kv.push_back({"quantize.imatrix.dataset", gguf::Value::string(im->dataset())});
      if (im->chunks() > 0)
        kv.push_back({"quantize.imatrix.chunks_count",
                      gguf::Value::u64(static_cast<uint64_t>(im->chunks()))});
    }
    for (auto& e : kv) w.add_kv(std::move(e.key), std::move(e.value));
    for (const Job& j : jobs) w.add_tensor(j.plan->name, j.type, j.plan->ne);
    w.begin_data();

    size_t done = 0;
    for (const Job& j : jobs) {
      const PlannedTensor& p = *j.plan;
      if (p.role == Role::Tid2eid) {
        write_tid2eid(ck, p, cfg, w);
      } else if (is_routed_expert(p.role)) {
        write_experts(ck, p, j.type, im ? &*im : nullptr, w, done, total_units);
        continue;  // progress reported per expert
      } else {
        write_dense(ck, p, j.type, w);
      }
      ++done;
      if (opts_.progress) opts_.progress(done, total_units, p.name);
    }
    w.finish();
  }

 private:
  // The tokenizer module writes bos/eos ids too; config.json's must agree with them.
  static void merge_tokenizer(std::vector<gguf::KeyValue>& kv, std::vector<gguf::KeyValue> tk) {
    for (gguf::KeyValue& t : tk) {
      auto it = std::find_if(kv.begin(), kv.end(), [&](const auto& e) { return e.key == t.key; });
      if (it == kv.end()) {
        kv.push_back(std::move(t));
        continue;
      }
      if (it->value.as_u64(it->key) != t.value.as_u64(t.key))
        fail("{}: tokenizer.json gives {} but config.json gives {}", t.key,
             t.value.as_u64(t.key), it->value.as_u64(it->key));
      it->value = std::move(t.value);
    }
  }

  void write_tid2eid(const Checkpoint& ck, const PlannedTensor& p, const ModelConfig& cfg,
                     gguf::Writer& w) {
    const StTensor& s = ck.get(p.sources[0]);
    std::vector<int32_t> ids(static_cast<size_t>(s.numel()));
    decode_tid2eid(s, cfg.n_experts, ids.data());
    w.write_tensor_data(ids.data(), ids.size() * 4);
    ck.release(s);
  }

  void write_dense(const Checkpoint& ck, const PlannedTensor& p, GgmlType type, gguf::Writer& w) {
    const StTensor& s = ck.get(p.sources[0]);
    const StTensor* scale = scale_of(ck, s);
    const int64_t rows = logical_rows(s), cols = logical_cols(s);
    const int64_t chunk = std::max<int64_t>(1, kChunkElems / std::max<int64_t>(cols, 1));
    std::vector<float> buf(static_cast<size_t>(std::min(rows, chunk) * cols));
    std::vector<uint8_t> out;
    for (int64_t r0 = 0; r0 < rows; r0 += chunk) {
      const int64_t r1 = std::min(rows, r0 + chunk);
      decode_parallel(s, scale, r0, r1, cols, buf.data(), &pool_);
      encode(type, p, buf.data(), r1 - r0, cols, nullptr, &pool_, out);
      w.write_tensor_data(out.data(), out.size());
    }
    ck.release(s);
    if (scale) ck.release(*scale);
  }

  void write_experts(const Checkpoint& ck, const PlannedTensor& p, GgmlType type,
                     const Imatrix* im, gguf::Writer& w, size_t& done, size_t total) {
    const int64_t n_exp = static_cast<int64_t>(p.sources.size());
    const int64_t rows = p.src_shape[0], cols = p.src_shape[1];
    const bool weighted = uses_importance(type);
    std::vector<float> buf;
    std::vector<uint8_t> out;
    for (int64_t e = 0; e < n_exp; ++e) {
      const StTensor& s = ck.get(p.sources[static_cast<size_t>(e)]);
      const StTensor* scale = scale_of(ck, s);
      if (type == GgmlType::MXFP4 && s.dtype == StDtype::I8) {
        out.resize(row_bytes(type, cols) * static_cast<size_t>(rows));
        repack_fp4_to_mxfp4(s, *scale, out.data());
      } else {
        // Whole expert at once: the IQ2_XXS weight-energy fallback sums over all its rows.
        buf.resize(static_cast<size_t>(rows * cols));
        decode_parallel(s, scale, 0, rows, cols, buf.data(), &pool_);
        const float* qw = (im && weighted)
                              ? im->find_expert(p.name, s.name, e, cols, n_exp)
                              : nullptr;
        encode(type, p, buf.data(), rows, cols, qw, &pool_, out);
      }
      w.write_tensor_data(out.data(), out.size());
      ck.release(s);
      if (scale) ck.release(*scale);
      ++done;
      if (opts_.progress) opts_.progress(done, total, p.name);
    }
  }

  const ConvertOptions& opts_;
  ThreadPool pool_;
};

}  // namespace

void convert_checkpoint(const ConvertOptions& opts) {
  if (opts.output_path.empty()) fail("no output path given");
  Converter(opts).run();
}

}  // namespace ds4::convert
