// Profile and plan files, the cost model's arithmetic and the planner's choices, on a synthetic
// profile (no measurement, single process).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <tuple>

#include "tpl/cluster.h"
#include "tpl/comm_worker.h"
#include "tpl/cost_model.h"
#include "tpl/error.h"
#include "tpl/plan.h"
#include "tpl/profile.h"

namespace tpl {
namespace {

// GEMM time = 1e-6 ms per weight element per row plus 0.01 ms; collectives 0.01 ms + S / 1 GB/s.
MachineProfile synthetic() {
  MachineProfile p;
  p.machine = {"test cpu", "avx2", "test mpi", 2, 2};
  for (const char* dt : {"f32", "bf16", "int8"})
    for (std::int64_t kn : {64, 1024}) {
      GemmTable t;
      t.k = t.n = kn;
      t.impl = "synthetic";
      for (double m : {1.0, 16.0, 256.0})
        t.rows.push_back(
            {m, 1e-6 * m * double(kn * kn) + 0.01 * double(kn * kn) / (1024.0 * 1024)});
      p.gemm[dt].push_back(t);
    }
  for (Collective c : {Collective::kAllReduce, Collective::kReduceScatter, Collective::kAllGather,
                       Collective::kAllToAll, Collective::kBroadcast})
    for (double s = 4096; s <= 64.0 * 1024 * 1024; s *= 4)
      p.collectives[MachineProfile::collective_key(c, 2)].push_back({s, 0.01 + s / 1e6});
  p.fused["gemm_all_reduce"] = {{1024, 0.9}, {2048, 0.8}};
  p.copy_gbps = 10;
  return p;
}

Config config_for(int tp, nlohmann::json extra = nlohmann::json::object()) {
  extra["tp"] = tp;
  extra["dp"] = 1;
  extra["pp"] = 1;
  return Config::from_json(extra);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(Profile, JsonRoundTrip) {
  const MachineProfile p = synthetic();
  const MachineProfile q = MachineProfile::from_json(p.to_json(), "mem");
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_TRUE(q.mismatches(p.machine).empty());
  MachineInfo other = p.machine;
  other.isa = "avx512_core";
  ASSERT_EQ(q.mismatches(other).size(), 1u);
  EXPECT_NE(q.mismatches(other)[0].find("isa"), std::string::npos);
}

TEST(Profile, ErrorsNameTheFileAndField) {
  const nlohmann::json good = synthetic().to_json();
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::string field;
  };
  const Case cases[] = {
      {[](nlohmann::json& j) { j.erase("copy_gbps"); }, "copy_gbps"},
      {[](nlohmann::json& j) { j["copy_gbps"] = -1; }, "copy_gbps"},
      {[](nlohmann::json& j) { j["version"] = 7; }, "version"},
      {[](nlohmann::json& j) { j["machine"].erase("cpu"); }, "machine.cpu"},
      {[](nlohmann::json& j) { j["gemm"]["f16"] = j["gemm"]["f32"]; }, "gemm.f16"},
      {[](nlohmann::json& j) { j["gemm"]["f32"][0]["rows"][1][0] = 0.5; }, "gemm.f32[0].rows[1]"},
      {[](nlohmann::json& j) { j["collectives"]["all_reduce/2"][0] = "x"; },
       "collectives.all_reduce/2[0]"},
      {[](nlohmann::json& j) {
         j["collectives"]["allreduce/2"] = j["collectives"]["all_reduce/2"];
       },
       "collectives.allreduce/2"},
      {[](nlohmann::json& j) { j["fused"]["magic"] = nlohmann::json::array(); }, "fused.magic"},
      // Integers stay integers: no truncation of 2.5, no undefined conversion of 1e300 (the
      // inputs in tests/fuzz/crashes/profile, found while writing the profile fuzz harness).
      {[](nlohmann::json& j) { j["machine"]["cores"] = 1e300; }, "machine.cores"},
      {[](nlohmann::json& j) { j["machine"]["ranks"] = 2.5; }, "machine.ranks"},
      {[](nlohmann::json& j) { j["machine"]["ranks"] = 0; }, "machine.ranks"},
      {[](nlohmann::json& j) { j["gemm"]["f32"][0]["k"] = -3e19; }, "gemm.f32[0].k"},
      {[](nlohmann::json& j) { j["gemm"]["f32"][0]["n"] = 64.5; }, "gemm.f32[0].n"},
      {[](nlohmann::json& j) { j["version"] = 1.0; }, "version"},
      // A key the cost model's lookups (collective_key) could never find.
      {[](nlohmann::json& j) {
         j["collectives"]["all_reduce/two"] = j["collectives"]["all_reduce/2"];
       },
       "collectives.all_reduce/two"},
      {[](nlohmann::json& j) {
         j["collectives"]["all_reduce/02"] = j["collectives"]["all_reduce/2"];
       },
       "collectives.all_reduce/02"},
      {[](nlohmann::json& j) {
         j["collectives"]["all_reduce/"] = j["collectives"]["all_reduce/2"];
       },
       "collectives.all_reduce/"},
  };
  for (const Case& c : cases) {
    nlohmann::json j = good;
    c.edit(j);
    const std::string msg = error_of([&] { MachineProfile::from_json(j, "prof.json"); });
    EXPECT_NE(msg.find("prof.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + c.field + "'"), std::string::npos) << c.field << ": " << msg;
  }
}

// The synthetic profile measured on SHM, its collectives 1000 times slower (so that they
// decide), with MPI's tables `scale` times SHM's above `from` bytes (below it, equal).
MachineProfile two_comms(double scale, double from = 0) {
  MachineProfile p = synthetic();
  p.comm = "shm";
  for (auto& [key, pts] : p.collectives) {
    auto& q = p.comm_collectives["mpi"][key];
    for (auto& pt : pts) {
      pt.ms *= 1000;
      q.push_back({pt.x, pt.x >= from ? pt.ms * scale : pt.ms});
    }
  }
  return p;
}

TEST(Profile, CommunicatorTablesRoundTripAndNameTheirErrors) {
  const MachineProfile p = two_comms(0.5);
  const MachineProfile q = MachineProfile::from_json(p.to_json(), "mem");
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_EQ(q.comm, "shm");
  ASSERT_NE(q.collectives_of("mpi"), nullptr);
  EXPECT_EQ(q.collectives_of("shm"), &q.collectives);
  EXPECT_EQ(q.collectives_of(""), &q.collectives);
  EXPECT_EQ(q.collectives_of("nccl"), nullptr);
  // A profile written before the communicator was recorded reads as it did.
  nlohmann::json old = synthetic().to_json();
  EXPECT_FALSE(old.contains("comm"));
  EXPECT_TRUE(MachineProfile::from_json(old, "old").comm.empty());
  const nlohmann::json good = p.to_json();
  const std::pair<std::function<void(nlohmann::json&)>, std::string> cases[] = {
      {[](nlohmann::json& j) { j["comm_collectives"]["nccl"] = j["collectives"]; },
       "comm_collectives.nccl"},
      {[](nlohmann::json& j) { j["comm_collectives"]["shm"] = j["collectives"]; },
       "comm_collectives.shm"},
      {[](nlohmann::json& j) { j.erase("comm"); }, "comm_collectives"},
      {[](nlohmann::json& j) { j["comm"] = 3; }, "comm"},
      {[](nlohmann::json& j) { j["comm_collectives"]["mpi"]["all_reduce/2"][1][0] = 1; },
       "comm_collectives.mpi.all_reduce/2[1]"},
      {[](nlohmann::json& j) { j["comm_collectives"]["mpi"]["allreduce/2"] = 1; },
       "comm_collectives.mpi.allreduce/2"},
  };
  for (const auto& [edit, field] : cases) {
    nlohmann::json j = good;
    edit(j);
    const std::string msg = error_of([&] { MachineProfile::from_json(j, "prof.json"); });
    EXPECT_NE(msg.find("'" + field + "'"), std::string::npos) << field << ": " << msg;
  }
}

TEST(CostModel, EachGroupIsPricedFromItsCommunicatorsTables) {
  const CostModel cm(two_comms(0.25));
  const double shm = cm.collective_ms(Collective::kAllReduce, 65536, 2);
  EXPECT_DOUBLE_EQ(cm.collective_ms(Collective::kAllReduce, 65536, 2, "shm"), shm);
  EXPECT_DOUBLE_EQ(cm.collective_ms(Collective::kAllReduce, 65536, 2, "mpi"), 0.25 * shm);
  const std::string msg =
      error_of([&] { cm.collective_ms(Collective::kAllReduce, 65536, 2, "nccl"); });
  EXPECT_NE(msg.find("'nccl'"), std::string::npos) << msg;
  // The TP group on MPI: every collective of the stack at a quarter of SHM's time.
  const ModelSpec m = ModelSpec::preset("tiny");
  CostInputs on_mpi;
  on_mpi.comms["tp"] = CommKind::kMpi;
  const StackPrediction a = cm.predict(m, config_for(2), 2, 100, {});
  const StackPrediction b = cm.predict(m, config_for(2), 2, 100, on_mpi);
  for (std::size_t i = 0; i < a.layers.size(); ++i) {
    EXPECT_DOUBLE_EQ(b.layers[i].comm_ms, 0.25 * a.layers[i].comm_ms) << a.layers[i].prefix;
    EXPECT_DOUBLE_EQ(b.layers[i].gemm_ms, a.layers[i].gemm_ms) << a.layers[i].prefix;
  }
  // Another group's choice leaves the TP group's collectives alone; MLP-TP's follow its own.
  CostInputs mlp_on_mpi;
  mlp_on_mpi.comms["mlp_tp"] = CommKind::kMpi;
  EXPECT_DOUBLE_EQ(cm.predict(m, config_for(2), 2, 100, mlp_on_mpi).linear_ms, a.linear_ms);
  const Config mlp = Config::from_json({{"tp", 1}, {"dp", 2}, {"pp", 1}, {"mlp_tp", 2}});
  const StackPrediction c = cm.predict(m, mlp, 2, 5, {});
  const StackPrediction d = cm.predict(m, mlp, 2, 5, mlp_on_mpi);
  EXPECT_GT(c.kind_ms[2], 0);
  EXPECT_DOUBLE_EQ(d.layers[2].comm_ms, 0.25 * c.layers[2].comm_ms) << c.layers[2].prefix;
  // FlashComm2 with P = 1: its ODP group is the TP group, and "tp" prices it.
  const Config fc2 =
      config_for(2, {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"flashcomm2_p", 1}});
  CostInputs odp_on_mpi;
  odp_on_mpi.comms["fc2_odp"] = CommKind::kMpi;
  EXPECT_DOUBLE_EQ(cm.predict(m, fc2, 2, 100, odp_on_mpi).linear_ms,
                   cm.predict(m, fc2, 2, 100, {}).linear_ms);
  EXPECT_LT(cm.predict(m, fc2, 2, 100, on_mpi).linear_ms, cm.predict(m, fc2, 2, 100, {}).linear_ms);
}

TEST(CostModel, GemmInterpolatesInMAndScalesByWeightSize) {
  const CostModel cm(synthetic());
  const double tiny = 0.01 / (1024.0 * 1024);  // the per-element constant term
  // At table points: exact.
  EXPECT_NEAR(cm.gemm_ms(DType::kF32, 16, 1024, 1024), 1e-6 * 16 * 1024 * 1024 + 0.01, 1e-9);
  // Between M points: linear.
  EXPECT_NEAR(cm.gemm_ms(DType::kF32, 136, 1024, 1024), 1e-6 * 136 * 1024 * 1024 + 0.01, 1e-9);
  // Beyond the last M: proportional to M.
  const double at256 = cm.gemm_ms(DType::kF32, 256, 1024, 1024);
  EXPECT_NEAR(cm.gemm_ms(DType::kF32, 1024, 1024, 1024), 4 * at256, 1e-9);
  // A larger weight: the largest shape's time per element (both shapes agree here).
  EXPECT_NEAR(cm.gemm_ms(DType::kF32, 16, 4096, 2048), (1e-6 * 16 + tiny) * 4096 * 2048, 1e-6);
  EXPECT_EQ(cm.gemm_ms(DType::kF32, 0, 64, 64), 0);
  MachineProfile p = synthetic();
  p.gemm.erase("int8");
  EXPECT_THROW(CostModel(p).gemm_ms(DType::kI8, 1, 64, 64), Unsupported);
}

TEST(CostModel, CollectivesInterpolateLogLogAndNeedTheirGroupSize) {
  const CostModel cm(synthetic());
  EXPECT_NEAR(cm.collective_ms(Collective::kAllReduce, 65536, 2), 0.01 + 65536 / 1e6, 1e-12);
  const double mid = cm.collective_ms(Collective::kAllReduce, 131072, 2);
  EXPECT_GT(mid, 0.01 + 65536 / 1e6);
  EXPECT_LT(mid, 0.01 + 262144 / 1e6);
  const double top = 64.0 * 1024 * 1024;
  EXPECT_NEAR(cm.collective_ms(Collective::kAllGather, 2 * top, 2), 2 * (0.01 + top / 1e6), 1e-9);
  EXPECT_EQ(cm.collective_ms(Collective::kAllReduce, 1e6, 1), 0);
  const std::string msg = error_of([&] { cm.collective_ms(Collective::kAllReduce, 1e6, 4); });
  EXPECT_NE(msg.find("all_reduce/4"), std::string::npos) << msg;
  EXPECT_NEAR(cm.fused_ratio("gemm_all_reduce", 1536), 0.85, 1e-12);
  EXPECT_EQ(cm.fused_ratio("all_gather_gemm", 4096), 1.0);  // no table: no credit
}

// The predicted bytes per rank are docs/ops.md's volumes, on an awkward token count.
TEST(CostModel, PredictedBytesAreTheOpsVolumes) {
  const CostModel cm(synthetic());
  const ModelSpec m = ModelSpec::preset("tiny");
  const std::int64_t n = 7, h = m.hidden;
  const StackPrediction std_tp = cm.predict(m, config_for(2), 2, n, {});
  ASSERT_EQ(std_tp.layers.size(), 8u);
  EXPECT_EQ(std_tp.kind_bytes[0], 0);                               // qkv: no collective
  EXPECT_DOUBLE_EQ(std_tp.kind_bytes[1], 2 * 2 * 0.5 * n * h * 4);  // 2 layers' o_proj all-reduce
  const StackPrediction fc1 =
      cm.predict(m, config_for(2, {{"flashcomm1", true}, {"flashcomm1_threshold", 0}}), 2, n, {});
  const double np = 8;                                        // N' = 7 padded to a multiple of 2
  EXPECT_DOUBLE_EQ(fc1.kind_bytes[0], 2 * 0.5 * np * h * 4);  // all-gather of the hidden rows
  EXPECT_DOUBLE_EQ(fc1.kind_bytes[1], 2 * 0.5 * np * h * 4);  // reduce-scatter
  CostInputs bf16;
  bf16.dtype = DType::kBF16;
  const StackPrediction b = cm.predict(m, config_for(2), 2, n, bf16);
  EXPECT_DOUBLE_EQ(b.kind_bytes[1], std_tp.kind_bytes[1]);  // bf16 sums staged through f32
  // One rank: nothing sent, the GEMM of the full weights.
  const StackPrediction one = cm.predict(m, config_for(1), 1, n, {});
  EXPECT_EQ(one.linear_ms, one.layers[0].gemm_ms + one.layers[1].gemm_ms + one.layers[2].gemm_ms +
                               one.layers[3].gemm_ms + one.layers[4].gemm_ms +
                               one.layers[5].gemm_ms + one.layers[6].gemm_ms +
                               one.layers[7].gemm_ms);
  EXPECT_THROW(cm.predict(m, config_for(2), 4, n, {}), Error);
}

// Overlap = auto runs the fused paths only where the worker thread has a core of its own; the
// cost model resolves it as DecoderStack does, from CostInputs::spare_core.
TEST(CostModel, OverlapAutoFollowsTheSpareCore) {
  EXPECT_FALSE(worker_has_spare_core(1, 1));
  EXPECT_FALSE(worker_has_spare_core(2, 2));
  EXPECT_TRUE(worker_has_spare_core(2, 1));
  EXPECT_TRUE(worker_has_spare_core(8, 4));
  EXPECT_FALSE(worker_has_spare_core(1, 0));  // 0 threads counts as 1
  EXPECT_TRUE(overlap_enabled(Overlap::kOn, false));
  EXPECT_FALSE(overlap_enabled(Overlap::kOff, true));
  EXPECT_EQ(overlap_enabled(Overlap::kAuto, true), true);
  EXPECT_EQ(overlap_enabled(Overlap::kAuto, false), false);
  MachineInfo two_cores{"c", "avx2", "m", 2, 2};
  EXPECT_FALSE(two_cores.spare_core());  // one core per rank
  MachineInfo many{"c", "avx2", "m", 64, 2};
  EXPECT_TRUE(many.spare_core());

  const CostModel cm(synthetic());
  const ModelSpec m = ModelSpec::preset("tiny");
  const std::int64_t n = 2048;  // 4 chunks: the fused ratio 0.8 applies to the row layers
  CostInputs spare, busy;
  spare.spare_core = true;
  auto ms = [&](const char* overlap, const CostInputs& in) {
    return cm
        .predict(m, config_for(2, {{"matmul_allreduce", true}, {"overlap", overlap}}), 2, n, in)
        .kind_ms[1];
  };
  const double off = ms("off", spare), on = ms("on", busy);
  EXPECT_NEAR(on / off, 0.8, 1e-9);
  EXPECT_EQ(ms("auto", spare), on);
  EXPECT_EQ(ms("auto", busy), off);
}

// W8A8 layers are priced from the measured layer path ("w8a8") when the profile has it, else from
// the int8 GEMM plus quantise/dequantise passes.
TEST(CostModel, W8A8UsesTheMeasuredLayerPath) {
  MachineProfile p = synthetic();
  const ModelSpec m = ModelSpec::preset("tiny");
  CostInputs w8;
  w8.w8a8 = true;
  const StackPrediction passes = CostModel(p).predict(m, config_for(2), 2, 16, w8);
  EXPECT_GT(passes.layers[0].other_ms, 0);
  p.gemm["w8a8"] = p.gemm["int8"];
  for (auto& t : p.gemm["w8a8"])
    for (auto& r : t.rows) r.ms *= 3;
  const CostModel cm(p);
  const StackPrediction measured = cm.predict(m, config_for(2), 2, 16, w8);
  const LayerPrediction& qkv = measured.layers[0];  // [16, 256] x [256 = 512 / 2 ranks, 256]
  EXPECT_EQ(qkv.other_ms, 0);
  EXPECT_NEAR(qkv.gemm_ms, 3 * cm.gemm_ms(DType::kI8, 16, 256, 256), 1e-12);
  EXPECT_EQ(MachineProfile::from_json(p.to_json(), "mem").gemm.count("w8a8"), 1u);
}

// DSA-CP on a prefill node (index_topk, sequence parallelism, deployment prefill) takes o_proj
// to ShardedCpRow, which the model does not cover yet: refused, never guessed.
ModelSpec dsa_model() {
  return ModelSpec::from_hf_json({{"model_type", "llama"},
                                  {"hidden_size", 64},
                                  {"intermediate_size", 128},
                                  {"num_attention_heads", 4},
                                  {"num_key_value_heads", 4},
                                  {"num_hidden_layers", 1},
                                  {"index_topk", 8}},
                                 "dsa");
}

TEST(CostModel, UncoveredOpsAreUnsupportedNotGuessed) {
  const CostModel cm(synthetic());
  const Config c =
      config_for(2, {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"deployment", "prefill"}});
  EXPECT_THROW(cm.predict(dsa_model(), c, 2, 16, {}), Unsupported);
}

// The GEMMs a prediction looks up are what `calibrate --model` measures: tiny at TP 2 asks for
// its four local shapes at the token count, W8A8 for the "w8a8" layer path.
TEST(CostModel, GemmRequestsAreTheShapesThePredictionLooksUp) {
  const ModelSpec m = ModelSpec::preset("tiny");  // H 256, 8 heads / 4 KV of 32, I 704
  const auto req = CostModel::gemm_requests(m, {config_for(2)}, 2, {7, 33}, {});
  std::set<std::tuple<std::string, std::int64_t, std::int64_t>> shapes;
  for (const auto& r : req) {
    shapes.insert({r.key, r.n, r.k});
    EXPECT_EQ(r.rows, (std::vector<std::int64_t>{7, 33})) << r.n << "x" << r.k;
  }
  using S = std::tuple<std::string, std::int64_t, std::int64_t>;
  EXPECT_EQ(shapes, (std::set<S>{{"f32", 256, 256},    // qkv: (256 + 2 * 128) / 2
                                 {"f32", 256, 128},    // o_proj: 256 / 2 in
                                 {"f32", 704, 256},    // gate_up: 2 * 704 / 2
                                 {"f32", 256, 352}}))  // down: 704 / 2 in
      << req.size();
  CostInputs w8;
  w8.w8a8 = true;
  for (const auto& r : CostModel::gemm_requests(m, {config_for(2)}, 2, {7}, w8))
    EXPECT_EQ(r.key, "w8a8");
  // An op the model does not price asks for nothing rather than failing.
  const Config dsa =
      config_for(2, {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"deployment", "prefill"}});
  EXPECT_NO_THROW(CostModel::gemm_requests(dsa_model(), {dsa}, 2, {16}, {}));
}

// A table at a layer's exact shape is read as measured; other shapes keep the reference scaling.
TEST(CostModel, LayerTablesAreReadAtTheirExactShape) {
  MachineProfile p = synthetic();
  const double scaled = CostModel(p).gemm_ms(DType::kF32, 16, 704, 256);
  GemmTable t;
  t.n = 704;
  t.k = 256;
  t.impl = "synthetic layer";
  t.rows = {{1, 0.5}, {16, 2.0}, {64, 5.0}};
  p.layer_gemm["f32"].push_back(t);
  const CostModel cm(p);
  EXPECT_DOUBLE_EQ(cm.gemm_ms(DType::kF32, 16, 704, 256), 2.0);
  EXPECT_DOUBLE_EQ(cm.gemm_ms(DType::kF32, 40, 704, 256), 3.5);    // linear between rows
  EXPECT_DOUBLE_EQ(cm.gemm_ms(DType::kF32, 128, 704, 256), 10.0);  // proportional above
  EXPECT_NE(scaled, 2.0);
  EXPECT_DOUBLE_EQ(cm.gemm_ms(DType::kF32, 16, 256, 704),
                   CostModel(synthetic()).gemm_ms(DType::kF32, 16, 256, 704));
  EXPECT_DOUBLE_EQ(cm.gemm_ms(DType::kBF16, 16, 704, 256),
                   CostModel(synthetic()).gemm_ms(DType::kBF16, 16, 704, 256));
  const StackPrediction sp = cm.predict(ModelSpec::preset("tiny"), config_for(2), 2, 16, {});
  EXPECT_DOUBLE_EQ(sp.layers[2].gemm_ms, 2.0) << sp.layers[2].prefix;  // gate_up
  // Round trip, and errors name the field.
  const MachineProfile q = MachineProfile::from_json(p.to_json(), "mem");
  ASSERT_NE(q.layer_table("f32", 704, 256), nullptr);
  EXPECT_EQ(q.to_json(), p.to_json());
  nlohmann::json j = p.to_json();
  j["layer_gemm"]["f32"].push_back(j["layer_gemm"]["f32"][0]);
  std::string msg = error_of([&] { MachineProfile::from_json(j, "prof.json"); });
  EXPECT_NE(msg.find("'layer_gemm.f32[1]' repeats the shape"), std::string::npos) << msg;
  j = p.to_json();
  j["layer_gemm"]["f32"][0]["rows"][2][0] = 2;
  msg = error_of([&] { MachineProfile::from_json(j, "prof.json"); });
  EXPECT_NE(msg.find("'layer_gemm.f32[0].rows[2]'"), std::string::npos) << msg;
  // A profile without layer tables (older calibrations) still loads.
  j = p.to_json();
  j.erase("layer_gemm");
  EXPECT_TRUE(MachineProfile::from_json(j, "prof.json").layer_gemm.empty());
}

// Under FC1 an MoE's shared expert is replicated and runs on the rank's token shard: the full
// weight on N'/T rows, no collective.
TEST(CostModel, SharedExpertUnderSequenceParallelismRunsOnTheTokenShard) {
  const CostModel cm(synthetic());
  const ModelSpec m = ModelSpec::preset("tiny-moe");  // shared expert 384, H 256
  const Config fc1 = config_for(2, {{"flashcomm1", true}, {"flashcomm1_threshold", 0}});
  const std::int64_t n = 37, shard = 38 / 2;  // N' = 38 (padded to a multiple of 2)
  const StackPrediction sp = cm.predict(m, fc1, 2, n, {});
  int seen = 0;
  for (const LayerPrediction& lp : sp.layers) {
    if (lp.prefix.find("shared_expert.gate_up_proj") != std::string::npos) {
      EXPECT_DOUBLE_EQ(lp.gemm_ms, cm.gemm_ms(DType::kF32, shard, 2 * 384, 256)) << lp.prefix;
      EXPECT_EQ(lp.bytes_sent, 0) << lp.prefix;
      ++seen;
    }
    if (lp.prefix.find("shared_expert.down_proj") != std::string::npos) {
      EXPECT_DOUBLE_EQ(lp.gemm_ms, cm.gemm_ms(DType::kF32, shard, 256, 384)) << lp.prefix;
      EXPECT_EQ(lp.comm_ms, 0) << lp.prefix;
      ++seen;
    }
  }
  EXPECT_EQ(seen, 2 * (m.layers - 1));  // layer 0 is dense (mlp_only_layers)
}

// MLP-TP and O-proj-TP over DP replicas: the token exchange's bytes and the m·N-row GEMMs.
TEST(CostModel, ModuleTpOpsExchangeTokens) {
  const CostModel cm(synthetic());
  const ModelSpec m = ModelSpec::preset("tiny");
  const std::int64_t n = 5, h = m.hidden;
  const Config mlp = Config::from_json({{"tp", 1}, {"dp", 2}, {"pp", 1}, {"mlp_tp", 2}});
  const StackPrediction p = cm.predict(m, mlp, 2, n, {});
  EXPECT_DOUBLE_EQ(p.kind_bytes[2], 2 * 1.0 * n * h * 4);  // 2 layers, AG: (m-1)·B·H·e
  EXPECT_DOUBLE_EQ(p.kind_bytes[3], 2 * 1.0 * n * h * 4);  // RS
  EXPECT_EQ(p.kind_bytes[0], 0);                           // qkv stays DP (TP = 1)
  const Config otp = Config::from_json(
      {{"tp", 1}, {"dp", 2}, {"pp", 1}, {"oproj_tp", 2}, {"deployment", "decode"}});
  const StackPrediction q = cm.predict(m, otp, 2, n, {});
  const double in = double(m.heads * m.head_dim);
  EXPECT_DOUBLE_EQ(q.kind_bytes[1], 2 * (0.5 * n * in * 4 + 1.0 * n * h * 4));  // A2A + RS
}

std::vector<PlanCandidate> candidates() {
  return {
      {"standard", config_for(2)},
      {"fc1",
       config_for(2, {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"overlap", "on"}})},
      {"matmul-allreduce", config_for(2, {{"matmul_allreduce", true}, {"overlap", "on"}})},
      {"fc2",
       config_for(2, {{"flashcomm1", true}, {"flashcomm1_threshold", 0}, {"flashcomm2_p", 1}})}};
}

