// kt-export-hf: writes a DeepSeek GGUF model as a Hugging Face checkpoint
// (config.json + model.safetensors, every weight dequantized to f32) for
// transformers to load. See docs/golden-fixtures.md.
#include "runtime/support/ByteSize.h"
#include "tools/kt-export-hf/HfExport.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <iostream>

namespace {

using kt::Status;
using kt::StatusOr;
using namespace kt::hfexport;
using kt::formatByteSize;


} // namespace

int main(int argc, char **argv) {
  CLI::App app{"Writes a DeepSeek GGUF model (architecture deepseek2) as a Hugging Face "
               "checkpoint: DIR/config.json (DeepseekV3Config, or DeepseekV2Config for softmax "
               "gating) and DIR/model.safetensors with every weight dequantized to f32.",
               "kt-export-hf"};
  std::string model, output, kvB = "auto";
  bool quiet = false;
  app.add_option("model", model, "GGUF model: a file, any part of a split model, or a directory")
      ->required();
  app.add_option("-o,--output", output, "Output directory (created if missing)")->required();
  app.add_option("--kv-b", kvB,
                 "Source of kv_b_proj when the file has both forms: auto (the joint attn_kv_b "
                 "when present), joint, or split (rebuilt from attn_k_b and attn_v_b)")
      ->capture_default_str();
  bool fp8 = false;
  Fp8ExportOptions fp8Options;
  std::string shardSize = "0";
  app.add_flag("--fp8", fp8,
               "Write an FP8 checkpoint as DeepSeek publishes V3/R1: projection matrices as "
               "F8_E4M3 with a weight_scale_inv per 128x128 block, the rest BF16, "
               "quantization_config in config.json");
  app.add_option("--fp8-block", fp8Options.block, "--fp8: block size of the scales")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);
  app.add_option("--shard-size", shardSize,
                 "--fp8: most bytes per shard, e.g. 64MiB (0: one model.safetensors); shards come "
                 "with model.safetensors.index.json")
      ->capture_default_str();
  app.add_flag("-q,--quiet", quiet, "Print nothing on success");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError &error) {
    return app.exit(error);
  }

  ExportOptions options;
  if (kvB == "auto")
    options.kvB = KvBSource::Auto;
  else if (kvB == "joint")
    options.kvB = KvBSource::Joint;
  else if (kvB == "split")
    options.kvB = KvBSource::Split;
  else {
    std::cerr << "kt-export-hf: error: Unknown --kv-b '" << kvB << "'; use auto, joint or split.\n";
    return 2;
  }

  StatusOr<std::unique_ptr<kt::gguf::GgufModel>> opened = kt::gguf::GgufModel::open(model);
  if (!opened.ok()) {
    std::cerr << "kt-export-hf: error: " << opened.message() << "\n";
    return 1;
  }
  StatusOr<ExportPlan> plan = planExport(**opened, options);
  if (!plan.ok()) {
    std::cerr << "kt-export-hf: error: " << plan.message() << "\n";
    return 1;
  }
  if (fp8) {
    std::optional<uint64_t> shardBytes = kt::parseByteSize(shardSize);
    if (!shardBytes) {
      std::cerr << "kt-export-hf: error: --shard-size '" << shardSize
                << "' is not a size; use e.g. 64MiB or 0\n";
      return 2;
    }
    fp8Options.shardBytes = *shardBytes;
    Status written = writeFp8Export(*plan, output, fp8Options);
    if (!written.ok()) {
      std::cerr << "kt-export-hf: error: " << written.message() << "\n";
      return 1;
    }
    if (!quiet)
      std::printf("wrote %s: an FP8 checkpoint (%s, %zu source tensors, e4m3 blocks of %lld)\n",
                  output.c_str(), std::string(hfModelTypeName(plan->modelType)).c_str(),
                  plan->tensors.size(), static_cast<long long>(fp8Options.block));
    return 0;
  }
  Status written = writeExport(*plan, output);
  if (!written.ok()) {
    std::cerr << "kt-export-hf: error: " << written.message() << "\n";
    return 1;
  }
  if (!quiet)
    std::printf("wrote %s/config.json (%s) and %s/model.safetensors (%zu tensors, %s of f32)\n",
                output.c_str(), std::string(hfModelTypeName(plan->modelType)).c_str(),
                output.c_str(), plan->tensors.size(), formatByteSize(plan->dataBytes()).c_str());
  return 0;
}
