# One harness per parser: tests/fuzz/<name>_fuzz.cc, corpus/<name>/, crashes/<name>/.
set(TPL_FUZZ_HARNESSES safetensors safetensors_index npy hf_config config plan flight profile workload cluster)
# The library sources the parsers need (the libFuzzer build compiles only these).
set(TPL_FUZZ_PARSER_SOURCES
  src/core/error.cc
  src/core/dtype.cc
  src/core/tensor.cc
  src/core/config.cc
  src/core/json_text.cc
  src/comm/process_groups.cc
  src/comm/communicator.cc  # the typeinfo UBSan's vptr check of process_groups.cc needs
  src/model/model_spec.cc
  src/plan/plan_json.cc
  src/plan/profile_json.cc
  src/plan/workload.cc
  src/plan/simulator.cc
  src/comm/flight_analysis.cc
  src/io/safetensors.cc
  src/io/npy.cc)