TEST(Planner, MarginZeroPicksThePredictedFastestAndALargeMarginKeepsTheBaseline) {
  const CostModel cm(synthetic());
  const ModelSpec m = ModelSpec::preset("tiny");
  PlanOptions o;
  o.workload = parse_workload("16,2048,4096");
  o.margin = 0;
  std::vector<std::string> notes;
  const auto cands = candidates();
  const Plan p = make_plan(cm, m, 2, cands, o, &notes);
  ASSERT_EQ(p.buckets.size(), 3u);
  for (const auto& b : p.buckets) {
    double best = 1e300;
    for (const auto& c : cands)
      if (weight_layout_of(c.config, m.info) == p.layout)
        best = std::min(best, cm.predict(m, c.config, 2, b.tokens, {}).linear_ms);
    EXPECT_DOUBLE_EQ(b.predicted_ms, best) << b.tokens;
    EXPECT_FALSE(b.runner_up.empty());
    EXPECT_GE(b.runner_up_ms, b.predicted_ms);
  }
  // The fused all-reduce's measured 0.8 ratio makes it the fastest at 2048+ rows.
  EXPECT_EQ(p.bucket_for(4096).strategy, "matmul-allreduce");
  o.margin = 0.49;
  const Plan q = make_plan(cm, m, 2, cands, o, nullptr);
  EXPECT_EQ(q.layout, "tp");
  for (const auto& b : q.buckets) EXPECT_EQ(b.strategy, "standard") << b.tokens;
}

