// Helper for the tplinear CLI tests (tests/cli): writes checkpoints, good and broken, and checks
// the .npy files that `tplinear run --dump` writes.
//
//   cli_helper write <single|sharded|norms1d|badshape|truncated> <dir> <preset>
//       Every tensor `tplinear run --model <preset>` reads, with HF names and random values:
//       single   one <dir>/model.safetensors
//       sharded  two shards + <dir>/model.safetensors.index.json
//       norms1d  like single, but the RMSNorm weights stored 1-D [H] as HF checkpoints do
//       badshape like single, but layer 0's q_proj has one row too many
//       truncated like single, then cut to half its size
//   cli_helper broken <short|header_outside|offsets_past_end> <file>
//   cli_helper check-dump <dir> <hidden> <tolerance>
//       input/output/reference_dp0.npy exist, have `hidden` columns, and output ~ reference.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "tpl/model.h"
#include "tpl/npy.h"
#include "tpl/safetensors.h"
#include "tpl/tensor.h"

namespace fs = std::filesystem;

namespace {

struct Named {
  std::string name;
  tpl::Tensor t;
  bool one_d = false;  // store as [cols] instead of [1, cols]
};

tpl::Tensor random_tensor(std::mt19937_64& gen, std::int64_t rows, std::int64_t cols,
                          float stddev) {
  std::normal_distribution<float> dist(0.f, stddev);
  std::vector<float> v(static_cast<std::size_t>(rows * cols));
  for (auto& x : v) x = dist(gen);
  return tpl::Tensor::from_f32(v, rows, cols);
}

std::vector<Named> model_tensors(const tpl::ModelSpec& m, bool norms_1d, bool bad_q) {
  std::mt19937_64 gen(12345);
  std::vector<Named> out;
  const std::int64_t h = m.hidden, q_out = m.heads * m.head_dim, kv_out = m.kv_heads * m.head_dim;
  const float s_in = 1.f / std::sqrt(float(h));
  for (std::int64_t l = 0; l < m.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    // The decoder adds 1 to the stored norm weights; keep them small.
    out.push_back({p + "input_layernorm.weight", random_tensor(gen, 1, h, 0.1f), norms_1d});
    out.push_back(
        {p + "post_attention_layernorm.weight", random_tensor(gen, 1, h, 0.1f), norms_1d});
    out.push_back({p + "self_attn.q_proj.weight",
                   random_tensor(gen, q_out + (bad_q && l == 0 ? 1 : 0), h, s_in)});
    out.push_back({p + "self_attn.k_proj.weight", random_tensor(gen, kv_out, h, s_in)});
    out.push_back({p + "self_attn.v_proj.weight", random_tensor(gen, kv_out, h, s_in)});
    if (m.qkv_bias) {
      out.push_back({p + "self_attn.q_proj.bias", random_tensor(gen, 1, q_out, 0.1f), true});
      out.push_back({p + "self_attn.k_proj.bias", random_tensor(gen, 1, kv_out, 0.1f), true});
      out.push_back({p + "self_attn.v_proj.bias", random_tensor(gen, 1, kv_out, 0.1f), true});
    }
    out.push_back({p + "self_attn.o_proj.weight",
                   random_tensor(gen, h, q_out, 1.f / std::sqrt(float(q_out)))});
    std::string mlp = p + "mlp.";
    std::int64_t inter = m.intermediate;
    if (m.layer_is_moe(l)) {
      if (m.shared_expert_intermediate <= 0) continue;
      mlp += "shared_expert.";
      inter = m.shared_expert_intermediate;
    }
    out.push_back({mlp + "gate_proj.weight", random_tensor(gen, inter, h, s_in)});
    out.push_back({mlp + "up_proj.weight", random_tensor(gen, inter, h, s_in)});
    out.push_back(
        {mlp + "down_proj.weight", random_tensor(gen, h, inter, 1.f / std::sqrt(float(inter)))});
  }
  return out;
}

// A safetensors file written by hand, so that 1-D shapes can be stored (write_safetensors
// always writes [rows, cols]). F32 only.
void write_raw(const std::string& path, const std::vector<Named>& ts) {
  nlohmann::json header = nlohmann::json::object();
  std::uint64_t offset = 0;
  for (const auto& n : ts) {
    const std::uint64_t bytes = n.t.nbytes();
    nlohmann::json shape = n.one_d ? nlohmann::json::array({n.t.cols()})
                                   : nlohmann::json::array({n.t.rows(), n.t.cols()});
    header[n.name] = {
        {"dtype", "F32"}, {"shape", shape}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string hs = header.dump();
  while (hs.size() % 8) hs += ' ';
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t len = hs.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(hs.data(), static_cast<std::streamsize>(hs.size()));
  for (const auto& n : ts)
    out.write(static_cast<const char*>(n.t.data()), static_cast<std::streamsize>(n.t.nbytes()));
  if (!out) throw std::runtime_error("cannot write " + path);
}

void write_lib(const std::string& path, const std::vector<Named>& ts) {
  std::vector<std::pair<std::string, tpl::TensorView>> v;
  for (const auto& n : ts) v.emplace_back(n.name, n.t.view());
  tpl::write_safetensors(path, v, {{"format", "pt"}});
}

int write_checkpoint(const std::string& mode, const std::string& dir, const std::string& preset) {
  const tpl::ModelSpec m = tpl::ModelSpec::preset(preset);
  fs::remove_all(dir);
  fs::create_directories(dir);
  const auto ts = model_tensors(m, mode == "norms1d", mode == "badshape");
  if (mode == "single" || mode == "badshape") {
    write_lib(dir + "/model.safetensors", ts);
  } else if (mode == "truncated") {
    // A valid checkpoint cut in the middle of its data section.
    write_lib(dir + "/model.safetensors", ts);
    fs::resize_file(dir + "/model.safetensors", fs::file_size(dir + "/model.safetensors") / 2);
  } else if (mode == "norms1d") {
    write_raw(dir + "/model.safetensors", ts);
  } else if (mode == "bf16") {
    // As Hugging Face ships most checkpoints: bf16, separate q/k/v and gate/up, HF names.
    std::vector<Named> b;
    for (const auto& n : ts) {
      tpl::Tensor t(tpl::DType::kBF16, n.t.rows(), n.t.cols());
      tpl::convert_into(n.t, t.view());
      b.push_back({n.name, std::move(t), n.one_d});
    }
    write_lib(dir + "/model.safetensors", b);
  } else if (mode == "sharded") {
    // Layer 0 in the first shard, the rest in the second.
    std::vector<Named> a, b;
    nlohmann::json map = nlohmann::json::object();
    const std::string f1 = "model-00001-of-00002.safetensors",
                      f2 = "model-00002-of-00002.safetensors";
    for (const auto& n : ts) {
      const bool first = n.name.rfind("model.layers.0.", 0) == 0;
      map[n.name] = first ? f1 : f2;
    }
    std::vector<std::pair<std::string, tpl::TensorView>> va, vb;
    for (const auto& n : ts) (map[n.name] == f1 ? va : vb).emplace_back(n.name, n.t.view());
    tpl::write_safetensors(dir + "/" + f1, va);
    tpl::write_safetensors(dir + "/" + f2, vb);
    std::ofstream(dir + "/model.safetensors.index.json")
        << nlohmann::json{{"metadata", {{"total_size", 0}}}, {"weight_map", map}}.dump(2);
  } else {
    std::fprintf(stderr, "cli_helper: unknown write mode '%s'\n", mode.c_str());
    return 2;
  }
  // A checkpoint directory in the Hugging Face layout carries its config.json (`--model DIR`).
  std::ofstream(dir + "/config.json") << nlohmann::json{
      {"model_type", m.model_type},          {"hidden_size", m.hidden},
      {"intermediate_size", m.intermediate}, {"num_attention_heads", m.heads},
      {"num_key_value_heads", m.kv_heads},   {"head_dim", m.head_dim},
      {"num_hidden_layers", m.layers},       {"rms_norm_eps", m.rms_eps},
      {"rope_theta", m.rope_theta}}.dump(2);
  std::printf("wrote %zu tensors of '%s' into %s\n", ts.size(), preset.c_str(), dir.c_str());
  return 0;
}

int write_broken(const std::string& kind, const std::string& path) {
  fs::create_directories(fs::path(path).parent_path());
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  auto put_u64 = [&](std::uint64_t v) { out.write(reinterpret_cast<const char*>(&v), 8); };
  if (kind == "short") {
    out.write("\x10\x00\x00", 3);  // not even the 8-byte header length
  } else if (kind == "header_outside") {
    // The header length says 1 MiB, the file holds 16 bytes after it.
    put_u64(1u << 20);
    out << "{\"a\":1}        ";
  } else if (kind == "offsets_past_end") {
    // One [1, 4] f32 tensor (16 bytes) whose data_offsets end past the 8 data bytes present.
    std::string h =
        R"({"model.layers.0.input_layernorm.weight":{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]}})";
    while (h.size() % 8) h += ' ';
    put_u64(h.size());
    out << h;
    out.write("\0\0\0\0\0\0\0\0", 8);
  } else {
    std::fprintf(stderr, "cli_helper: unknown broken kind '%s'\n", kind.c_str());
    return 2;
  }
  if (!out) return 2;
  std::printf("wrote broken safetensors (%s) %s\n", kind.c_str(), path.c_str());
  return 0;
}

int check_dump(const std::string& dir, std::int64_t hidden, double tol) {
  for (const char* f : {"input_dp0.npy", "output_dp0.npy", "reference_dp0.npy"})
    if (!fs::exists(dir + "/" + f) || fs::file_size(dir + "/" + f) == 0) {
      std::fprintf(stderr, "check-dump: %s/%s missing or empty\n", dir.c_str(), f);
      return 1;
    }
  const tpl::Tensor x = tpl::read_npy(dir + "/input_dp0.npy");
  const tpl::Tensor y = tpl::read_npy(dir + "/output_dp0.npy");
  const tpl::Tensor r = tpl::read_npy(dir + "/reference_dp0.npy");
  if (x.cols() != hidden || y.cols() != hidden || r.cols() != hidden || x.rows() != y.rows() ||
      y.rows() != r.rows() || x.rows() == 0) {
    std::fprintf(stderr, "check-dump: shapes %s %s %s, expected [T, %lld]\n",
                 x.view().describe().c_str(), y.view().describe().c_str(),
                 r.view().describe().c_str(), (long long)hidden);
    return 1;
  }
  double max_abs = 0, max_ref = 0;
  for (std::int64_t i = 0; i < y.rows(); ++i)
    for (std::int64_t c = 0; c < y.cols(); ++c) {
      max_abs = std::max(max_abs, double(std::fabs(tpl::get_f32(y, i, c) - tpl::get_f32(r, i, c))));
      max_ref = std::max(max_ref, double(std::fabs(tpl::get_f32(r, i, c))));
    }
  const double rel = max_ref > 0 ? max_abs / max_ref : max_abs;
  std::printf("check-dump: %lld tokens x %lld, max |ref| %.3e, max abs err %.3e, rel %.3e\n",
              (long long)y.rows(), (long long)y.cols(), max_ref, max_abs, rel);
  if (!(max_ref > 0) || !(rel <= tol)) {
    std::fprintf(stderr, "check-dump: FAIL (tolerance %.1e)\n", tol);
    return 1;
  }
  std::printf("check-dump: OK\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::vector<std::string> a(argv + 1, argv + argc);
    if (a.size() == 4 && a[0] == "write") return write_checkpoint(a[1], a[2], a[3]);
    if (a.size() == 3 && a[0] == "broken") return write_broken(a[1], a[2]);
    if (a.size() == 4 && a[0] == "check-dump")
      return check_dump(a[1], std::stoll(a[2]), std::stod(a[3]));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cli_helper: %s\n", e.what());
    return 2;
  }
  std::fprintf(
      stderr,
      "usage: cli_helper write <single|sharded|norms1d|badshape|truncated> <dir> <preset>\n"
      "       cli_helper broken <short|header_outside|offsets_past_end> <file>\n"
      "       cli_helper check-dump <dir> <hidden> <tolerance>\n");
  return 2;
}
