// DeepSeek's expert choice from router logits, one thread block per token:
// scores (sigmoid, or softmax over the experts), the correction bias added
// for selection only, group-limited choice (the best GROUPS_USED of GROUPS
// groups by the sum of their top-2 sigmoid scores, or their top score for
// softmax), top-k over the remaining experts (the lower index wins a tie),
// weights = the chosen scores, normalized to sum 1 if NORMALIZE, times SCALE.
// The same rules as runtime/cpu/MoeRouting.cpp, which is its reference.
// Specialization defines:
//   EXPERTS, TOP_K, GROUPS, GROUPS_USED   routing shape
//   SIGMOID        1: sigmoid scores (V3), 0: softmax (V2)
//   HAS_BIAS       1: e_score_correction_bias is given
//   NORMALIZE      1: weights normalized before scaling
//   SCALE          routed_scaling_factor (a float literal)
//   BLOCK_THREADS  threads per block: a multiple of 32, at least EXPERTS
#include "common.cuh"

#if !defined(EXPERTS) || !defined(TOP_K) || !defined(GROUPS) || !defined(GROUPS_USED) || \
    !defined(SIGMOID) || !defined(HAS_BIAS) || !defined(NORMALIZE) || !defined(SCALE) ||   \
    !defined(BLOCK_THREADS)
#error "moe_gate needs EXPERTS, TOP_K, GROUPS, GROUPS_USED, SIGMOID, HAS_BIAS, NORMALIZE, SCALE and BLOCK_THREADS"
#endif

static_assert(BLOCK_THREADS % 32 == 0 && BLOCK_THREADS >= EXPERTS, "one thread per expert");
static_assert(EXPERTS % GROUPS == 0 && GROUPS_USED >= 1 && GROUPS_USED <= GROUPS, "groups");
constexpr int kPerGroup = EXPERTS / GROUPS;
constexpr int kWarps = BLOCK_THREADS / 32;
// The top-k's candidates: each warp's TOP_K best.
constexpr int kCandidates = kWarps * TOP_K;
constexpr int kCandidatesPerLane = (kCandidates + 31) / 32;
#define kMinusInfinity (-__int_as_float(0x7f800000))

extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
moe_gate(const float *__restrict__ logits, const float *__restrict__ bias,
         int *__restrict__ ids, float *__restrict__ weights) {
  KT_WAIT_FOR_PRIOR_GRID();
  __shared__ float scores[EXPERTS];
  __shared__ float selection[EXPERTS];
  __shared__ float candidateValues[kCandidates];
  __shared__ int candidateIndices[kCandidates];
  __shared__ float reduction[kWarps];
  __shared__ int chosen[TOP_K];
  const int e = threadIdx.x;
  const float *row = logits + static_cast<long long>(blockIdx.x) * EXPERTS;

  float score = 0.0f;
#if SIGMOID
  if (e < EXPERTS)
    score = 1.0f / (1.0f + expf(-row[e]));
#else
  // Softmax over the experts: max, then the sum of exponentials.
  float value = e < EXPERTS ? row[e] : kMinusInfinity;
  float maximum = value;
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1)
    maximum = fmaxf(maximum, __shfl_xor_sync(0xffffffffu, maximum, offset));
  if (e % 32 == 0)
    reduction[e / 32] = maximum;
  __syncthreads();
  maximum = reduction[0];
  for (int w = 1; w < kWarps; ++w)
    maximum = fmaxf(maximum, reduction[w]);
  __syncthreads();
  const float exponential = e < EXPERTS ? expf(value - maximum) : 0.0f;
  const float total = kt::blockSum<BLOCK_THREADS>(exponential, reduction);
  score = exponential * (1.0f / total);
#endif
  if (e < EXPERTS) {
    scores[e] = score;
#if HAS_BIAS
    selection[e] = score + bias[e];
#else
    selection[e] = score;
#endif
  }
  __syncthreads();

#if GROUPS > 1 && GROUPS_USED < GROUPS
  // Group scores (the top selection score of each group's members, plus the
  // second for sigmoid), then the worst groups dropped one by one (the higher
  // index loses a tie), then their experts masked.
  __shared__ float groupScores[GROUPS];
  __shared__ bool groupDropped[GROUPS];
#if EXPERTS / GROUPS <= 32
  // A warp per group: its members one per lane (the lower index wins a tie).
  for (int g = e / 32; g < GROUPS; g += kWarps) {
    const int lane = e % 32;
    const float value = lane < kPerGroup ? selection[g * kPerGroup + lane] : kMinusInfinity;
    float best = value;
    int bestIndex = lane < kPerGroup ? lane : 32;
    kt::warpArgmax(best, bestIndex);
    float groupScore = best;
#if SIGMOID
    if (kPerGroup > 1) {
      float second = lane == bestIndex ? kMinusInfinity : value;
      int secondIndex = lane == bestIndex || lane >= kPerGroup ? 32 : lane;
      kt::warpArgmax(second, secondIndex);
      groupScore += second;
    }
#endif
    if (lane == 0)
      groupScores[g] = groupScore;
  }