// Without a plan, the choices a config leaves open come from the cost model: overlap = auto is
// off (the baseline) unless predicted faster; explicit settings stay; uncovered ops are refused.
TEST(Planner, DefaultPlanDecidesOnlyWhatTheConfigLeavesOpen) {
  const CostModel cm(synthetic());
  const ModelSpec m = ModelSpec::preset("tiny");
  const Plan p = default_plan(cm, m, config_for(2, {{"matmul_allreduce", true}}), 2, {});
  ASSERT_EQ(p.buckets.size(), 6u);
  EXPECT_EQ(p.bucket_for(16).strategy, "config");            // unchunked below 512 rows
  EXPECT_EQ(p.bucket_for(4096).strategy, "config+overlap");  // measured 0.8 fused ratio
  EXPECT_EQ(p.config_for(16).overlap, Overlap::kOff);
  EXPECT_EQ(p.config_for(4096).overlap, Overlap::kOn);
  // overlap given: nothing left open without FC1, one strategy.
  const Plan q =
      default_plan(cm, m, config_for(2, {{"matmul_allreduce", true}, {"overlap", "off"}}), 2, {});
  EXPECT_EQ(q.configs.size(), 1u);
  EXPECT_EQ(q.bucket_for(4096).strategy, "config");
  // FC1 on: its threshold becomes a choice among the same weights.
  const Plan f = default_plan(cm, m, config_for(2, {{"flashcomm1", true}}), 2, {});
  for (const auto& c : f.configs) EXPECT_EQ(weight_layout_of(c.config, m.info), "tp") << c.name;
  // An MoE model's shared experts are replicated under FC1: FC1 on is another layout there.
  const ModelSpec moe = ModelSpec::preset("tiny-moe");
  EXPECT_EQ(weight_layout_of(config_for(2), moe.info), "tp");
  EXPECT_EQ(weight_layout_of(config_for(2, {{"flashcomm1", true}}), moe.info),
            "tp+shared_expert_dp");
  for (const auto& c : default_plan(cm, moe, config_for(2, {{"flashcomm1", true}}), 2, {}).configs)
    EXPECT_EQ(weight_layout_of(c.config, moe.info), "tp+shared_expert_dp") << c.name;
  EXPECT_THROW(default_plan(cm, dsa_model(),
                            config_for(2, {{"flashcomm1", true},
                                           {"flashcomm1_threshold", 0},
                                           {"deployment", "prefill"}}),
                            2, {}),
               Unsupported);
}

