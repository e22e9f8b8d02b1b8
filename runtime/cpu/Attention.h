// Multi-head latent attention (MLA) of DeepSeek-V2/V3 on the CPU, with the
// compressed KV cache: per token and layer only the normalized latent
// (kv_lora_rank values) and the rotated rope key shared by all heads
// (qk_rope_head_dim values) are kept.
#pragma once

#include "runtime/cpu/Linear.h"
#include "runtime/cpu/Math.h"
#include "runtime/cpu/Rope.h"
#include "runtime/cpu/ThreadPool.h"

#include <cstdint>
#include <optional>
#include <vector>

namespace kt::cpu {

struct MlaShape {
  int64_t hidden = 0;
  int64_t heads = 0;
  int64_t qLoraRank = 0; // 0: q_proj (V2-Lite)
  int64_t kvLoraRank = 0;
  int64_t nope = 0;      // qk_nope_head_dim
  int64_t rope = 0;      // qk_rope_head_dim
  int64_t v = 0;         // v_head_dim
  float eps = 1e-6f;     // of q_a_norm and kv_a_norm
};

struct MlaWeights {
  WeightMatrix qA, qB;          // q_a_proj [q_lora][hidden], q_b_proj [heads*(nope+rope)][q_lora]
  std::vector<float> qANorm;    // q_lora_rank
  WeightMatrix q;               // q_proj [heads*(nope+rope)][hidden], without q_lora
  WeightMatrix kvA;             // kv_a_proj_with_mqa [kv_lora + rope][hidden]
  std::vector<float> kvANorm;   // kv_lora_rank
  // The up-projection of the latent in the forms the model has (at least
  // kvB, or kB and vB), all rows of each tensor:
  //   kv_b_proj [heads * (nope + v)][kv_lora]: per head nope key rows, then v value rows;
  //   k_b_proj  [heads * kv_lora][nope]: per head the key rows transposed;
  //   v_b_proj  [heads * v][kv_lora]: per head the value rows.
  std::optional<WeightMatrix> kvB, kB, vB;
  WeightMatrix o;               // o_proj [hidden][heads * v]
};

// One layer's compressed cache: `capacity` positions.
struct LatentCache {
  float *latent = nullptr;   // capacity x kv_lora_rank, after kv_a_norm
  float *ropeKey = nullptr;  // capacity x rope, after RoPE (HF's de-interleaved order)
};

class MlaAttention {
public:
  // How the attention of new tokens over the cache is computed; both give
  // the same result up to rounding.
  enum class Path {
    // Keys and values rebuilt from the latent for every cached position and
    // head (HF's computation); cheaper for many new tokens.
    Expanded,
    // Weight absorption: the nope query mapped into the latent space through
    // the key up-projection, attention over the latent cache directly, the
    // latent context mapped out through the value up-projection; cheaper
    // for one token.
    Absorbed,
  };

  // The tokens of one sequence in a step: rows [row, row + count) of x and
  // out, at positions [start, start + count) of `cache`.
  struct Segment {
    int64_t row = 0;
    int64_t count = 0;
    int64_t start = 0;
    LatentCache cache;
    Path path = Path::Expanded;
  };

  MlaAttention(const MlaShape &shape, MlaWeights weights, const RopeConfig &rope);

  const MlaShape &shape() const { return shape_; }

  // x: `tokens` rows of `hidden` values, split into segments of different
  // sequences. Stores each token's latent and rope key in its segment's
  // cache, attends causally over that cache's positions [0, position + 1)
  // and writes `tokens` rows of `hidden` values to `out`. The projections
  // run once over all rows (each weight read once per step, whatever the
  // number of sequences); only the attention itself is per segment.
  void forward(ThreadPool &pool, Workspace &workspace, const float *x, int64_t tokens,
               const std::vector<Segment> &segments, float *out) const;

private:
  // Scratch floats of the largest up-projection product (kv_b, k_b, v_b).
  size_t upProjectionScratchFloats() const;
  void attendExpanded(ThreadPool &pool, const float *query, int64_t tokens, int64_t start,
                      const LatentCache &cache, float *heads) const;
  void attendAbsorbed(ThreadPool &pool, const float *query, int64_t tokens, int64_t start,
                      const LatentCache &cache, float *heads) const;

  MlaShape shape_;
  MlaWeights w_;
  Rope rope_;
  float softmaxScale_;
};

} // namespace kt::cpu
