#include "runtime/cpu/Attention.h"

#include <algorithm>
#include <cstring>

namespace kt::cpu {

MlaAttention::MlaAttention(const MlaShape &shape, MlaWeights weights, const RopeConfig &rope)
    : shape_(shape), w_(std::move(weights)), rope_(rope),
      softmaxScale_(static_cast<float>(attentionSoftmaxScale(shape.nope + shape.rope, rope))) {}

void MlaAttention::forward(ThreadPool &pool, Workspace &workspace, const float *x,
                           int64_t tokens, const std::vector<Segment> &segments,
                           float *out) const {
  const MlaShape &s = shape_;
  const int64_t qkDim = s.nope + s.rope;
  float *query = workspace.floats(Workspace::Query, static_cast<size_t>(tokens * s.heads * qkDim));
  if (s.qLoraRank > 0) {
    float *compressed =
        workspace.floats(Workspace::QueryLora, static_cast<size_t>(tokens * s.qLoraRank));
    matmul(pool, w_.qA, x, tokens, compressed);
    for (int64_t t = 0; t < tokens; ++t) {
      float *row = compressed + t * s.qLoraRank;
      rmsNorm(row, w_.qANorm.data(), s.qLoraRank, s.eps, row);
    }
    matmul(pool, w_.qB, compressed, tokens, query);
  } else {
    matmul(pool, w_.q, x, tokens, query);
  }

  const int64_t kvWidth = s.kvLoraRank + s.rope;
  float *kv = workspace.floats(Workspace::KvCompressed, static_cast<size_t>(tokens * kvWidth));
  matmul(pool, w_.kvA, x, tokens, kv);

  thread_local std::vector<float> cos, sin; // the driving thread's: no allocation per token
  cos.resize(static_cast<size_t>(s.rope / 2));
  sin.resize(static_cast<size_t>(s.rope / 2));
  for (const Segment &segment : segments)
    for (int64_t i = 0; i < segment.count; ++i) {
      const int64_t t = segment.row + i, position = segment.start + i;
      rope_.angles(position, cos.data(), sin.data());
      const float *row = kv + t * kvWidth;
      rmsNorm(row, w_.kvANorm.data(), s.kvLoraRank, s.eps,
              segment.cache.latent + position * s.kvLoraRank);
      float *ropeKey = segment.cache.ropeKey + position * s.rope;
      std::memcpy(ropeKey, row + s.kvLoraRank, static_cast<size_t>(s.rope) * sizeof(float));
      rope_.rotate(ropeKey, cos.data(), sin.data());
      for (int64_t h = 0; h < s.heads; ++h)
        rope_.rotate(query + (t * s.heads + h) * qkDim + s.nope, cos.data(), sin.data());
    }

  float *heads = workspace.floats(Workspace::AttnHeads, static_cast<size_t>(tokens * s.heads * s.v));
  for (const Segment &segment : segments) {
    const float *segmentQuery = query + segment.row * s.heads * qkDim;
    float *segmentHeads = heads + segment.row * s.heads * s.v;
    if (segment.path == Path::Absorbed)
      attendAbsorbed(pool, segmentQuery, segment.count, segment.start, segment.cache,
                     segmentHeads);
    else
      attendExpanded(pool, segmentQuery, segment.count, segment.start, segment.cache,
                     segmentHeads);
  }
  matmul(pool, w_.o, heads, tokens, out);
}

size_t MlaAttention::upProjectionScratchFloats() const {
  size_t floats = 0;
  for (const std::optional<WeightMatrix> &m : {w_.kvB, w_.kB, w_.vB})
    if (m)
      floats = std::max(floats, matmulScratchFloats(*m));
  return floats;
}

void MlaAttention::attendExpanded(ThreadPool &pool, const float *query, int64_t tokens,
                                  int64_t start, const LatentCache &cache,
                                  float *heads) const {
  const MlaShape &s = shape_;
  const int64_t qkDim = s.nope + s.rope;
  const int64_t positions = start + tokens;
  const size_t matmulFloats = upProjectionScratchFloats();

  pool.parallelFor(s.heads, [&](int64_t h, int) {
    float *scratch = threadScratch(0, matmulFloats);
    float *keys = threadScratch(1, static_cast<size_t>(positions * s.nope));
    float *values = threadScratch(2, static_cast<size_t>(positions * s.v));
    float *scores = threadScratch(3, static_cast<size_t>(positions));

    // Keys (nope part) and values of head h at every cached position.
    if (w_.kvB) {
      const int64_t first = h * (s.nope + s.v);
      matmulRows(*w_.kvB, first, first + s.nope, cache.latent, s.kvLoraRank, positions, keys,
                 s.nope, scratch);
    } else {
      std::fill(keys, keys + positions * s.nope, 0.0f);
      matmulTransposedRows(*w_.kB, h * s.kvLoraRank, (h + 1) * s.kvLoraRank, cache.latent,
                           s.kvLoraRank, positions, keys, s.nope, scratch);
    }
    if (w_.vB)
      matmulRows(*w_.vB, h * s.v, (h + 1) * s.v, cache.latent, s.kvLoraRank, positions, values,
                 s.v, scratch);
    else {
      const int64_t first = h * (s.nope + s.v) + s.nope;
      matmulRows(*w_.kvB, first, first + s.v, cache.latent, s.kvLoraRank, positions, values,
                 s.v, scratch);
    }

    for (int64_t t = 0; t < tokens; ++t) {
      const float *q = query + (t * s.heads + h) * qkDim;
      const int64_t visible = start + t + 1;
      for (int64_t p = 0; p < visible; ++p)
        scores[p] = (dot(q, keys + p * s.nope, s.nope) +
                     dot(q + s.nope, cache.ropeKey + p * s.rope, s.rope)) *
                    softmaxScale_;
      softmax(scores, visible);
      float *o = heads + (t * s.heads + h) * s.v;
      std::fill(o, o + s.v, 0.0f);
      for (int64_t p = 0; p < visible; ++p)
        axpy(scores[p], values + p * s.v, o, s.v);
    }
  });
}

void MlaAttention::attendAbsorbed(ThreadPool &pool, const float *query, int64_t tokens,
                                  int64_t start, const LatentCache &cache,
                                  float *heads) const {
  const MlaShape &s = shape_;
  const int64_t qkDim = s.nope + s.rope;
  const int64_t positions = start + tokens;
  const size_t matmulFloats = upProjectionScratchFloats();

  pool.parallelFor(s.heads, [&](int64_t h, int) {
    float *scratch = threadScratch(0, matmulFloats);
    float *absorbed = threadScratch(1, static_cast<size_t>(tokens * s.kvLoraRank));
    float *context = threadScratch(2, static_cast<size_t>(tokens * s.kvLoraRank));
    float *scores = threadScratch(3, static_cast<size_t>(positions));
    const float *headQuery = query + h * qkDim;
    const int64_t queryStride = s.heads * qkDim;

    // absorbed[c] = sum_j K_h[j][c] q_nope[j]: the query in latent space.
    if (w_.kB) {
      matmulRows(*w_.kB, h * s.kvLoraRank, (h + 1) * s.kvLoraRank, headQuery, queryStride,
                 tokens, absorbed, s.kvLoraRank, scratch);
    } else {
      std::fill(absorbed, absorbed + tokens * s.kvLoraRank, 0.0f);
      const int64_t first = h * (s.nope + s.v);
      matmulTransposedRows(*w_.kvB, first, first + s.nope, headQuery, queryStride, tokens,
                           absorbed, s.kvLoraRank, scratch);
    }

    for (int64_t t = 0; t < tokens; ++t) {
      const float *a = absorbed + t * s.kvLoraRank;
      const float *qRope = headQuery + t * queryStride + s.nope;
      const int64_t visible = start + t + 1;
      for (int64_t p = 0; p < visible; ++p)
        scores[p] = (dot(a, cache.latent + p * s.kvLoraRank, s.kvLoraRank) +
                     dot(qRope, cache.ropeKey + p * s.rope, s.rope)) *
                    softmaxScale_;
      softmax(scores, visible);
      float *c = context + t * s.kvLoraRank;
      std::fill(c, c + s.kvLoraRank, 0.0f);
      for (int64_t p = 0; p < visible; ++p)
        axpy(scores[p], cache.latent + p * s.kvLoraRank, c, s.kvLoraRank);
    }

    // out[j] = V_h[j] . context: the value up-projection of the latent context.
    float *o = heads + h * s.v;
    const int64_t outStride = s.heads * s.v;
    if (w_.vB) {
      matmulRows(*w_.vB, h * s.v, (h + 1) * s.v, context, s.kvLoraRank, tokens, o, outStride,
                 scratch);
    } else {
      const int64_t first = h * (s.nope + s.v) + s.nope;
      matmulRows(*w_.kvB, first, first + s.v, context, s.kvLoraRank, tokens, o, outStride,
                 scratch);
    }
  });
}

} // namespace kt::cpu