// The communicator of each group: the calibrated kind unless another is predicted faster by
// more than the margin; a kind without a table for the group is no choice; a given one stays.
TEST(Planner, EachGroupGetsTheCommunicatorPredictedFastest) {
  const ModelSpec m = ModelSpec::preset("tiny");
  PlanOptions o;
  o.workload = parse_workload("16,2048");
  o.margin = 0.05;
  std::vector<std::string> notes;
  // MPI at half SHM's time: the TP group goes to MPI, and the buckets are priced with it.
  const CostModel half(two_comms(0.5));
  const Plan p = make_plan(half, m, 2, candidates(), o, &notes);
  ASSERT_EQ(p.comms.size(), 1u);
  EXPECT_EQ(p.comms.at("tp"), CommKind::kMpi);
  ASSERT_EQ(p.comms_why.size(), 1u);
  EXPECT_NE(p.comms_why[0].find("-> mpi"), std::string::npos) << p.comms_why[0];
  CostInputs on_mpi;
  on_mpi.comms["tp"] = CommKind::kMpi;
  for (const auto& b : p.buckets) {
    const Config& c = p.config_for(b.tokens);
    EXPECT_DOUBLE_EQ(b.predicted_ms, half.predict(m, c, 2, b.tokens, on_mpi).linear_ms);
  }
  EXPECT_EQ(Plan::from_json(p.to_json(), "mem").to_json(), p.to_json());
  // Within the margin (MPI 2 % faster): SHM, the kind the profile was calibrated on, stays.
  EXPECT_EQ(make_plan(CostModel(two_comms(0.98)), m, 2, candidates(), o, nullptr).comms.at("tp"),
            CommKind::kShm);
  // MPI faster only for large messages: it wins a prefill workload and loses a decode one.
  const CostModel large(two_comms(0.2, 1 << 20));
  o.workload = parse_workload("4096");
  EXPECT_EQ(make_plan(large, m, 2, candidates(), o, nullptr).comms.at("tp"), CommKind::kMpi);
  o.workload = parse_workload("1");
  EXPECT_EQ(make_plan(large, m, 2, candidates(), o, nullptr).comms.at("tp"), CommKind::kShm);
  // A kind that misses a table the layout needs is no choice.
  MachineProfile holes = two_comms(0.1);
  holes.comm_collectives["mpi"].erase("all_gather/2");
  const Plan h = make_plan(CostModel(holes), m, 2, candidates(), o, nullptr);
  EXPECT_EQ(h.comms.at("tp"), CommKind::kShm);
  EXPECT_NE(h.comms_why[0].find("not measured"), std::string::npos) << h.comms_why[0];
  // A choice given in the inputs is kept; choose_comms = false leaves the groups to the world.
  o.inputs.comms["tp"] = CommKind::kShm;
  EXPECT_EQ(make_plan(half, m, 2, candidates(), o, nullptr).comms.at("tp"), CommKind::kShm);
  o.inputs.comms.clear();
  o.choose_comms = false;
  EXPECT_TRUE(make_plan(half, m, 2, candidates(), o, nullptr).comms.empty());
  // One kind measured (older profiles, one-rank worlds): no choice is recorded.
  o.choose_comms = true;
  EXPECT_TRUE(make_plan(CostModel(synthetic()), m, 2, candidates(), o, nullptr).comms.empty());
  // MLP-TP over DP replicas: its group is chosen; TP = 1 sends nothing and is not.
  const std::vector<PlanCandidate> mlp = {
      {"mlp-tp", Config::from_json({{"tp", 1}, {"dp", 2}, {"pp", 1}, {"mlp_tp", 2}})}};
  o.workload = parse_workload("256");
  const Plan q = make_plan(half, m, 2, mlp, o, nullptr);
  ASSERT_EQ(q.comms.size(), 1u) << q.to_json().dump();
  EXPECT_EQ(q.comms.at("mlp_tp"), CommKind::kMpi);
  // The plan file names its roles and kinds.
  for (const auto& [edit, field] :
       std::vector<std::pair<std::function<void(nlohmann::json&)>, std::string>>{
           {[](nlohmann::json& j) { j["comms"]["tpp"] = "mpi"; }, "comms.tpp"},
           {[](nlohmann::json& j) { j["comms"]["tp"] = "nccl"; }, "comms.tp"},
           {[](nlohmann::json& j) { j["comms"]["tp"] = 1; }, "comms.tp"},
           {[](nlohmann::json& j) { j["comms"] = "mpi"; }, "comms"},
           {[](nlohmann::json& j) { j["comms_why"] = {1}; }, "comms_why[0]"}}) {
    nlohmann::json j = p.to_json();
    edit(j);
    const std::string msg = error_of([&] { Plan::from_json(j, "plan.json"); });
    EXPECT_NE(msg.find("'" + field + "'"), std::string::npos) << field << ": " << msg;
  }
}

