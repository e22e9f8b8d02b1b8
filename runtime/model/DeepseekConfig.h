// Hyper-parameters of a DeepSeek-V2/V2-Lite/V3/R1 model (GGUF architecture
// `deepseek2`), read from GGUF metadata with the defaults the GGUF ecosystem
// applies to keys older files lack.
#pragma once

#include "runtime/gguf/GgufFile.h"
#include "runtime/support/Status.h"

#include <cstdint>
#include <string>

namespace kt::model {

enum class ExpertScoring { Softmax, Sigmoid };

struct DeepseekConfig {
  std::string name;            // general.name, may be empty
  int64_t blockCount = 0;      // transformer layers
  int64_t contextLength = 0;
  int64_t hidden = 0;          // embedding_length
  int64_t denseFfn = 0;        // feed_forward_length (dense lead layers)
  int64_t vocab = 0;
  int64_t heads = 0;
  int64_t qLoraRank = 0;       // 0: queries are not compressed (V2-Lite)
  int64_t kvLoraRank = 0;
  int64_t qkNopeHeadDim = 0;
  int64_t qkRopeHeadDim = 0;
  int64_t vHeadDim = 0;
  float rmsEps = 1e-6f;
  double ropeTheta = 10000.0;
  double ropeScalingFactor = 1.0;  // > 1 means YaRN
  int64_t ropeOriginalContextLength = 0;
  double ropeYarnLogMultiplier = 0.0;
  int64_t leadingDenseBlocks = 0;
  int64_t experts = 0;
  int64_t expertsUsed = 0;
  int64_t sharedExperts = 0;
  int64_t expertFfn = 0;
  double expertWeightsScale = 1.0;
  bool expertWeightsNorm = false;
  ExpertScoring scoring = ExpertScoring::Softmax;
  int64_t expertGroups = 1;
  int64_t expertGroupsUsed = 1;

  bool isMoeLayer(int64_t layer) const {
    return experts > 0 && layer >= leadingDenseBlocks;
  }

  // Reads and checks the hyper-parameters; fails with a message naming the
  // file and the key for an unknown architecture or a missing/invalid key.
  static StatusOr<DeepseekConfig> fromGguf(const gguf::GgufModel &model);
};

const char *expertScoringName(ExpertScoring scoring);

} // namespace kt::model