#else
  if (e == 0)
    for (int g = 0; g < GROUPS; ++g) {
      const float *member = selection + g * kPerGroup;
      int first = 0;
      for (int i = 1; i < kPerGroup; ++i)
        if (member[i] > member[first])
          first = i;
      float value = member[first];
#if SIGMOID
      int second = -1;
      for (int i = 0; i < kPerGroup; ++i)
        if (i != first && (second < 0 || member[i] > member[second]))
          second = i;
      value += member[second];
#endif
      groupScores[g] = value;
    }
#endif
  __syncthreads();
#if GROUPS <= 32
  // Dropping the worst group GROUPS - GROUPS_USED times keeps the best
  // GROUPS_USED by (score, lower index on a tie): a lane per group counts
  // the groups ahead of its own.
  if (e < GROUPS) {
    const float mine = groupScores[e];
    int ahead = 0;
    for (int g = 0; g < GROUPS; ++g)
      ahead += groupScores[g] > mine || (groupScores[g] == mine && g < e);
    groupDropped[e] = ahead >= GROUPS_USED;
  }
#else
  if (e == 0) {
    for (int g = 0; g < GROUPS; ++g)
      groupDropped[g] = false;
    for (int dropped = 0; dropped < GROUPS - GROUPS_USED; ++dropped) {
      int worst = -1;
      for (int g = 0; g < GROUPS; ++g)
        if (!groupDropped[g] && (worst < 0 || groupScores[g] <= groupScores[worst]))
          worst = g;
      groupDropped[worst] = true;
    }
  }
#endif
  __syncthreads();
  if (e < EXPERTS && groupDropped[e / kPerGroup])
    selection[e] = kMinusInfinity;
  __syncthreads();
#endif

  // Top-k (the lower index wins a tie) in two warp-wide stages with one
  // barrier: each warp takes the TOP_K best of its experts, among which are
  // all of the block's TOP_K best that it holds; then warp 0 takes the TOP_K
  // best of those candidates. A taken entry becomes (-inf, EXPERTS), below
  // every expert, as the candidates past the last are.
  {
    float value = e < EXPERTS ? selection[e] : kMinusInfinity;
    int index = e < EXPERTS ? e : EXPERTS;
    for (int k = 0; k < TOP_K; ++k) {
      float best = value;
      int bestIndex = index;
      kt::warpArgmax(best, bestIndex);
      if (e % 32 == 0) {
        candidateValues[(e / 32) * TOP_K + k] = best;
        candidateIndices[(e / 32) * TOP_K + k] = bestIndex;
      }
      if (index == bestIndex)
        value = kMinusInfinity, index = EXPERTS;
    }
  }
  __syncthreads();
  if (e < 32) {
    float values[kCandidatesPerLane];
    int indices[kCandidatesPerLane];
#pragma unroll
    for (int j = 0; j < kCandidatesPerLane; ++j) {
      const int c = e + 32 * j;
      values[j] = c < kCandidates ? candidateValues[c] : kMinusInfinity;
      indices[j] = c < kCandidates ? candidateIndices[c] : EXPERTS;
    }
    for (int k = 0; k < TOP_K; ++k) {
      float best = values[0];
      int bestIndex = indices[0];
#pragma unroll
      for (int j = 1; j < kCandidatesPerLane; ++j)
        if (values[j] > best || (values[j] == best && indices[j] < bestIndex))
          best = values[j], bestIndex = indices[j];
      kt::warpArgmax(best, bestIndex);
      if (e == 0)
        chosen[k] = bestIndex;
#pragma unroll
      for (int j = 0; j < kCandidatesPerLane; ++j)
        if (indices[j] == bestIndex)
          values[j] = kMinusInfinity, indices[j] = EXPERTS;
    }
  }

  if (e == 0) {
    float sum = 0.0f;
    for (int k = 0; k < TOP_K; ++k)
      sum += scores[chosen[k]];
    const float denominator = NORMALIZE ? sum + 1e-20f : 1.0f;
    for (int k = 0; k < TOP_K; ++k) {
      ids[blockIdx.x * TOP_K + k] = chosen[k];
      weights[blockIdx.x * TOP_K + k] = scores[chosen[k]] / denominator * (SCALE);
    }
  }
}