TEST(Planner, BucketsAreDeterministicRanges) {
  const CostModel cm(synthetic());
  PlanOptions o;
  o.workload = parse_workload("16:0.7,2048:0.3");
  EXPECT_DOUBLE_EQ(o.workload[0].second, 0.7);
  const Plan p = make_plan(cm, ModelSpec::preset("tiny"), 2, candidates(), o, nullptr);
  ASSERT_EQ(p.buckets.size(), 2u);
  EXPECT_EQ(p.buckets[0].max_tokens, 181);  // floor(sqrt(16 * 2048))
  EXPECT_EQ(p.buckets[1].max_tokens, -1);
  EXPECT_EQ(&p.bucket_for(1), &p.buckets[0]);
  EXPECT_EQ(&p.bucket_for(181), &p.buckets[0]);
  EXPECT_EQ(&p.bucket_for(182), &p.buckets[1]);
  EXPECT_EQ(&p.bucket_for(1 << 20), &p.buckets[1]);
  const Plan q = Plan::from_json(p.to_json(), "mem");
  EXPECT_EQ(q.to_json(), p.to_json());
}

TEST(Planner, PlanFileErrorsNameTheField) {
  const CostModel cm(synthetic());
  PlanOptions o;
  o.workload = parse_workload("16,2048");
  const nlohmann::json good =
      make_plan(cm, ModelSpec::preset("tiny"), 2, candidates(), o, nullptr).to_json();
  struct Case {
    std::function<void(nlohmann::json&)> edit;
    std::string field;
  };
  const Case cases[] = {
      {[](nlohmann::json& j) { j["world"] = 3; }, "tp"},
      {[](nlohmann::json& j) { j["buckets"][0]["strategy"] = "nope"; }, "buckets[0].strategy"},
      {[](nlohmann::json& j) { j["buckets"][1]["max_tokens"] = 5; }, "buckets[1].max_tokens"},
      {[](nlohmann::json& j) { j.erase("buckets"); }, "buckets"},
      {[](nlohmann::json& j) { j["configs"].begin().value()["tp"] = 1; }, "configs."},
  };
  for (const Case& c : cases) {
    nlohmann::json j = good;
    c.edit(j);
    const std::string msg = error_of([&] { Plan::from_json(j, "plan.json"); });
    EXPECT_NE(msg.find("plan.json"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'" + c.field), std::string::npos) << c.field << ": " << msg;
  }
  const Plan p = Plan::from_json(good, "plan.json");
  const std::string msg =
      error_of([&] { p.check_matches(ModelSpec::preset("tiny"), 4, "plan.json"); });
  EXPECT_NE(msg.find("'world'"), std::string::npos) << msg;
  EXPECT_NO_THROW(p.check_matches(ModelSpec::preset("tiny"), 2, "plan.json"));
}

// Found with tests/fuzz/plan_fuzz.cc (crashes/plan/): world, tp and dp were cast from int64 to
// int (4294967298 read as 2) and tp x dp overflowed an int (undefined behaviour); and a plan
// nested 200000 levels deep overflowed the stack.
TEST(Planner, PlanFileIntegersAreRangeCheckedAndNestingIsLimited) {
  const CostModel cm(synthetic());
  PlanOptions o;
  o.workload = parse_workload("16,2048");
  const nlohmann::json good =
      make_plan(cm, ModelSpec::preset("tiny"), 2, candidates(), o, nullptr).to_json();
  for (const auto& [field, value] : std::vector<std::pair<std::string, nlohmann::json>>{
           {"world", 4294967298ll}, {"tp", 65536}, {"dp", 0}, {"world", -1}}) {
    nlohmann::json j = good;
    j[field] = value;
    if (field == "tp") j["dp"] = 65536, j["world"] = 1;
    const std::string msg = error_of([&] { Plan::from_json(j, "plan.json"); });
    EXPECT_NE(msg.find("plan.json"), std::string::npos) << field << ": " << msg;
    EXPECT_NE(msg.find("'" + std::string(field == "tp" ? "tp" : field)), std::string::npos)
        << field << ": " << msg;
  }
  const std::string path = ::testing::TempDir() + "/tpl_deep_plan.json";
  {
    std::ofstream out(path);
    out << R"({"version": 1, "configs": )" << std::string(200000, '[') << std::string(200000, ']')
        << "}";
  }
  const std::string msg = error_of([&] { Plan::from_file(path); });
  EXPECT_NE(msg.find("nest"), std::string::npos) << msg;
  std::remove(path.c_str());
}

TEST(Planner, WorkloadParsing) {
  const auto w = parse_workload("2048:1,16:3");
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].first, 16);
  EXPECT_DOUBLE_EQ(w[0].second, 0.75);
  for (const char* bad : {"", "x", "16:", "16:-1", "0", "16,16", "16:1:2"})
    EXPECT_THROW(parse_workload(bad), InvalidArgument) << bad;
  // Finite weights whose sum is not (tests/fuzz/crashes/workload): each half, not 1e308 / inf.
  const auto big = parse_workload("1:1e308,2:1e308");
  ASSERT_EQ(big.size(), 2u);
  EXPECT_DOUBLE_EQ(big[0].second, 0.5);
  EXPECT_DOUBLE_EQ(big[1].second, 0.5);
  // A weight that underflows to 0 beside the largest (tests/fuzz/crashes/workload) is refused.
  try {
    parse_workload("409:2,19:2,1:1e-300,25:1e30");
    ADD_FAILURE() << "accepted a weight of 0";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("weight of 1 tokens is below 1e-12 of the largest"),
              std::string::npos)
        << e.what();
  }
}

// The memory cap leaves out layouts whose resident weights do not fit, and says so.
TEST(Planner, MemoryCapLeavesOutLayoutsThatDoNotFit) {
  const CostModel cm(synthetic());
  const ModelSpec m = ModelSpec::preset("tiny");
  const auto cands = candidates();
  // Resident bytes = the shard twice (the layer's copy and the GEMM's), f32.
  const StackPrediction one = cm.predict(m, config_for(1), 1, 16, {});
  double elems = 0;
  for (std::int64_t l = 0; l < m.layers; ++l)
    for (const LayerSpec& s : decoder_linear_specs(m, l, DType::kF32))
      elems += double(s.in_features) * double(LinearLayer::full_out_features(s));
  EXPECT_DOUBLE_EQ(one.weight_bytes, elems * 8);
  const double tp = cm.predict(m, config_for(2), 2, 16, {}).weight_bytes;
  const double fc2 = cm.predict(m, cands.back().config, 2, 16, {}).weight_bytes;
  EXPECT_LT(tp, fc2);  // FlashComm2 with P = 1 keeps the whole o_proj
  PlanOptions o;
  o.workload = parse_workload("16,2048");
  o.margin = 0;
  o.memory_cap_bytes = (tp + fc2) / 2;
  std::vector<std::string> notes;
  const Plan p = make_plan(cm, m, 2, cands, o, &notes);
  EXPECT_EQ(p.layout, "tp");
  EXPECT_DOUBLE_EQ(p.weight_bytes, tp);
  bool said = false;
  for (const auto& n : notes) said = said || n.find("left out fc2: needs") != std::string::npos;
  EXPECT_TRUE(said);
  o.memory_cap_bytes = tp / 2;
  const std::string msg = error_of([&] { make_plan(cm, m, 2, cands, o, nullptr); });
  EXPECT_NE(msg.find("no strategy fits the memory cap"), std::string::npos) << msg;
  // The field round-trips through plan.json.
  EXPECT_DOUBLE_EQ(Plan::from_json(p.to_json(), "x").weight_bytes, tp);
}

nlohmann::json h100_json() {
  std::ifstream f(std::string(TPL_PROFILES_DIR) + "/h100-sxm-8x-ib400.json");
  return nlohmann::json::parse(f);
}
ClusterProfile h100() {
  return ClusterProfile::from_file(std::string(TPL_PROFILES_DIR) + "/h100-sxm-8x-ib400.json");
}

TEST(Simulator, CollectivesFollowTheAlphaBetaFormAndGoHierarchicalAcrossNodes) {
  const ClusterProfile p = h100();
  ASSERT_EQ(p.gpus_per_node, 8);
  const double s = 1 << 20;
  // One node: latency + 2(g-1) steps + S * 2(g-1)/g / busbw.
  EXPECT_NEAR(p.collective_ms(Collective::kAllReduce, s, 8) * 1e3,
              6.6 + 14 * 0.6 + s * 1.75 / 370e3, 1e-9);
  EXPECT_EQ(p.collective_ms(Collective::kAllReduce, s, 1), 0);
  // Two nodes: NVLink reduce-scatter, NIC all-reduce of an eighth, NVLink all-gather.
  const double two = p.collective_ms(Collective::kAllReduce, s, 16) * 1e3;
  const double want = (6.6 + 7 * 0.6 + s * 7 / 8 / 360e3) + (10 + 2 * 3 + s / 8 * 1.0 / 45e3) +
                      (6.6 + 7 * 0.6 + s * 7 / 8 / 350e3);
  EXPECT_NEAR(two, want, 1e-9);
  EXPECT_GT(p.collective_ms(Collective::kAllReduce, 64 * s, 16),
            p.collective_ms(Collective::kAllReduce, 64 * s, 8));
  // GEMM: launch + the larger of compute and weight streaming.
  EXPECT_NEAR(p.gemm_ms("bf16", 8192, 4096, 4096) * 1e3,
              15.8 + 2.0 * 8192 * 4096 * 4096 / (989 * 0.75 * 1e6), 1e-9);
  EXPECT_THROW(p.gemm_ms("f32", 1, 1, 1), Unsupported);
}

TEST(Simulator, ValidationCoversEveryPublishedPointAndTheFitHolds) {
  const ClusterProfile p = h100();
  const auto rs = validate(p);
  std::size_t n = 0;
  for (const auto& c : p.checks) n += c.points.size();
  ASSERT_EQ(rs.size(), n);
  ASSERT_GE(p.checks.size(), 5u);
  for (const auto& r : rs) {
    EXPECT_TRUE(std::isfinite(r.error())) << r.source;
    // The model reproduces the table it was fitted to within 20 %.
    if (r.source.rfind("in-sample", 0) == 0) {
      EXPECT_LT(std::fabs(r.error()), 0.20) << r.x;
    }
  }
}

TEST(Simulator, SynthesizedProfileDrivesTheCostModelAtTp64) {
  const ClusterProfile p = h100();
  const CostModel cm(p.synthesize({2, 4, 8, 16, 32, 64}));
  const ModelSpec m = ModelSpec::preset("llama3-70b");
  CostInputs in;
  in.dtype = DType::kBF16;
  in.spare_core = true;
  double prev = 0;
  for (int w : {8, 16, 32, 64}) {
    const StackPrediction sp = cm.predict(m, config_for(w), w, 2048, in);
    EXPECT_GT(sp.linear_ms, 0) << w;
    double comm = 0;
    for (const auto& l : sp.layers) comm += l.comm_ms;
    // Across nodes the all-reduces take a growing share.
    EXPECT_GT(comm / sp.linear_ms, prev) << w;
    prev = comm / sp.linear_ms;
  }
}

TEST(Simulator, BadProfilesNameTheField) {
  nlohmann::json j = nlohmann::json::parse(R"({"version": 1, "name": "x", "gpus_per_node": 8,
    "gemm": {"peak_tflops": {"bf16": 1}, "efficiency": 0.5, "launch_us": 1},
    "intra": {}, "inter": {}})");
  EXPECT_NE(error_of([&] {
              ClusterProfile::from_json(j, "c.json");
            }).find("c.json: field 'gemm.memory_gbps' is missing"),
            std::string::npos);
  j["gemm"]["memory_gbps"] = 1;
  EXPECT_NE(error_of([&] {
              ClusterProfile::from_json(j, "c.json");
            }).find("field 'intra.latency_us' is missing"),
            std::string::npos);
  EXPECT_THROW(ClusterProfile::from_file("/nonexistent/c.json"), IoError);
}

// The inputs of tests/fuzz/crashes/cluster: each was accepted and then broke the simulator.
TEST(Simulator, FuzzFindsAreRefusedByName) {
  const nlohmann::json good = h100_json();
  ClusterProfile::from_json(good, "c.json");  // the shipped file itself passes
  const auto refused = [&](const std::function<void(nlohmann::json&)>& edit,
                           const std::string& message) {
    nlohmann::json j = good;
    edit(j);
    const std::string e = error_of([&] { ClusterProfile::from_json(j, "c.json"); });
    EXPECT_NE(e.find(message), std::string::npos) << e;
  };
  // A double->int cast of 1e300 was undefined behaviour; 8.5 was truncated.
  refused([](auto& j) { j["gpus_per_node"] = 1e300; },
          "field 'gpus_per_node' must be an integer in [1, 1048576]");
  refused([](auto& j) { j["gpus_per_node"] = 8.5; }, "'gpus_per_node' must be an integer");
  // nlohmann's type_error escaped as the wrong exception type.
  refused([](auto& j) { j["checks"][0]["dtype"] = 5; }, "field 'checks[0].dtype' must be a string");
  // Infinite GEMM times, and a 0/0 prediction.
  refused([](auto& j) { j["gemm"]["peak_tflops"]["bf16"] = 0; },
          "field 'gemm.peak_tflops.bf16' must be a number in [1e-06, 1e+09]");
  refused([](auto& j) { j["checks"][0]["n"] = 0; }, "field 'checks[0].n' must be an integer");
  // group + gpus_per_node - 1 overflowed int.
  refused([](auto& j) { j["checks"][4]["group"] = 2147483647; },
          "field 'checks[4].group' must be an integer in [2, 1048576]");
  refused(
      [](auto& j) {
        j["sources"] = nlohmann::json::array({"a", 1});
      },
      "field 'sources' must be an array of strings");
}

TEST(Simulator, AGroupSizeAskedTwiceGivesOneAscendingTable) {
  const MachineProfile mp = h100().synthesize({2, 8, 2});
  const auto& pts = mp.collectives.at(MachineProfile::collective_key(Collective::kAllReduce, 2));
  EXPECT_EQ(pts.size(), 21u);  // 1 KiB .. 1 GiB
  for (std::size_t i = 1; i < pts.size(); ++i) EXPECT_GT(pts[i].x, pts[i - 1].x) << i;
}

}  // namespace
}  // namespace tpl
