#include "compiler/CpuCodegen/RowKernelGenerator.h"

#include "runtime/cpu/GeneratedKernels.h"
#include "runtime/cpu/IsaVariants.h"

#include "llvm-c/Target.h"
#include "llvm/IR/IRBuilder.h"
#include "llvm/IR/InlineAsm.h"
#include "llvm/IR/IntrinsicsX86.h"
#include "llvm/IR/LLVMContext.h"
#include "llvm/IR/LegacyPassManager.h"
#include "llvm/IR/Module.h"
#include "llvm/IR/Verifier.h"
#include "llvm/MC/TargetRegistry.h"
#include "llvm/Passes/PassBuilder.h"
#include "llvm/Support/FileSystem.h"
#include "llvm/Support/raw_ostream.h"
#include "llvm/Target/TargetMachine.h"
#include "llvm/TargetParser/X86TargetParser.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

namespace kt::codegen {
namespace {

using namespace llvm;
using gguf::GgmlType;

constexpr const char *kTriple = "x86_64-unknown-linux-gnu";
constexpr int kChunk = 32; // values per vector chunk (one Q8_0 block, one K-quant group)

bool hasFeature(const CpuCodeTarget &target, const char *name) {
  return std::find(target.features.begin(), target.features.end(), name) != target.features.end();
}

// The code is compiled for the x86-64 baseline plus the target's features
// that the runtime checks on the host (tuned for the target CPU), so it can
// use nothing a host that passes the check lacks.
std::vector<std::string> codeFeatures(const CpuCodeTarget &target) {
  std::vector<std::string> features;
  for (const std::string &feature : cpu::checkedIsaFeatures())
    if (hasFeature(target, feature.c_str()))
      features.push_back(feature);
  return features;
}

std::string featureString(const std::vector<std::string> &features) {
  std::string text;
  for (const std::string &feature : features)
    text += (text.empty() ? "+" : ",+") + feature;
  return text;
}

// Tokens whose dot products share one decoding of the weights: as many as
// the accumulators of 32 floats fit in the vector registers.
int tokenBlockFor(int vectorBits) { return vectorBits == 512 ? 4 : vectorBits == 256 ? 2 : 1; }

// ------------------------------------------------------------------ IR helpers

class KernelBuilder {
public:
  KernelBuilder(Module &module, Function *function, bool hasF16C)
      : module_(module), function_(function), b_(module.getContext()), hasF16C_(hasF16C) {}

  IRBuilder<> &b() { return b_; }
  LLVMContext &context() { return module_.getContext(); }
  Type *f32() { return b_.getFloatTy(); }
  Type *i8() { return b_.getInt8Ty(); }
  Type *i64() { return b_.getInt64Ty(); }
  VectorType *vec(Type *element, unsigned lanes) { return FixedVectorType::get(element, lanes); }
  Value *i64c(int64_t v) { return b_.getInt64(static_cast<uint64_t>(v)); }

  BasicBlock *block(const char *name) { return BasicBlock::Create(context(), name, function_); }

  // `value` passed through an empty inline asm at `at`'s insertion point:
  // the same value, which the optimizers and instruction selection cannot
  // see into.
  static Value *opaque(IRBuilder<> &at, Value *value) {
    Type *type = value->getType();
    return at.CreateCall(InlineAsm::get(FunctionType::get(type, {type}, false), "",
                                        type->isVectorTy() ? "=v,0" : "=r,0",
                                        /*hasSideEffects=*/false),
                         {value});
  }
  // `value` made opaque in the entry block, once per constant: it keeps a
  // constant operand from being combined with its neighbours into a worse
  // instruction, and stays in a register across the loops.
  Value *opaqueConstant(Constant *value) {
    Value *&made = opaqueConstants_[value];
    if (!made) {
      BasicBlock &first = function_->getEntryBlock();
      IRBuilder<> entry(&first, first.getFirstInsertionPt());
      made = opaque(entry, value);
    }
    return made;
  }

  // for (i = begin; i < end; i += step) with loop-carried values; returns
  // their values after the loop. `body` gets i and the carried values and
  // returns their next values.
  std::vector<Value *> loop(Value *begin, Value *end, int64_t step, std::vector<Value *> init,
                            const std::function<std::vector<Value *>(Value *, const std::vector<Value *> &)> &body) {
    BasicBlock *pre = b_.GetInsertBlock();
    BasicBlock *header = block("loop"), *bodyBlock = block("body"), *exit = block("exit");
    b_.CreateBr(header);
    b_.SetInsertPoint(header);
    PHINode *index = b_.CreatePHI(i64(), 2, "i");
    index->addIncoming(begin, pre);
    std::vector<PHINode *> phis;
    std::vector<Value *> carried;
    for (Value *value : init) {
      PHINode *phi = b_.CreatePHI(value->getType(), 2);
      phi->addIncoming(value, pre);
      phis.push_back(phi);
      carried.push_back(phi);
    }
    b_.CreateCondBr(b_.CreateICmpSLT(index, end), bodyBlock, exit);
    b_.SetInsertPoint(bodyBlock);
    std::vector<Value *> next = body(index, carried);
    Value *nextIndex = b_.CreateAdd(index, i64c(step));
    BasicBlock *latch = b_.GetInsertBlock();
    b_.CreateBr(header);
    index->addIncoming(nextIndex, latch);
    for (size_t i = 0; i < phis.size(); ++i)
      phis[i]->addIncoming(next[i], latch);
    b_.SetInsertPoint(exit);
    return carried;
  }

  Value *loadBytes(Value *base, int64_t offset, unsigned count) {
    Value *address = b_.CreateGEP(i8(), base, i64c(offset));
    return b_.CreateAlignedLoad(vec(i8(), count), address, Align(1));
  }
  Value *loadByte(Value *base, int64_t offset) {
    return b_.CreateLoad(i8(), b_.CreateGEP(i8(), base, i64c(offset)));
  }
  Value *loadFloats(Value *base, Value *index, unsigned count) {
    return b_.CreateAlignedLoad(vec(f32(), count), b_.CreateGEP(f32(), base, index), Align(4));
  }
  Value *splatBytes(uint8_t value, unsigned lanes = kChunk) {
    return ConstantVector::getSplat(ElementCount::getFixed(lanes), b_.getInt8(value));
  }
  Value *splat(Value *scalar, unsigned lanes = kChunk) { return b_.CreateVectorSplat(lanes, scalar); }

  // IEEE half at `base + offset` to float: with F16C one instruction, else
  // in integer arithmetic (no library call on any target): the magnitude bits shifted into
  // float position and scaled by 2^112 (exact for normals and subnormals),
  // infinity/NaN exponents fixed up, the sign put back.
  Value *loadHalf(Value *base, int64_t offset) {
    Value *half = b_.CreateAlignedLoad(b_.getInt16Ty(), b_.CreateGEP(i8(), base, i64c(offset)),
                                       Align(1));
    if (hasF16C_) // one conversion instruction
      return b_.CreateFPExt(b_.CreateBitCast(half, b_.getHalfTy()), f32());
    Value *bits = b_.CreateZExt(half, b_.getInt32Ty());
    Value *magnitude = b_.CreateShl(b_.CreateAnd(bits, 0x7fff), 13);
    Value *scaled = b_.CreateFMul(b_.CreateBitCast(magnitude, f32()),
                                  ConstantFP::get(f32(), 5.192296858534828e33)); // 2^112
    Value *special = b_.CreateICmpEQ(b_.CreateAnd(bits, 0x7c00), b_.getInt32(0x7c00));
    Value *infNan = b_.CreateOr(magnitude, b_.getInt32(0x7f800000));
    Value *unsignedBits = b_.CreateSelect(special, infNan, b_.CreateBitCast(scaled, b_.getInt32Ty()));
    Value *sign = b_.CreateShl(b_.CreateAnd(bits, 0x8000), 16);
    return b_.CreateBitCast(b_.CreateOr(unsignedBits, sign), f32());
  }

  // Prefetches the `bytes` bytes at `base + offset` (one per line) into L1,
  // or with `intoL2` into L2 only (prefetcht1), which holds many more lines
  // in flight than L1's fill buffers.
  void prefetch(Value *base, int64_t offset, int64_t bytes, bool intoL2 = false) {
    for (int64_t line = 0; line < bytes; line += 64)
      b_.CreateIntrinsic(Intrinsic::prefetch, {b_.getPtrTy()},
                         {b_.CreateGEP(i8(), base, i64c(offset + line)), b_.getInt32(0),
                          b_.getInt32(intoL2 ? 2 : 3), b_.getInt32(1)});
  }
  // The row kernels' weights: far ahead into L2, near ahead into L1.
  void prefetchWeights(const CpuCodeTarget &target, Value *base, int64_t bytes) {
    if (target.prefetchBytes > 0)
      prefetch(base, target.prefetchBytes, bytes, /*intoL2=*/true);
    if (target.nearPrefetchBytes > 0)
      prefetch(base, target.nearPrefetchBytes, bytes);
  }

  // The first bytes of a call's rows, which the loop's prefetches (ahead of
  // the weights being decoded) never reach: up to the far distance into L2
  // and the near one into L1, so a call (one task of a parallel loop) does
  // not start on a run of cold misses.
  void prefetchStart(const CpuCodeTarget &target, Value *base, Value *bytes) {
    auto lines = [&](int64_t distance, bool intoL2) {
      if (distance <= 0)
        return;
      Value *end = b_.CreateSelect(b_.CreateICmpSLT(bytes, i64c(distance)), bytes, i64c(distance));
      loop(i64c(0), end, 64, {}, [&](Value *offset, const std::vector<Value *> &) {
        b_.CreateIntrinsic(Intrinsic::prefetch, {b_.getPtrTy()},
                           {b_.CreateGEP(i8(), base, offset), b_.getInt32(0),
                            b_.getInt32(intoL2 ? 2 : 3), b_.getInt32(1)});
        return std::vector<Value *>{};
      });
    };
    lines(target.prefetchBytes, true);
    lines(target.nearPrefetchBytes, false);
  }

  Value *fmuladd(Value *a, Value *x, Value *acc) {
    return b_.CreateIntrinsic(Intrinsic::fmuladd, {a->getType()}, {a, x, acc});
  }
  Value *reduceAdd(Value *vector) {
    CallInst *sum = b_.CreateFAddReduce(ConstantFP::getNegativeZero(f32()), vector);
    FastMathFlags flags;
    flags.setAllowReassoc();
    sum->setFastMathFlags(flags);
    return sum;
  }

private:
  Module &module_;
  Function *function_;
  IRBuilder<> b_;
  bool hasF16C_;
  std::map<Constant *, Value *> opaqueConstants_;
};

// ------------------------------------------------------------------ weight types

// The shuffle mask of lanes first .. first + count - 1.
SmallVector<int, 16> laneRange(int first, int count) {
  SmallVector<int, 16> lanes;
  for (int lane = first; lane < first + count; ++lane)
    lanes.push_back(lane);
  return lanes;
}

// 32 weights of a block as floats with their scale (a float, or 32 floats),
// to be multiplied with x[xOffset, xOffset + 32) of the block.
struct Chunk {
  Value *values;
  Value *scale;
  int64_t xOffset;
};

// One block of a weight type decoded: its chunks and, for types with
// per-group minimums, the 8 coefficients that multiply the sums of x over
// the block's 8 runs of 32 (subtracted).
struct DecodedBlock {
  std::vector<Chunk> chunks;
  Value *minimums = nullptr;
};

struct TypeCodegen {
  int64_t blockValues;
  bool hasMinimums;
  bool vectorScales; // a chunk's halves have their own scales (q6_K)
  std::function<DecodedBlock(KernelBuilder &, Value *block)> decode;
};

// Scales d * sc[j] and minimums dmin * m[j] of the 8 groups of a q4_K/q5_K
// block, unpacked from the 12 scale bytes b (GGML's get_scale_min_k4):
//   j < 4: sc = b[j] & 63,                          m = b[j + 4] & 63
//   j >= 4: sc = (b[j + 4] & 15) | (b[j - 4] >> 6) << 4, m = (b[j + 4] >> 4) | (b[j] >> 6) << 4
// All 16 at once in one 16-byte vector (sc in lanes 0-7, m in 8-15): two
// byte shuffles, two shifts, a blend and the masks, about half the
// instructions of unpacking sc and m apart (the block's next 4 bytes are
// read along and ignored).
struct KScales {
  Value *scales;    // <8 x float>
  Value *minimums;  // <8 x float>
  Value *scaleBits; // <8 x i8>: the 6-bit scales sc[j]
  Value *minBits;   // <8 x i8>: the 6-bit minimums m[j]
};
// The sc and m bytes of `blocks` (1 or 2) in one vector, 16 bytes per block
// (sc[0..8), then m[0..8)): the operations above on 16 bytes per block, so
// a pair unpacks in the instructions of one.
Value *kScaleBytes(KernelBuilder &k, const std::vector<Value *> &blocks) {
  IRBuilder<> &b = k.b();
  const int n = static_cast<int>(blocks.size()), width = 16 * n;
  Value *bytes = k.loadBytes(blocks[0], 4, 16);
  if (n == 2)
    bytes = b.CreateShuffleVector(bytes, k.loadBytes(blocks[1], 4, 16), laneRange(0, 32));
  VectorType *dwords = k.vec(b.getInt32Ty(), 4 * n), *i8s = k.vec(k.i8(), width);
  auto dwordShift = [&](Value *v, unsigned shift) {
    return b.CreateBitCast(b.CreateLShr(b.CreateBitCast(v, dwords), shift), i8s);
  };
  // A two-operand mask of one block's 16 lanes, repeated for each block
  // (indices from 16 pick the second operand, which is `width` lanes on).
  auto perBlock = [&](std::initializer_list<int> lane) {
    SmallVector<int, 32> mask;
    for (int block = 0; block < n; ++block)
      for (int i : lane)
        mask.push_back(i < 16 ? i + 16 * block : i - 16 + width + 16 * block);
    return mask;
  };
  auto constantBytes = [&](std::initializer_list<uint8_t> values) {
    SmallVector<Constant *, 32> lanes;
    for (int block = 0; block < n; ++block)
      for (uint8_t v : values)
        lanes.push_back(b.getInt8(v));
    return ConstantVector::get(lanes);
  };
  // Low bits: b[j] (sc, j < 4), b[j + 4] (sc, j >= 4; m), the last four
  // shifted right by 4 (m, j >= 4).
  Value *low = b.CreateShuffleVector(
      bytes, bytes, perBlock({0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11}));
  Value *lowShifted = dwordShift(low, 4);
  low = b.CreateShuffleVector(low, lowShifted,
                              perBlock({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 28, 29, 30, 31}));
  low = b.CreateAnd(
      low, constantBytes({63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15}));
  // High bits of j >= 4: bits 6-7 of b[j - 4] (sc) and b[j] (m) moved to 4-5.
  Value *zero = ConstantAggregateZero::get(i8s);
  Value *high = b.CreateShuffleVector(
      bytes, zero, perBlock({16, 16, 16, 16, 0, 1, 2, 3, 16, 16, 16, 16, 4, 5, 6, 7}));
  high = b.CreateAnd(dwordShift(high, 2), k.splatBytes(0x30, width));
  return b.CreateOr(low, high);
}

// kScaleBytes split: the sc and m bytes (<8 x i8> each) of each block.
std::vector<std::pair<Value *, Value *>> kScaleBits(KernelBuilder &k,
                                                    const std::vector<Value *> &blocks) {
  IRBuilder<> &b = k.b();
  Value *both = kScaleBytes(k, blocks);
  const int n = static_cast<int>(blocks.size());
  std::vector<std::pair<Value *, Value *>> bits;
  for (int block = 0; block < n; ++block)
    bits.push_back({b.CreateShuffleVector(both, both, laneRange(16 * block, 8)),
                    b.CreateShuffleVector(both, both, laneRange(16 * block + 8, 8))});
  return bits;
}

KScales kScales(KernelBuilder &k, Value *block) {
  IRBuilder<> &b = k.b();
  Value *d = k.loadHalf(block, 0), *dmin = k.loadHalf(block, 2);
  const auto [scaleBits, minBits] = kScaleBits(k, {block})[0];
  VectorType *f8 = k.vec(k.f32(), 8);
  return {b.CreateFMul(k.splat(d, 8), b.CreateUIToFP(scaleBits, f8)),
          b.CreateFMul(k.splat(dmin, 8), b.CreateUIToFP(minBits, f8)), scaleBits, minBits};
}

// The unsigned weight values of group pair j of a q4_K/q5_K block: the low
// nibbles of 32 bytes (group 2j) and the high nibbles (group 2j + 1), with
// q5_K's fifth bits (bits 2j and 2j + 1 of qh) added.
std::pair<Value *, Value *> kQuantGroups(KernelBuilder &k, GgmlType type, Value *block, int j) {
  IRBuilder<> &b = k.b();
  const bool five = type == GgmlType::Q5_K;
  Value *q = k.loadBytes(block, (five ? 48 : 16) + 32 * j, kChunk);
  Value *low = b.CreateAnd(q, k.splatBytes(0xF));
  Value *high = b.CreateLShr(q, k.splatBytes(4));
  if (five) {
    Value *qh = k.loadBytes(block, 16, kChunk);
    auto bit = [&](int shift) {
      Value *shifted = b.CreateLShr(qh, k.splatBytes(static_cast<uint8_t>(shift)));
      return b.CreateShl(b.CreateAnd(shifted, k.splatBytes(1)), k.splatBytes(4));
    };
    low = b.CreateOr(low, bit(2 * j));
    high = b.CreateOr(high, bit(2 * j + 1));
  }
  return {low, high};
}

// 32 bytes loaded into both halves of a 64-byte vector.
Value *loadBytesTwice(KernelBuilder &k, Value *block, int64_t offset) {
  SmallVector<int, 64> twice;
  for (int i = 0; i < 64; ++i)
    twice.push_back(i % 32);
  Value *bytes = k.loadBytes(block, offset, kChunk);
  return k.b().CreateShuffleVector(bytes, bytes, twice);
}

// The 16-bit words of a 64-byte vector shifted (right, or `left`) by
// `lowCount` in the first half and `highCount` in the second: one variable
// shift. Bits cross from byte to byte; callers mask them off.
Value *shiftWordHalves(KernelBuilder &k, Value *bytes64, bool left, int lowCount, int highCount) {
  IRBuilder<> &b = k.b();
  SmallVector<Constant *, 32> counts;
  for (int lane = 0; lane < 32; ++lane)
    counts.push_back(b.getInt16(static_cast<uint16_t>(lane < 16 ? lowCount : highCount)));
  Value *words = b.CreateBitCast(bytes64, k.vec(b.getInt16Ty(), 32));
  Value *shifted = left ? b.CreateShl(words, ConstantVector::get(counts))
                        : b.CreateLShr(words, ConstantVector::get(counts));
  return b.CreateBitCast(shifted, k.vec(k.i8(), 64));
}

// kQuantGroups' two groups as one 64-byte vector (group 2j, then 2j + 1),
// for the integer kernels: the 32 bytes in both halves, each half shifted
// by its own count, instead of two shifts and an insert.
Value *kQuantPiece(KernelBuilder &k, GgmlType type, Value *block, int j) {
  IRBuilder<> &b = k.b();
  const bool five = type == GgmlType::Q5_K;
  Value *q = loadBytesTwice(k, block, (five ? 48 : 16) + 32 * j);
  Value *piece = b.CreateAnd(shiftWordHalves(k, q, false, 0, 4), k.splatBytes(0xF, 64));
  if (five) {
    Value *bits = shiftWordHalves(k, loadBytesTwice(k, block, 16), false, 2 * j, 2 * j + 1);
    piece =
        b.CreateOr(piece, b.CreateShl(b.CreateAnd(bits, k.splatBytes(1, 64)), k.splatBytes(4, 64)));
  }
  return piece;
}

// q6Runs' runs in pairs as 64-byte vectors, for the integer kernels: runs
// 0 and 1 (the low nibbles of 64 bytes of ql) and 2 and 3 (the high ones),
// each with its 2-bit pairs of qh (bits 0, 2 and 4, 6) moved to bits 4-5
// by one variable shift of qh loaded into both halves.
std::array<Value *, 2> q6Pieces(KernelBuilder &k, Value *block, int n) {
  IRBuilder<> &b = k.b();
  Value *ql = k.loadBytes(block, 64 * n, 64);
  Value *qh = loadBytesTwice(k, block, 128 + 32 * n);
  Value *nibble = k.splatBytes(0xF, 64), *upperBits = k.splatBytes(0x30, 64);
  Value *first = b.CreateOr(b.CreateAnd(ql, nibble),
                            b.CreateAnd(shiftWordHalves(k, qh, true, 4, 2), upperBits));
  Value *second = b.CreateOr(b.CreateAnd(shiftWordHalves(k, ql, false, 4, 4), nibble),
                             b.CreateAnd(shiftWordHalves(k, qh, false, 0, 2), upperBits));
  return {first, second};
}

// The 4 runs of 32 unsigned 6-bit values (w + 32) of half n of a q6_K block:
// nibbles of ql with 2-bit pairs of qh; run r is at values 128n + 32r.
std::array<Value *, 4> q6Runs(KernelBuilder &k, Value *block, int n) {
  IRBuilder<> &b = k.b();
  Value *qlA = k.loadBytes(block, 64 * n, kChunk), *qlB = k.loadBytes(block, 64 * n + 32, kChunk);
  Value *qh = k.loadBytes(block, 128 + 32 * n, kChunk);
  auto upper = [&](int shift) {
    Value *pair = b.CreateAnd(b.CreateLShr(qh, k.splatBytes(static_cast<uint8_t>(shift))), k.splatBytes(3));
    return b.CreateShl(pair, k.splatBytes(4));
  };
  return {b.CreateOr(b.CreateAnd(qlA, k.splatBytes(0xF)), upper(0)),
          b.CreateOr(b.CreateAnd(qlB, k.splatBytes(0xF)), upper(2)),
          b.CreateOr(b.CreateLShr(qlA, k.splatBytes(4)), upper(4)),
          b.CreateOr(b.CreateLShr(qlB, k.splatBytes(4)), upper(6))};
}

TypeCodegen typeCodegen(GgmlType type) {
  switch (type) {
  case GgmlType::Q8_0:
    // {d: f16, qs: int8[32]}: w = d * q.
    return {32, false, false, [](KernelBuilder &k, Value *block) {
              Value *q = k.b().CreateSIToFP(k.loadBytes(block, 2, kChunk), k.vec(k.f32(), kChunk));
              return DecodedBlock{{{q, k.loadHalf(block, 0), 0}}, nullptr};
            }};
  case GgmlType::Q4_K:
  case GgmlType::Q5_K:
    // {d, dmin: f16, scales: 12 bytes, [q5_K: qh: 32 bytes,] qs: 128 bytes};
    // per 64 values 32 bytes, low nibbles the first 32, high nibbles the
    // next: w = d * sc[g] * q - dmin * m[g].
    return {256, true, false, [type](KernelBuilder &k, Value *block) {
              IRBuilder<> &b = k.b();
              KScales scales = kScales(k, block);
              DecodedBlock out;
              out.minimums = scales.minimums;
              for (int j = 0; j < 4; ++j) {
                auto [low, high] = kQuantGroups(k, type, block, j);
                for (int half = 0; half < 2; ++half)
                  out.chunks.push_back({b.CreateUIToFP(half ? high : low, k.vec(k.f32(), kChunk)),
                                        b.CreateExtractElement(scales.scales, static_cast<uint64_t>(2 * j + half)),
                                        64 * j + 32 * half});
              }
              return out;
            }};
  case GgmlType::Q6_K:
    // {ql: 128 bytes, qh: 64 bytes, scales: int8[16], d: f16}; per 128
    // values, 4 runs of 32 from the nibbles of ql and 2-bit pairs of qh,
    // minus 32, each half of a run with its own scale: w = d * sc[i] * q.
    return {256, false, true, [](KernelBuilder &k, Value *block) {
              IRBuilder<> &b = k.b();
              Value *d = k.loadHalf(block, 208);
              DecodedBlock out;
              SmallVector<Constant *, kChunk> firstHalf;
              for (int lane = 0; lane < kChunk; ++lane)
                firstHalf.push_back(b.getInt1(lane < 16));
              Value *firstHalfMask = ConstantVector::get(firstHalf);
              auto scale = [&](int index) {
                return b.CreateFMul(d, b.CreateSIToFP(k.loadByte(block, 192 + index), k.f32()));
              };
              for (int n = 0; n < 2; ++n) {
                std::array<Value *, 4> runs = q6Runs(k, block, n);
                for (int r = 0; r < 4; ++r) {
                  Value *centered = b.CreateSub(runs[r], k.splatBytes(32));
                  Value *values = b.CreateSIToFP(centered, k.vec(k.f32(), kChunk));
                  Value *scales = b.CreateSelect(firstHalfMask, k.splat(scale(8 * n + 2 * r)),
                                                 k.splat(scale(8 * n + 2 * r + 1)));
                  out.chunks.push_back({values, scales, 128 * n + 32 * r});
                }
              }
              return out;
            }};
  default:
    return {0, false, false, nullptr};
  }
}

// ------------------------------------------------------------------ kernels

// Activation bytes of one token tile: the tile's activations stay in L2
// while every row of the call is multiplied with them (prefill), instead of
// all tokens' activations streaming through the caches once per row.
constexpr int64_t tileBytes = 512 * 1024;

// The loops of a kernel: token tiles, rows, then tokens in blocks of
// `tokenBlock` (decoded weights shared) and the rest one by one; returns.
void emitTiledLoops(KernelBuilder &k, Value *rows, Value *tokens, int tokenBlock, int64_t tileTokens,
                    const std::function<void(Value *row, Value *t, int count)> &dotTokens) {
  IRBuilder<> &b = k.b();
  tileTokens = std::max<int64_t>(tokenBlock, tileTokens / tokenBlock * tokenBlock);
  Value *zero = k.i64c(0);
  k.loop(zero, tokens, tileTokens, {}, [&](Value *tileStart, const std::vector<Value *> &) {
    Value *tileEnd = b.CreateAdd(tileStart, k.i64c(tileTokens));
    tileEnd = b.CreateSelect(b.CreateICmpSLT(tileEnd, tokens), tileEnd, tokens);
    k.loop(zero, rows, 1, {}, [&](Value *row, const std::vector<Value *> &) {
      Value *span = b.CreateSub(tileEnd, tileStart);
      Value *blockedEnd = b.CreateAdd(
          tileStart, b.CreateMul(b.CreateSDiv(span, k.i64c(tokenBlock)), k.i64c(tokenBlock)));
      k.loop(tileStart, blockedEnd, tokenBlock, {}, [&](Value *t, const std::vector<Value *> &) {
        dotTokens(row, t, tokenBlock);
        return std::vector<Value *>{};
      });
      if (tokenBlock > 1)
        k.loop(blockedEnd, tileEnd, 1, {}, [&](Value *t, const std::vector<Value *> &) {
          dotTokens(row, t, 1);
          return std::vector<Value *>{};
        });
      return std::vector<Value *>{};
    });
    return std::vector<Value *>{};
  });
  b.CreateRetVoid();
}

// A kernel function `symbol` taking pointers ('p') and 64-bit integers ('i')
// as `signature` spells them, compiled for `target`'s features with vectors
// of `vectorBits`; the parameters `noAlias` (outputs) alias nothing.
Function *createFunction(Module &module, const std::string &symbol, const char *signature,
                         const CpuCodeTarget &target, int vectorBits,
                         std::initializer_list<unsigned> noAlias) {
  LLVMContext &context = module.getContext();
  std::vector<Type *> params;
  for (const char *c = signature; *c; ++c)
    params.push_back(*c == 'p' ? static_cast<Type *>(PointerType::get(context, 0))
                               : Type::getInt64Ty(context));
  FunctionType *type = FunctionType::get(Type::getVoidTy(context), params, false);
  Function *function = Function::Create(type, GlobalValue::ExternalLinkage, symbol, module);
  function->addFnAttr(Attribute::NoUnwind);
  function->addFnAttr("target-cpu", "x86-64");
  function->addFnAttr("tune-cpu", target.cpu);
  function->addFnAttr("target-features", featureString(codeFeatures(target)));
  // Without these, targets that prefer 256-bit vectors split the 512-bit ones.
  function->addFnAttr("min-legal-vector-width", std::to_string(vectorBits));
  function->addFnAttr("prefer-vector-width", std::to_string(vectorBits));
  for (unsigned param : noAlias)
    function->addParamAttr(param, Attribute::NoAlias);
  return function;
}

// The kernel's function with the ABI of runtime/cpu/GeneratedKernels.h:
// (w, rowBytes, rows, x, ldx, xsum, xq, xqScale, xqSum16, tokens, y, ldy).
Function *createKernelFunction(Module &module, const RowKernelRequest &request,
                               const CpuCodeTarget &target) {
  return createFunction(module, cpu::rowKernelSymbol(request.type, request.cols), "piipippppipi",
                        target, vectorBitsFor(target), {10});
}

void emitRowKernel(Module &module, const RowKernelRequest &request, const CpuCodeTarget &target) {
  const TypeCodegen codegen = typeCodegen(request.type);
  const gguf::GgmlTypeTraits &traits = gguf::ggmlTypeTraits(request.type);
  const int64_t blocks = request.cols / codegen.blockValues;
  // Small blocks (q8_0) are decoded several per loop iteration.
  int64_t unroll = 1;
  while (codegen.blockValues * unroll < 128 && blocks % (unroll * 2) == 0)
    unroll *= 2;
  const int vectorBits = vectorBitsFor(target);
  const int64_t runsPerRow = request.cols / 32;

  Function *function = createKernelFunction(module, request, target);
  Argument *args = function->arg_begin();
  Value *w = &args[0], *rowBytes = &args[1], *rows = &args[2], *x = &args[3], *ldx = &args[4],
        *xsum = &args[5], *tokens = &args[9], *y = &args[10], *ldy = &args[11];

  KernelBuilder k(module, function, hasFeature(target, "f16c"));
  IRBuilder<> &b = k.b();
  b.SetInsertPoint(k.block("entry"));
  Value *zero = k.i64c(0);
  const int tokenBlock = tokenBlockFor(vectorBits);

  // The dot products of one row with tokens [t, t + count). For one token
  // and a scale per chunk, the chunk's two halves are summed before the
  // scale is applied (3 vector operations per 32 weights instead of 4);
  // with several tokens the scaled weights are shared instead.
  auto dotTokens = [&](Value *row, Value *t, int count) {
    const bool sumFirst = count == 1 && !codegen.vectorScales;
    const unsigned accumulatorLanes = sumFirst ? kChunk / 2 : kChunk;
    Value *rowBase = b.CreateGEP(k.i8(), w, b.CreateMul(row, rowBytes));
    std::vector<Value *> init;
    for (int j = 0; j < count; ++j)
      init.push_back(ConstantAggregateZero::get(k.vec(k.f32(), accumulatorLanes)));
    if (codegen.hasMinimums)
      for (int j = 0; j < count; ++j)
        init.push_back(ConstantAggregateZero::get(k.vec(k.f32(), 8)));
    std::vector<Value *> sums = k.loop(zero, k.i64c(blocks), unroll, init,
        [&](Value *block, const std::vector<Value *> &carried) {
          std::vector<Value *> next = carried;
          for (int64_t u = 0; u < unroll; ++u) {
            Value *index = b.CreateAdd(block, k.i64c(u));
            Value *blockBase = b.CreateGEP(k.i8(), rowBase, b.CreateMul(index, k.i64c(traits.blockBytes)));
            if (u == 0)
              k.prefetchWeights(target, blockBase, traits.blockBytes * unroll);
            DecodedBlock decoded = codegen.decode(k, blockBase);
            Value *xBlock = b.CreateMul(index, k.i64c(codegen.blockValues));
            for (const Chunk &chunk : decoded.chunks) {
              if (sumFirst) {
                SmallVector<int, 16> lowHalf, highHalf;
                for (int lane = 0; lane < kChunk / 2; ++lane) {
                  lowHalf.push_back(lane);
                  highHalf.push_back(lane + kChunk / 2);
                }
                Value *at = b.CreateAdd(b.CreateMul(t, ldx), b.CreateAdd(xBlock, k.i64c(chunk.xOffset)));
                Value *xLow = k.loadFloats(x, at, kChunk / 2);
                Value *xHigh = k.loadFloats(x, b.CreateAdd(at, k.i64c(kChunk / 2)), kChunk / 2);
                Value *qLow = b.CreateShuffleVector(chunk.values, chunk.values, lowHalf);
                Value *qHigh = b.CreateShuffleVector(chunk.values, chunk.values, highHalf);
                Value *sum = k.fmuladd(qLow, xLow, b.CreateFMul(qHigh, xHigh));
                next[0] = k.fmuladd(sum, k.splat(chunk.scale, kChunk / 2), next[0]);
                continue;
              }
              Value *scale = chunk.scale->getType()->isVectorTy() ? chunk.scale : k.splat(chunk.scale);
              Value *weights = b.CreateFMul(chunk.values, scale);
              for (int j = 0; j < count; ++j) {
                Value *token = b.CreateAdd(t, k.i64c(j));
                Value *at = b.CreateAdd(b.CreateMul(token, ldx), b.CreateAdd(xBlock, k.i64c(chunk.xOffset)));
                next[j] = k.fmuladd(weights, k.loadFloats(x, at, kChunk), next[j]);
              }
            }
            if (decoded.minimums)
              for (int j = 0; j < count; ++j) {
                Value *token = b.CreateAdd(t, k.i64c(j));
                Value *at = b.CreateAdd(b.CreateMul(token, k.i64c(runsPerRow)), b.CreateMul(index, k.i64c(8)));
                next[count + j] = k.fmuladd(decoded.minimums, k.loadFloats(xsum, at, 8), next[count + j]);
              }
          }
          return next;
        });
    for (int j = 0; j < count; ++j) {
      Value *dot = k.reduceAdd(sums[j]);
      if (codegen.hasMinimums)
        dot = b.CreateFSub(dot, k.reduceAdd(sums[count + j]));
      Value *token = b.CreateAdd(t, k.i64c(j));
      Value *out = b.CreateGEP(k.f32(), y, b.CreateAdd(b.CreateMul(token, ldy), row));
      b.CreateStore(dot, out);
    }
  };

  k.prefetchStart(target, w, b.CreateMul(rows, rowBytes));
  emitTiledLoops(k, rows, tokens, tokenBlock, tileBytes / (4 * request.cols), dotTokens);
}


// ------------------------------------------------------------------ int8 kernels

// The integer dot products a target has for the int8 kernels: AVX-512 VNNI
// (vpdpwssd, vpdpbusd), AVX-512 BW or AVX2 (vpmaddubsw then vpmaddwd, in
// 512- or 256-bit vectors); all with F16C for the block scales.
enum class IntegerDots { None, Avx2, Avx512, Avx512Vnni };
IntegerDots integerDotsOf(const CpuCodeTarget &target) {
  if (!hasFeature(target, "f16c"))
    return IntegerDots::None;
  if (hasFeature(target, "avx512bw"))
    return hasFeature(target, "avx512vnni") ? IntegerDots::Avx512Vnni : IntegerDots::Avx512;
  return hasFeature(target, "avx2") ? IntegerDots::Avx2 : IntegerDots::None;
}

// Whether `request` gets the integer kernel on `target`: integer dot
// products, and rows of whole 256-value runs (the activations' quantization
// blocks).
bool usesInt8(const RowKernelRequest &request, const CpuCodeTarget &target) {
  return target.int8Activations && integerDotsOf(target) != IntegerDots::None &&
         request.cols % 256 == 0 &&
         (request.type == GgmlType::Q4_K || request.type == GgmlType::Q5_K ||
          request.type == GgmlType::Q6_K || request.type == GgmlType::Q8_0);
}

// Whether the integer kernel of `request` reads its activations in nibble
// order ("q8-nibble-order", GeneratedKernels.h): q4_K and q5_K on 512-bit
// vectors, where a 64-byte load of qs then gives two pieces (its low
// nibbles: groups 4c and 4c + 2; its high ones: 4c + 1 and 4c + 3) in 4
// instructions instead of 6. On 256-bit halves both take the same.
bool readsNibbleOrder(const RowKernelRequest &request, const CpuCodeTarget &target) {
  const IntegerDots dots = integerDotsOf(target);
  return usesInt8(request, target) &&
         (dots == IntegerDots::Avx512 || dots == IntegerDots::Avx512Vnni) &&
         (request.type == GgmlType::Q4_K || request.type == GgmlType::Q5_K);
}

// One 256-value run of weights prepared for integer dot products with the
// int8 activations: 64-byte pieces of unsigned weight values, each with the
// activation bytes it multiplies, and how the products are scaled.
struct Int8Piece {
  Value *weights;     // <64 x i8>, unsigned
  int64_t xqOffset;   // first activation byte within the run
  Value *scales16;    // <32 x i16> integer scale per pair of products (k-quants), or null
  Value *laneScales;  // <16 x float> per i32 lane (q8_0), or null
  int corrBlock = -1; // q8_0: the piece's first 32-block in the run
  // With the next piece: both multiplied by vpdpbusd, the sums of 4 packed
  // to words, then times `scales16` (the pair's words in packed order).
  bool packedWithNext = false;
};
struct Int8Run {
  std::vector<Int8Piece> pieces;
  Value *scale = nullptr;        // q6_K: d, the float factor of the integer sum
  Value *minimumPairs = nullptr; // q4_K/q5_K: <16 x i16> m[i / 2], times the x sums over 16
  Value *scalePair = nullptr;    // q4_K/q5_K: <2 x float> {d, dmin}
  Value *subScales32 = nullptr;  // q6_K: <16 x i16> 32 * the sub-block scales (for the -32 offset)
  Value *blockScales = nullptr; // q8_0: <8 x float> d of the run's 8 blocks
};

Value *concat(IRBuilder<> &b, Value *low, Value *high) {
  return b.CreateShuffleVector(low, high, laneRange(0, 64));
}

// <32 x i16> whose lanes [8i, 8i + 8) hold `scales`[indices[i]] (a pair of
// products per lane: 8 lanes cover 16 values).
Value *pairScales(IRBuilder<> &b, Value *scales, std::initializer_list<int> indices) {
  SmallVector<int, 32> mask;
  const int lanesPerIndex = 32 / static_cast<int>(indices.size());
  for (int index : indices)
    for (int lane = 0; lane < lanesPerIndex; ++lane)
      mask.push_back(index);
  return b.CreateShuffleVector(scales, scales, mask);
}

// Words picked from `scales`, <N x i16> or <N x i8> (zero-extended): word i
// is scales[lanes[i]]. From bytes it is one byte permute (vpermb, AVX-512
// VBMI); a word permute (vpermw) is two micro-ops on Sapphire Rapids (one on
// each vector port), and the bytes must be widened to words first.
Value *pickScaleWords(KernelBuilder &k, Value *scales, ArrayRef<int> lanes) {
  IRBuilder<> &b = k.b();
  auto *type = cast<FixedVectorType>(scales->getType());
  if (type->getElementType()->isIntegerTy(16))
    return b.CreateShuffleVector(scales, scales, lanes);
  // One byte permute (vpermb) of the scales followed by zero bytes, each
  // word's high byte picked from the zeros. Its indices opaque, else
  // instruction selection merges it with the zeros into a two-source
  // shuffle (vpermt2b, which also overwrites its index register).
  const int count = static_cast<int>(type->getNumElements());
  assert(lanes.size() == 32 && count < 64 && "64 bytes of words, a zero byte to pick");
  SmallVector<int, 64> widen;
  for (int lane = 0; lane < 64; ++lane)
    widen.push_back(std::min(lane, count)); // lanes from `count` on: zeros
  Value *source = b.CreateShuffleVector(scales, ConstantAggregateZero::get(type), widen);
  SmallVector<Constant *, 64> indices;
  for (int lane : lanes) {
    indices.push_back(b.getInt8(static_cast<uint8_t>(lane)));
    indices.push_back(b.getInt8(static_cast<uint8_t>(count)));
  }
  Value *bytes = b.CreateIntrinsic(Intrinsic::x86_avx512_permvar_qi_512, {},
                                   {source, k.opaqueConstant(ConstantVector::get(indices))});
  return b.CreateBitCast(bytes, FixedVectorType::get(b.getInt16Ty(), 32));
}

// Two pieces (weights, first activation byte) as a packed pair
// (Int8Piece::packedWithNext). vpackssdw takes 4 dwords of each source per
// 128-bit lane, so word w of the packed sums holds dword 4 (w / 8) + w % 4
// of the first piece (w % 8 < 4) or of the second; `scaleOf(piece, dword)`
// is the scale word (a lane of `scaleWords`) of a piece's dword.
void pushPackedPair(KernelBuilder &k, std::vector<Int8Piece> &pieces,
                    std::pair<Value *, int64_t> first, std::pair<Value *, int64_t> second,
                    Value *scaleWords, const std::function<int(int, int)> &scaleOf) {
  SmallVector<int, 32> lanes;
  for (int w = 0; w < 32; ++w)
    lanes.push_back(scaleOf(w % 8 < 4 ? 0 : 1, 4 * (w / 8) + w % 4));
  Int8Piece head{first.first, first.second, pickScaleWords(k, scaleWords, lanes), nullptr};
  head.packedWithNext = true;
  pieces.push_back(head);
  pieces.push_back({second.first, second.second, nullptr, nullptr});
}

// Each byte of `bytes` (<64 x i8>) through the GF(2) bit matrix of its
// qword (GFNI's vgf2p8affineqb: result bit i is the parity of `matrices`'
// byte 7 - i and the source byte): any bit moves, per qword, in one
// instruction instead of a shift and a mask.
Value *affineBytes(KernelBuilder &k, Value *bytes, const std::array<uint64_t, 8> &matrices) {
  IRBuilder<> &b = k.b();
  SmallVector<Constant *, 64> lanes;
  for (uint64_t matrix : matrices)
    for (int byte = 0; byte < 8; ++byte)
      lanes.push_back(b.getInt8(static_cast<uint8_t>(matrix >> (8 * byte))));
  return b.CreateIntrinsic(Intrinsic::x86_vgf2p8affineqb_512, {},
                           {bytes, ConstantVector::get(lanes), b.getInt8(0)});
}

// The GF(2) matrix that moves bit `from` of a byte to bit `to` and clears
// the others.
uint64_t bitMoveMatrix(int from, int to) { return (uint64_t{1} << from) << (8 * (7 - to)); }

// A 64-byte piece of q4_K/q5_K weights for activations in nibble order:
// the first activation byte it multiplies and the scale lanes of its two
// groups (its dwords 0-7 and 8-15).
struct NibblePiece {
  Value *weights; // <64 x i8>, unsigned
  int64_t xqOffset;
  int firstScale, secondScale;
};

// A q4_K/q5_K block's pieces for activations in nibble order
// (readsNibbleOrder): per 128 values one 64-byte load of qs, its low nibbles
// (groups 4c and 4c + 2, activation bytes `xqBase` + 128c..) and its high
// ones (4c + 1 and 4c + 3, bytes `xqBase` + 128c + 64..), with q5_K's fifth
// bits from qh; group g's scale is lane `scaleLane` + g. With `gfni` the
// high nibbles and the fifth bits move into place by one affine byte
// transform each. In the order c = 0 low, high, c = 1 low, high.
std::array<NibblePiece, 4> nibbleOrderWeights(KernelBuilder &k, GgmlType type, Value *block,
                                              int64_t xqBase, int scaleLane, bool gfni) {
  IRBuilder<> &b = k.b();
  const bool five = type == GgmlType::Q5_K;
  Value *nibble = k.splatBytes(0xF, 64);
  Value *qh = five ? loadBytesTwice(k, block, 16) : nullptr;
  // q5_K: bit `first` of qh's bytes in the first half, `second` in the
  // second, moved to bit 4.
  auto fifthBits = [&](int first, int second) {
    if (gfni) {
      const uint64_t low = bitMoveMatrix(first, 4), high = bitMoveMatrix(second, 4);
      return affineBytes(k, qh, {low, low, low, low, high, high, high, high});
    }
    Value *bits = shiftWordHalves(k, qh, false, first, second);
    return b.CreateShl(b.CreateAnd(bits, k.splatBytes(1, 64)), k.splatBytes(4, 64));
  };
  auto highNibbles = [&](Value *q) {
    if (gfni) {
      const uint64_t down4 =
          bitMoveMatrix(4, 0) | bitMoveMatrix(5, 1) | bitMoveMatrix(6, 2) | bitMoveMatrix(7, 3);
      return affineBytes(k, q, {down4, down4, down4, down4, down4, down4, down4, down4});
    }
    return b.CreateAnd(shiftWordHalves(k, q, false, 4, 4), nibble);
  };
  std::array<NibblePiece, 4> pieces;
  for (int c = 0; c < 2; ++c) {
    Value *q = k.loadBytes(block, (five ? 48 : 16) + 64 * c, 64);
    Value *low = b.CreateAnd(q, nibble);
    Value *high = highNibbles(q);
    if (five) {
      low = b.CreateOr(low, fifthBits(4 * c, 4 * c + 2));
      high = b.CreateOr(high, fifthBits(4 * c + 1, 4 * c + 3));
    }
    const int s = scaleLane + 4 * c;
    pieces[2 * c] = {low, xqBase + 128 * c, s, s + 2};
    pieces[2 * c + 1] = {high, xqBase + 128 * c + 64, s + 1, s + 3};
  }
  return pieces;
}

// Two nibble-order pieces for the integer dot products, their scale words
// picked from `scales` (pickScaleWords): with `packedPairs` (VNNI) as a
// packed pair (Int8Piece::packedWithNext), else apart.
void pushNibblePieces(KernelBuilder &k, const NibblePiece &first, const NibblePiece &second,
                      Value *scales, bool packedPairs, std::vector<Int8Piece> &pieces) {
  if (packedPairs) {
    pushPackedPair(k, pieces, {first.weights, first.xqOffset}, {second.weights, second.xqOffset},
                   scales, [&](int piece, int dword) {
                     const NibblePiece &of = piece == 0 ? first : second;
                     return dword < 8 ? of.firstScale : of.secondScale;
                   });
    return;
  }
  for (const NibblePiece *piece : {&first, &second})
    pieces.push_back({piece->weights, piece->xqOffset,
                      pairScales(k.b(), scales, {piece->firstScale, piece->secondScale}), nullptr});
}

// Two q4_K/q5_K super-blocks (runs) decoded together for activations in
// nibble order: both blocks' scale and minimum bytes unpacked once (block
// b's sc at lanes 16b.., its m at 16b + 8..), each piece's scale words
// picked from them (pickScaleWords; from the bytes with `byteScales`, else
// from the bytes widened to words), and both blocks' minimum pairs in one
// vector so one word multiply-add takes both blocks' minimum sums. With
// `packedPairs` each packed pair joins a piece of the first run with the
// same piece of the second (`interleaved`): the integer sums of one
// accumulator then hold run 0 in dword lanes 4i and 4i + 1 and run 1 in 4i
// + 2 and 4i + 3, scaled by one multiply-add without folding two
// accumulators into one. Else `pieces[r]` are run r's.
struct NibbleOrderPair {
  std::array<std::vector<Int8Piece>, 2> pieces; // activation offsets from the first run's
  bool interleaved = false;                     // all in pieces[0]
  Value *minimumPairs = nullptr; // <32 x i16>: block b's m[i / 2] at lanes 16b + i
  Value *scaleFactors = nullptr; // <4 x float>: {d, dmin} of each block
};
NibbleOrderPair decodeNibbleOrderPair(KernelBuilder &k, GgmlType type, Value *first, Value *second,
                                      bool gfni, bool packedPairs, bool byteScales) {
  IRBuilder<> &b = k.b();
  NibbleOrderPair pair;
  Value *bytes = kScaleBytes(k, {first, second});
  Value *scales = byteScales ? bytes : b.CreateZExt(bytes, k.vec(b.getInt16Ty(), 32));
  SmallVector<int, 32> minimumLanes;
  for (int block = 0; block < 2; ++block)
    for (int lane = 0; lane < 16; ++lane)
      minimumLanes.push_back(16 * block + 8 + lane / 2);
  pair.minimumPairs = pickScaleWords(k, scales, minimumLanes);
  VectorType *twoHalves = k.vec(b.getHalfTy(), 2);
  Value *halves = b.CreateShuffleVector(b.CreateAlignedLoad(twoHalves, first, Align(1)),
                                        b.CreateAlignedLoad(twoHalves, second, Align(1)),
                                        ArrayRef<int>{0, 1, 2, 3});
  pair.scaleFactors = b.CreateFPExt(halves, k.vec(k.f32(), 4));
  const std::array<NibblePiece, 4> runs[2] = {nibbleOrderWeights(k, type, first, 0, 0, gfni),
                                              nibbleOrderWeights(k, type, second, 256, 16, gfni)};
  pair.interleaved = packedPairs;
  for (int i = 0; i < 4; i += packedPairs ? 1 : 2) {
    if (packedPairs)
      pushNibblePieces(k, runs[0][i], runs[1][i], scales, true, pair.pieces[0]);
    else
      for (int r = 0; r < 2; ++r)
        pushNibblePieces(k, runs[r][i], runs[r][i + 1], scales, false, pair.pieces[r]);
  }
  return pair;
}

// The activations the row kernel of `request` reads (GeneratedKernels.h):
// "q8-nibble-order", "q8" or "f32".
std::string rowKernelInput(const RowKernelRequest &request, const CpuCodeTarget &target) {
  return readsNibbleOrder(request, target) ? cpu::kNibbleOrderInput
         : usesInt8(request, target)       ? "q8"
                                           : "f32";
}

// `unsignedQ8`: q8_0's weights with the sign bit flipped, for vpdpbusd (VNNI);
// else as stored.
// `kBits`: q4_K/q5_K's sc and m bytes, unpacked already (kScaleBits).
// `nibbleOrder`: q4_K/q5_K's activations are in nibble order (readsNibbleOrder);
// `gfni`, `packedPairs`: how its pieces are made (nibbleOrderWeights,
// pushNibblePieces; q6_K's are packed pairs too).
Int8Run decodeInt8Run(KernelBuilder &k, GgmlType type, Value *block, bool unsignedQ8,
                      bool nibbleOrder, bool gfni, bool packedPairs,
                      const std::pair<Value *, Value *> *kBits = nullptr) {
  IRBuilder<> &b = k.b();
  Int8Run run;
  if (type == GgmlType::Q4_K || type == GgmlType::Q5_K) {
    std::pair<Value *, Value *> bits;
    if (kBits) {
      bits = *kBits;
    } else {
      KScales scales = kScales(k, block);
      bits = {scales.scaleBits, scales.minBits};
    }
    Value *m16 = b.CreateZExt(bits.second, k.vec(b.getInt16Ty(), 8));
    run.minimumPairs = b.CreateShuffleVector(
        m16, m16, ArrayRef<int>{0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7});
    Value *halves = b.CreateAlignedLoad(k.vec(b.getHalfTy(), 2), block, Align(1));
    run.scalePair = b.CreateFPExt(halves, k.vec(k.f32(), 2));
    Value *sc16 = b.CreateZExt(bits.first, k.vec(b.getInt16Ty(), 8));
    if (nibbleOrder) { // each 64-byte load's two pieces together
      const std::array<NibblePiece, 4> pieces = nibbleOrderWeights(k, type, block, 0, 0, gfni);
      for (int c = 0; c < 2; ++c)
        pushNibblePieces(k, pieces[2 * c], pieces[2 * c + 1], sc16, packedPairs, run.pieces);
      return run;
    }
    for (int j = 0; j < 4; ++j)
      run.pieces.push_back({kQuantPiece(k, type, block, j), 64 * j,
                            pairScales(b, sc16, {2 * j, 2 * j + 1}), nullptr});
    return run;
  }
  if (type == GgmlType::Q6_K) {
    run.scale = k.loadHalf(block, 208);
    Value *sc = b.CreateSExt(k.loadBytes(block, 192, 16), k.vec(b.getInt16Ty(), 16));
    run.subScales32 = b.CreateShl(sc, 5);
    for (int n = 0; n < 2; ++n) {
      std::array<Value *, 2> pieces = q6Pieces(k, block, n);
      const int s0 = 8 * n;
      if (packedPairs) { // 6-bit weights: sums of 4 at most 4 * 63 * 127, words hold them
        pushPackedPair(k, run.pieces, {pieces[0], 128 * n}, {pieces[1], 128 * n + 64}, sc,
                       [&](int piece, int dword) { return s0 + 4 * piece + dword / 4; });
        continue;
      }
      run.pieces.push_back(
          {pieces[0], 128 * n, pairScales(b, sc, {s0, s0 + 1, s0 + 2, s0 + 3}), nullptr});
      run.pieces.push_back(
          {pieces[1], 128 * n + 64, pairScales(b, sc, {s0 + 4, s0 + 5, s0 + 6, s0 + 7}), nullptr});
    }
    return run;
  }
  // q8_0: 8 blocks of {d: f16, qs: int8[32]}; for VNNI the signed weights are
  // made unsigned by flipping the sign bit (w + 128), the 128 * sum(x) this
  // adds taken off.
  Value *halves = UndefValue::get(k.vec(b.getInt16Ty(), 8));
  if (unsignedQ8) {
    // AVX-512 BW: the 8 scales (words 17i of the run) picked out of its
    // first 256 bytes by one two-source word permute (vpermt2w), instead of
    // 8 loads and 7 inserts into one register, all on the shuffle port.
    // The block pointer passed through an empty inline asm: else instruction
    // selection, seeing these loads overlap the quants' ones, builds those
    // out of these, a byte at a time.
    Value *opaque = KernelBuilder::opaque(b, block);
    VectorType *words64 = k.vec(b.getInt16Ty(), 64);
    Value *low = b.CreateAlignedLoad(words64, opaque, Align(1));
    Value *high = b.CreateAlignedLoad(words64, b.CreateGEP(k.i8(), opaque, k.i64c(128)), Align(1));
    SmallVector<int, 8> picks;
    for (int blockIndex = 0; blockIndex < 8; ++blockIndex)
      picks.push_back(17 * blockIndex); // word 64 + w of `high` is word 64 + w of the run
    halves = b.CreateShuffleVector(low, high, picks);
  } else {
    for (int blockIndex = 0; blockIndex < 8; ++blockIndex) {
      Value *bits = b.CreateAlignedLoad(
          b.getInt16Ty(), b.CreateGEP(k.i8(), block, k.i64c(34 * blockIndex)), Align(1));
      halves = b.CreateInsertElement(halves, bits, static_cast<uint64_t>(blockIndex));
    }
  }
  run.blockScales = b.CreateFPExt(b.CreateBitCast(halves, k.vec(b.getHalfTy(), 8)), k.vec(k.f32(), 8));
  for (int p = 0; p < 4; ++p) {
    Value *a = k.loadBytes(block, 34 * (2 * p) + 2, kChunk), *c = k.loadBytes(block, 34 * (2 * p + 1) + 2, kChunk);
    Value *weights = concat(b, a, c);
    if (unsignedQ8)
      weights = b.CreateXor(weights, k.splatBytes(0x80, 64));
    SmallVector<int, 16> mask;
    for (int lane = 0; lane < 16; ++lane)
      mask.push_back(lane < 8 ? 2 * p : 2 * p + 1);
    Value *laneScales = b.CreateShuffleVector(run.blockScales, run.blockScales, mask);
    Int8Piece piece{weights, 64 * p, nullptr, laneScales};
    piece.corrBlock = 2 * p;
    run.pieces.push_back(piece);
  }
  return run;
}

void emitInt8RowKernel(Module &module, const RowKernelRequest &request, const CpuCodeTarget &target) {
  const gguf::GgmlTypeTraits &traits = gguf::ggmlTypeTraits(request.type);
  const int64_t runs = request.cols / 256;
  const uint64_t runBytes = static_cast<uint64_t>(traits.blockBytes) * static_cast<uint64_t>(256 / traits.blockSize);
  Function *function = createKernelFunction(module, request, target);
  Argument *args = function->arg_begin();
  Value *w = &args[0], *rowBytes = &args[1], *rows = &args[2], *xq = &args[6],
        *xqScale = &args[7], *xqSum16 = &args[8], *tokens = &args[9], *y = &args[10], *ldy = &args[11];
  KernelBuilder k(module, function, hasFeature(target, "f16c"));
  IRBuilder<> &b = k.b();
  b.SetInsertPoint(k.block("entry"));
  Value *zero = k.i64c(0);
  const int tokenBlock = tokenBlockFor(vectorBitsFor(target));
  const IntegerDots dots = integerDotsOf(target);
  VectorType *i32x16 = k.vec(b.getInt32Ty(), 16), *f32x16 = k.vec(k.f32(), 16);
  VectorType *i16x16 = k.vec(b.getInt16Ty(), 16);
  const bool hasMinimums = request.type == GgmlType::Q4_K || request.type == GgmlType::Q5_K;
  const bool gfni = hasFeature(target, "gfni");
  // VNNI: the k-quants' pieces in packed pairs (Int8Piece::packedWithNext):
  // 3 multiply instructions per 128 values instead of 4.
  const bool packedPairs = dots == IntegerDots::Avx512Vnni;
  // Packed pairs' scale words picked from the scale bytes by vpermb.
  const bool byteScales = packedPairs && hasFeature(target, "avx512vbmi");

  // acc (<16 x i32>) plus the products of 64 unsigned weights and 64 int8
  // activations, added in pairs (at most 2 * 63 * 127: 16 bits hold them)
  // and the pairs times their scale words (<32 x i16>), added in pairs.
  auto addScaledDots = [&](Value *acc, Value *weights, Value *xv, Value *scales16) -> Value * {
    if (dots != IntegerDots::Avx2) {
      Value *pairs = b.CreateIntrinsic(Intrinsic::x86_avx512_pmaddubs_w_512, {}, {weights, xv});
      if (dots == IntegerDots::Avx512Vnni)
        return b.CreateIntrinsic(
            Intrinsic::x86_avx512_vpdpwssd_512, {},
            {acc, b.CreateBitCast(pairs, i32x16), b.CreateBitCast(scales16, i32x16)});
      return b.CreateAdd(
          acc, b.CreateIntrinsic(Intrinsic::x86_avx512_pmaddw_d_512, {}, {pairs, scales16}));
    }
    // AVX2: the same on the 256-bit halves.
    Value *products[2];
    for (int half = 0; half < 2; ++half) {
      Value *pairs =
          b.CreateIntrinsic(Intrinsic::x86_avx2_pmadd_ub_sw, {},
                            {b.CreateShuffleVector(weights, weights, laneRange(32 * half, 32)),
                             b.CreateShuffleVector(xv, xv, laneRange(32 * half, 32))});
      products[half] = b.CreateIntrinsic(
          Intrinsic::x86_avx2_pmadd_wd, {},
          {pairs, b.CreateShuffleVector(scales16, scales16, laneRange(16 * half, 16))});
    }
    return b.CreateAdd(acc, b.CreateShuffleVector(products[0], products[1], laneRange(0, 16)));
  };
  // acc plus the scaled products of a run's k-quant pieces with the
  // activations at `xqRun` + `offset`: packed pairs by vpdpbusd (the sums of 4
  // at most 4 * 63 * 127 = 32004, so words hold them), the rest by
  // addScaledDots.
  auto addPieces = [&](Value *acc, const std::vector<Int8Piece> &pieces, Value *xqRun,
                       int64_t offset) {
    auto activations = [&](const Int8Piece &piece) {
      return b.CreateAlignedLoad(
          k.vec(k.i8(), 64), b.CreateGEP(k.i8(), xqRun, k.i64c(offset + piece.xqOffset)), Align(1));
    };
    for (size_t i = 0; i < pieces.size(); ++i) {
      if (!pieces[i].packedWithNext) {
        acc = addScaledDots(acc, pieces[i].weights, activations(pieces[i]), pieces[i].scales16);
        continue;
      }
      Value *sums[2];
      for (int p = 0; p < 2; ++p)
        sums[p] = b.CreateIntrinsic(Intrinsic::x86_avx512_vpdpbusd_512, {},
                                    {ConstantAggregateZero::get(i32x16),
                                     b.CreateBitCast(pieces[i + p].weights, i32x16),
                                     b.CreateBitCast(activations(pieces[i + p]), i32x16)});
      Value *words = b.CreateIntrinsic(Intrinsic::x86_avx512_packssdw_512, {}, {sums[0], sums[1]});
      acc = b.CreateIntrinsic(
          Intrinsic::x86_avx512_vpdpwssd_512, {},
          {acc, b.CreateBitCast(words, i32x16), b.CreateBitCast(pieces[i].scales16, i32x16)});
      ++i;
    }
    return acc;
  };

  // The dot products of 64 signed weights and 64 int8 activations per 4
  // values (<16 x i32>), without VNNI: |w| times x with w's sign (vpsignb),
  // added in pairs (at most 2 * 128 * 127: 16 bits hold them), then the pairs
  // of pairs; on 256-bit halves (no 512-bit vpsignb).
  auto signedDots = [&](Value *weights, Value *xv) -> Value * {
    Value *ones = ConstantVector::getSplat(ElementCount::getFixed(16), b.getInt16(1));
    Value *quads[2];
    for (int half = 0; half < 2; ++half) {
      Value *w = b.CreateShuffleVector(weights, weights, laneRange(32 * half, 32));
      Value *x = b.CreateShuffleVector(xv, xv, laneRange(32 * half, 32));
      Value *magnitudes = b.CreateBinaryIntrinsic(Intrinsic::abs, w, b.getFalse());
      Value *signedX = b.CreateIntrinsic(Intrinsic::x86_avx2_psign_b, {}, {x, w});
      Value *pairs = b.CreateIntrinsic(Intrinsic::x86_avx2_pmadd_ub_sw, {}, {magnitudes, signedX});
      quads[half] = b.CreateIntrinsic(Intrinsic::x86_avx2_pmadd_wd, {}, {pairs, ones});
    }
    return b.CreateShuffleVector(quads[0], quads[1], laneRange(0, 16));
  };

  // Where `token`'s inputs of run `runIndex` start: its int8 activations,
  // their scale (a float per run) and their sums of 16 (words, 16 per run).
  struct RunInputs {
    Value *xq, *scale, *sums16;
  };
  auto runInputs = [&](Value *token, Value *runIndex) -> RunInputs {
    return {b.CreateGEP(k.i8(), xq,
                        b.CreateAdd(b.CreateMul(token, k.i64c(request.cols)),
                                    b.CreateMul(runIndex, k.i64c(256)))),
            b.CreateGEP(k.f32(), xqScale, b.CreateAdd(b.CreateMul(token, k.i64c(runs)), runIndex)),
            b.CreateGEP(b.getInt16Ty(), xqSum16,
                        b.CreateAdd(b.CreateMul(token, k.i64c(request.cols / 16)),
                                    b.CreateMul(runIndex, k.i64c(16))))};
  };

  auto dotTokens = [&](Value *row, Value *t, int count) {
    Value *rowBase = b.CreateGEP(k.i8(), w, b.CreateMul(row, rowBytes));
    std::vector<Value *> init;
    for (int j = 0; j < count; ++j)
      init.push_back(ConstantAggregateZero::get(f32x16));
    // One run's products added into `next` (per token).
    auto addRun =
        [&](Value *runIndex, const Int8Run &run, std::vector<Value *> &next) {
          for (int j = 0; j < count; ++j) {
            const RunInputs in = runInputs(b.CreateAdd(t, k.i64c(j)), runIndex);
            Value *xqRun = in.xq;
            Value *dx = b.CreateLoad(k.f32(), in.scale);
            // The sums of the int8 activations over each run of 16 (words).
            Value *sums16 = b.CreateAlignedLoad(i16x16, in.sums16, Align(2));
            // Its word pairs times `factors`, added: <8 x i32>.
            auto multiplyAddPairs = [&](Value *factors) {
              return b.CreateIntrinsic(Intrinsic::x86_avx2_pmadd_wd, {}, {sums16, factors});
            };
            if (run.blockScales && dots != IntegerDots::Avx512Vnni) {
              // q8_0 without VNNI: exact integer dots of its blocks per 4
              // values (signedDots), scaled per block.
              for (const Int8Piece &piece : run.pieces) {
                Value *xv = b.CreateAlignedLoad(k.vec(k.i8(), 64),
                                                b.CreateGEP(k.i8(), xqRun, k.i64c(piece.xqOffset)),
                                                Align(1));
                next[j] = k.fmuladd(b.CreateSIToFP(signedDots(piece.weights, xv), f32x16),
                                    b.CreateFMul(piece.laneScales, k.splat(dx, 16)), next[j]);
              }
              continue;
            }
            if (run.blockScales) {
              // q8_0 (VNNI): per piece, the integer dots of its two blocks
              // with the unsigned weights (w + 128), times the blocks'
              // scales d dx; the 128 * sum(x) per block that the flipped
              // sign bit adds is taken off once per run, in floats: its 8
              // blocks' -128 * sums over 32 (one word multiply-add) times
              // their d dx, in lanes 0-7. (Taking it off each piece's
              // integer sums cost a shuffle-port permute and a subtraction
              // per piece; the float difference of the two sums is good to
              // a few units in the last place of the run's terms.)
              // The run's terms go into a sum of its own, added to the
              // row's once: a chain of five multiply-adds on the row's sum
              // would bound the loop by their latency.
              Value *blockScales = b.CreateFMul(run.blockScales, k.splat(dx, 8));
              Value *zeros = ConstantAggregateZero::get(k.vec(k.f32(), 8));
              Value *offsets = multiplyAddPairs( // -128 * the sums over 32
                  ConstantVector::getSplat(ElementCount::getFixed(16), b.getInt16(-128)));
              Value *runSum =
                  b.CreateFMul(b.CreateShuffleVector(b.CreateSIToFP(offsets, k.vec(k.f32(), 8)),
                                                     zeros, laneRange(0, 16)),
                               b.CreateShuffleVector(blockScales, zeros, laneRange(0, 16)));
              for (const Int8Piece &piece : run.pieces) {
                Value *xv = b.CreateAlignedLoad(k.vec(k.i8(), 64), b.CreateGEP(k.i8(), xqRun, k.i64c(piece.xqOffset)), Align(1));
                Value *dot = b.CreateIntrinsic(Intrinsic::x86_avx512_vpdpbusd_512, {},
                                               {ConstantAggregateZero::get(i32x16), b.CreateBitCast(piece.weights, i32x16), b.CreateBitCast(xv, i32x16)});
                SmallVector<int, 16> mask;
                for (int lane = 0; lane < 16; ++lane)
                  mask.push_back(lane < 8 ? piece.corrBlock : piece.corrBlock + 1);
                runSum = k.fmuladd(b.CreateSIToFP(dot, f32x16),
                                   b.CreateShuffleVector(blockScales, blockScales, mask), runSum);
              }
              next[j] = b.CreateFAdd(next[j], runSum);
              continue;
            }
            Value *acc = addPieces(ConstantAggregateZero::get(i32x16), run.pieces, xqRun, 0);
            if (run.subScales32) {
              // q6_K stores w + 32: take off 32 * sc[i] * sum16(x)[i], lane by
              // lane (only the lanes' total counts, so no reduction here);
              // |32 sc| <= 4096 and |sum16| <= 2032 multiply as words.
              Value *offsets = multiplyAddPairs(run.subScales32);
              SmallVector<int, 16> widen;
              for (int lane = 0; lane < 16; ++lane)
                widen.push_back(lane < 8 ? lane : 8);
              acc = b.CreateSub(
                  acc, b.CreateShuffleVector(
                           offsets, ConstantAggregateZero::get(offsets->getType()), widen));
            }
            if (!hasMinimums) {
              next[j] = k.fmuladd(b.CreateSIToFP(acc, f32x16),
                                  k.splat(b.CreateFMul(run.scale, dx), 16), next[j]);
              continue;
            }
            // q4_K/q5_K: the integer sums of the minimums, m[g] times the
            // sums of the int8 activations of group g (one word multiply-add
            // of m with the sums of 16), go in lanes 8-15 beside the block's
            // sums folded to 8 lanes: one conversion and one multiply-add by
            // {d dx x 8, dmin dx x 8} (the lanes 8-15 are subtracted at the end).
            Value *minimumDots = multiplyAddPairs(run.minimumPairs);
            SmallVector<int, 16> pairLanes;
            for (int lane = 0; lane < 16; ++lane)
              pairLanes.push_back(lane / 8);
            Value *folded = b.CreateAdd(b.CreateShuffleVector(acc, acc, laneRange(0, 8)),
                                        b.CreateShuffleVector(acc, acc, laneRange(8, 8)));
            Value *sums = b.CreateShuffleVector(folded, minimumDots, laneRange(0, 16));
            Value *scales = b.CreateFMul(run.scalePair, k.splat(dx, 2));
            next[j] = k.fmuladd(b.CreateSIToFP(sums, f32x16),
                                b.CreateShuffleVector(scales, scales, pairLanes), next[j]);
          }
        };
    // Two nibble-order runs (decodeNibbleOrderPair) into `next`: per token
    // both runs' integer sums in one vector (interleaved pairs: one
    // accumulator; else each run's folded to 8 lanes), both runs' minimum
    // sums by one word multiply-add, each converted once and multiplied by
    // {d dx} and {dmin dx} of its run lane by lane, the minimums subtracted
    // here (so the row's result is the sum of all lanes).
    auto addRunPair = [&](Value *runIndex, const NibbleOrderPair &pair,
                          std::vector<Value *> &next) {
      for (int j = 0; j < count; ++j) {
        const RunInputs in = runInputs(b.CreateAdd(t, k.i64c(j)), runIndex);
        // Both runs' sums of 16.
        Value *sums16 = b.CreateAlignedLoad(k.vec(b.getInt16Ty(), 32), in.sums16, Align(2));
        Value *minimumDots =
            b.CreateIntrinsic(Intrinsic::x86_avx512_pmaddw_d_512, {}, {sums16, pair.minimumPairs});
        // The integer sums, run r's at the lanes of `scaleLanes` with factor
        // lane 2r.
        Value *sums;
        SmallVector<int, 16> scaleLanes, minimumLanes;
        for (int lane = 0; lane < 16; ++lane) {
          scaleLanes.push_back(pair.interleaved ? (lane % 4 < 2 ? 0 : 2) : (lane < 8 ? 0 : 2));
          minimumLanes.push_back(lane < 8 ? 1 : 3);
        }
        if (pair.interleaved) {
          sums = addPieces(ConstantAggregateZero::get(i32x16), pair.pieces[0], in.xq, 0);
        } else { // each run's accumulator folded to 8 lanes
          Value *accs[2];
          for (int r = 0; r < 2; ++r)
            accs[r] = addPieces(ConstantAggregateZero::get(i32x16), pair.pieces[r], in.xq, 0);
          SmallVector<int, 16> lowHalves, highHalves;
          for (int lane = 0; lane < 16; ++lane) {
            lowHalves.push_back(lane < 8 ? lane : lane + 8);
            highHalves.push_back(lane < 8 ? lane + 8 : lane + 16);
          }
          sums = b.CreateAdd(b.CreateShuffleVector(accs[0], accs[1], lowHalves),
                             b.CreateShuffleVector(accs[0], accs[1], highHalves));
        }
        Value *dx = b.CreateAlignedLoad(k.vec(k.f32(), 2), in.scale, Align(4)); // both runs
        Value *factors = b.CreateFMul(pair.scaleFactors,
                                      b.CreateShuffleVector(dx, dx, ArrayRef<int>{0, 0, 1, 1}));
        next[j] = k.fmuladd(b.CreateSIToFP(sums, f32x16),
                            b.CreateShuffleVector(factors, factors, scaleLanes), next[j]);
        next[j] = k.fmuladd(b.CreateFNeg(b.CreateSIToFP(minimumDots, f32x16)),
                            b.CreateShuffleVector(factors, factors, minimumLanes), next[j]);
      }
    };
    // q4_K/q5_K with an even run count: two runs per iteration, their scales
    // unpacked together (in nibble order, also their minimums and factors).
    const int64_t step = hasMinimums && runs % 2 == 0 ? 2 : 1;
    const bool unsignedQ8 = dots == IntegerDots::Avx512Vnni; // q8_0's weights for vpdpbusd
    const bool nibbleOrder = readsNibbleOrder(request, target);
    const bool pairs = nibbleOrder && step == 2;
    std::vector<Value *> sums = k.loop(
        zero, k.i64c(runs), step, init, [&](Value *runIndex, const std::vector<Value *> &carried) {
          std::vector<Value *> next = carried;
          Value *runBase = b.CreateGEP(
              k.i8(), rowBase, b.CreateMul(runIndex, k.i64c(static_cast<int64_t>(runBytes))));
          k.prefetchWeights(target, runBase, static_cast<int64_t>(runBytes) * step);
          if (step == 1) {
            addRun(
                runIndex,
                decodeInt8Run(k, request.type, runBase, unsignedQ8, nibbleOrder, gfni, packedPairs),
                next);
            return next;
          }
          Value *secondBase = b.CreateGEP(k.i8(), runBase, k.i64c(static_cast<int64_t>(runBytes)));
          if (pairs) {
            addRunPair(runIndex,
                       decodeNibbleOrderPair(k, request.type, runBase, secondBase, gfni,
                                             packedPairs, byteScales),
                       next);
            return next;
          }
          const std::vector<std::pair<Value *, Value *>> bits =
              kScaleBits(k, {runBase, secondBase});
          addRun(runIndex,
                 decodeInt8Run(k, request.type, runBase, unsignedQ8, nibbleOrder, gfni, packedPairs,
                               &bits[0]),
                 next);
          addRun(b.CreateAdd(runIndex, k.i64c(1)),
                 decodeInt8Run(k, request.type, secondBase, unsignedQ8, nibbleOrder, gfni,
                               packedPairs, &bits[1]),
                 next);
          return next;
        });
    for (int j = 0; j < count; ++j) {
      Value *dot = k.reduceAdd(sums[j]);
      if (hasMinimums && !pairs) // lanes 0-7 less lanes 8-15
        dot = b.CreateFSub(k.reduceAdd(b.CreateShuffleVector(sums[j], sums[j], laneRange(0, 8))),
                           k.reduceAdd(b.CreateShuffleVector(sums[j], sums[j], laneRange(8, 8))));
      Value *token = b.CreateAdd(t, k.i64c(j));
      b.CreateStore(dot, b.CreateGEP(k.f32(), y, b.CreateAdd(b.CreateMul(token, ldy), row)));
    }
  };

  k.prefetchStart(target, w, b.CreateMul(rows, rowBytes));
  emitTiledLoops(k, rows, tokens, tokenBlock, tileBytes / request.cols, dotTokens);
}

// ------------------------------------------------------------------ tile kernels

// A 16 x 16 matrix of dwords (one vector per row) transposed by swapping the
// off-diagonal blocks of each size 8, 4, 2, 1: two-source shuffles only.
std::array<Value *, 16> transpose16x16(IRBuilder<> &b, std::array<Value *, 16> rows) {
  for (int d = 8; d >= 1; d /= 2) {
    std::array<Value *, 16> next;
    for (int r = 0; r < 16; ++r) {
      if (r & d)
        continue;
      SmallVector<int, 16> upper, lower;
      for (int c = 0; c < 16; ++c) {
        upper.push_back((c & d) == 0 ? c : 16 + c - d);
        lower.push_back((c & d) == 0 ? c + d : 16 + c);
      }
      next[r] = b.CreateShuffleVector(rows[r], rows[r + d], upper);
      next[r + d] = b.CreateShuffleVector(rows[r], rows[r + d], lower);
    }
    rows = next;
  }
  return rows;
}

// 32 floats rounded to bf16 (to nearest, ties to even) by VCVTNE2PS2BF16,
// as 16 dwords of two bf16 each: 64 bytes of a tile row, in order.
Value *bf16Pairs(KernelBuilder &k, Value *values) {
  IRBuilder<> &b = k.b();
  SmallVector<int, 16> low, high;
  for (int lane = 0; lane < 16; ++lane) {
    low.push_back(lane);
    high.push_back(lane + 16);
  }
  // The second operand fills the low half.
  Value *packed = b.CreateIntrinsic(
      Intrinsic::x86_avx512bf16_cvtne2ps2bf16_512, {},
      {b.CreateShuffleVector(values, values, high), b.CreateShuffleVector(values, values, low)});
  return b.CreateBitCast(packed, k.vec(b.getInt32Ty(), 16));
}

// The tile kernel (ABI: cpu::TileKernel): for each panel of kTileRows weight
// rows, the rows decoded once to bf16 as AMX A tiles (tile (s, j): values
// [32s, 32s + 32) of rows 16j .. 16j + 15, 64 bytes a row, the order a row
// decodes in), then every kTileTokens-token block of the packed activations
// (B tiles) multiplied with it in f32 accumulator tiles, one tile product
// (TDPBF16PS) per accumulator and 32 values. With 64 rows x 16 tokens each
// B tile serves four products, so the tokens stream through the caches once
// per 64 rows. The accumulators hold rows x tokens; they pass through the
// scratch and are transposed in registers into y's token rows (only tokens
// that exist are written).
void emitTileKernel(Module &module, const RowKernelRequest &request, const CpuCodeTarget &target) {
  const TypeCodegen codegen = typeCodegen(request.type);
  const gguf::GgmlTypeTraits &traits = gguf::ggmlTypeTraits(request.type);
  const int64_t cols = request.cols, steps = cols / 32;
  const int64_t blocks = cols / codegen.blockValues;
  // Row tiles per panel and token tiles per block (cpu::kTileRows / 16,
  // cpu::kTileTokens / 16): their accumulators, one tile of B and one of A
  // fit the 8 tile registers.
  constexpr int rowTiles = cpu::kTileRows / 16, tokenTiles = cpu::kTileTokens / 16;
  static_assert(rowTiles * tokenTiles + tokenTiles + 1 <= 8, "more tiles than AMX has");
  const int64_t stepBytes = rowTiles * 1024, panelBytes = steps * stepBytes;

  // (w, rowBytes, rows, x, tokens, y, ldy, scratch): cpu::TileKernel.
  Function *function = createFunction(module, cpu::tileKernelSymbol(request.type, request.cols),
                                      "piipipip", target, 512, {5, 7});
  Argument *args = function->arg_begin();
  Value *w = &args[0], *rowBytes = &args[1], *rows = &args[2], *x = &args[3], *tokens = &args[4],
        *y = &args[5], *ldy = &args[6], *scratch = &args[7];

  KernelBuilder k(module, function, hasFeature(target, "f16c"));
  IRBuilder<> &b = k.b();
  b.SetInsertPoint(k.block("entry"));
  Value *zero = k.i64c(0);
  VectorType *i32x16 = k.vec(b.getInt32Ty(), 16), *tileVector = k.vec(b.getInt32Ty(), 256);
  Value *sixteen = b.getInt16(16), *tileBytesPerRow = b.getInt16(64), *tileStride = k.i64c(64);
  auto at = [&](Value *base, Value *offset) { return b.CreateGEP(k.i8(), base, offset); };
  // Tiles travel between loop iterations as <256 x i32> (what the x86
  // backend turns back into tile registers).
  auto toVector = [&](Value *tile) {
    return b.CreateIntrinsic(Intrinsic::x86_cast_tile_to_vector, {tileVector}, {tile});
  };
  auto toTile = [&](Value *vector) {
    return b.CreateIntrinsic(Intrinsic::x86_cast_vector_to_tile, {tileVector}, {vector});
  };
  auto loadTile = [&](Value *address) {
    return b.CreateIntrinsic(Intrinsic::x86_tileloadd64_internal, {},
                             {sixteen, tileBytesPerRow, address, tileStride});
  };

  k.loop(zero, rows, cpu::kTileRows, {}, [&](Value *panel, const std::vector<Value *> &) {
    // Decode: per 16 rows of the panel and block, the rows side by side,
    // every 32-value chunk stored as one row of its A tile (so each 1 KiB
    // tile is written front to back).
    k.loop(zero, k.i64c(rowTiles), 1, {}, [&](Value *half, const std::vector<Value *> &) {
      k.loop(zero, k.i64c(blocks), 1, {}, [&](Value *block, const std::vector<Value *> &) {
        k.loop(zero, k.i64c(16), 1, {}, [&](Value *row, const std::vector<Value *> &) {
          Value *rowBase =
              at(w, b.CreateMul(b.CreateAdd(panel, b.CreateAdd(b.CreateMul(half, k.i64c(16)), row)),
                                rowBytes));
          Value *tileRow =
              b.CreateAdd(b.CreateMul(half, k.i64c(1024)), b.CreateMul(row, k.i64c(64)));
          Value *blockBase = at(rowBase, b.CreateMul(block, k.i64c(traits.blockBytes)));
          // 16 rows are read side by side, each past the 4 KiB pages the
          // hardware streamers follow: fetch this row's block after next.
          if (target.prefetchBytes > 0)
            k.prefetch(blockBase, std::max<int64_t>(2 * traits.blockBytes, 256), traits.blockBytes);
          DecodedBlock decoded = codegen.decode(k, blockBase);
          Value *firstStep = b.CreateMul(block, k.i64c(codegen.blockValues / kChunk));
          for (const Chunk &chunk : decoded.chunks) {
            Value *scale =
                chunk.scale->getType()->isVectorTy() ? chunk.scale : k.splat(chunk.scale);
            // w = d * sc * q - dmin * m (the chunk's group), one FMA.
            Value *values =
                decoded.minimums
                    ? k.fmuladd(
                          chunk.values, scale,
                          k.splat(b.CreateFNeg(b.CreateExtractElement(
                              decoded.minimums, static_cast<uint64_t>(chunk.xOffset / kChunk)))))
                    : b.CreateFMul(chunk.values, scale);
            Value *step = b.CreateAdd(firstStep, k.i64c(chunk.xOffset / kChunk));
            Value *slot = b.CreateAdd(b.CreateMul(step, k.i64c(stepBytes)), tileRow);
            b.CreateAlignedStore(bf16Pairs(k, values), at(scratch, slot), Align(64));
          }
          return std::vector<Value *>{};
        });
        return std::vector<Value *>{};
      });
      return std::vector<Value *>{};
    });

    // Multiply: kTileRows rows x kTileTokens tokens per block of tokens;
    // accumulator (j, i) holds rows 16j.. and tokens first + 16i...
    Value *accumulators = at(scratch, k.i64c(panelBytes));
    k.loop(zero, tokens, cpu::kTileTokens, {}, [&](Value *first, const std::vector<Value *> &) {
      Value *zeroTile = toVector(
          b.CreateIntrinsic(Intrinsic::x86_tilezero_internal, {}, {sixteen, tileBytesPerRow}));
      Value *xBlock = at(x, b.CreateMul(first, k.i64c(cols * 2)));
      std::vector<Value *> sums =
          k.loop(zero, k.i64c(steps), 1, std::vector<Value *>(rowTiles * tokenTiles, zeroTile),
                 [&](Value *step, const std::vector<Value *> &carried) {
                   // B tiles of tokens first + 16i .. first + 16i + 15, then each A
                   // tile loaded just before its products (one A tile live).
                   Value *xStep = at(xBlock, b.CreateMul(step, k.i64c(1024)));
                   std::array<Value *, tokenTiles> activations;
                   for (int i = 0; i < tokenTiles; ++i)
                     activations[i] = loadTile(at(xStep, k.i64c(i * steps * 1024)));
                   Value *aTile = at(scratch, b.CreateMul(step, k.i64c(stepBytes)));
                   std::vector<Value *> next(carried.size());
                   for (int j = 0; j < rowTiles; ++j) {
                     Value *weights = loadTile(at(aTile, k.i64c(1024 * j)));
                     for (int i = 0; i < tokenTiles; ++i)
                       next[j * tokenTiles + i] = toVector(b.CreateIntrinsic(
                           Intrinsic::x86_tdpbf16ps_internal, {},
                           {sixteen, tileBytesPerRow, tileBytesPerRow,
                            toTile(carried[j * tokenTiles + i]), weights, activations[i]}));
                   }
                   return next;
                 });
      for (size_t t = 0; t < sums.size(); ++t)
        b.CreateIntrinsic(Intrinsic::x86_tilestored64_internal, {},
                          {sixteen, tileBytesPerRow, at(accumulators, k.i64c(1024 * int64_t(t))),
                           tileStride, toTile(sums[t])});
      // Transposed, vector t of accumulator (j, i) holds token first + 16i +
      // t's rows 16j ...
      for (int i = 0; i < tokenTiles; ++i) {
        std::array<std::array<Value *, 16>, rowTiles> byToken;
        for (int j = 0; j < rowTiles; ++j) {
          std::array<Value *, 16> byRow;
          for (int r = 0; r < 16; ++r)
            byRow[r] = b.CreateAlignedLoad(
                i32x16, at(accumulators, k.i64c(1024 * (j * tokenTiles + i) + 64 * r)), Align(64));
          byToken[j] = transpose16x16(b, byRow);
        }
        for (int t = 0; t < 16; ++t) {
          Value *token = b.CreateAdd(first, k.i64c(16 * i + t));
          BasicBlock *store = k.block("store"), *next = k.block("next");
          b.CreateCondBr(b.CreateICmpSLT(token, tokens), store, next);
          b.SetInsertPoint(store);
          Value *out = at(y, b.CreateMul(b.CreateAdd(b.CreateMul(token, ldy), panel), k.i64c(4)));
          for (int j = 0; j < rowTiles; ++j)
            b.CreateAlignedStore(byToken[j][t], at(out, k.i64c(64 * j)), Align(4));
          b.CreateBr(next);
          b.SetInsertPoint(next);
        }
      }
      return std::vector<Value *>{};
    });
    return std::vector<Value *>{};
  });
  b.CreateRetVoid();
}

StatusOr<std::unique_ptr<TargetMachine>> targetMachine(const CpuCodeTarget &target) {
  static const bool initialized = [] {
    LLVMInitializeX86TargetInfo();
    LLVMInitializeX86Target();
    LLVMInitializeX86TargetMC();
    LLVMInitializeX86AsmPrinter();
    return true;
  }();
  (void)initialized;
  std::string error;
  const Target *x86 = TargetRegistry::lookupTarget(kTriple, error);
  if (!x86)
    return Status::error("LLVM has no x86-64 target: " + error);
  llvm::TargetOptions options;
  std::unique_ptr<TargetMachine> machine(
      x86->createTargetMachine(kTriple, "x86-64", featureString(codeFeatures(target)), options,
                               Reloc::PIC_, std::nullopt, CodeGenOpt::Aggressive));
  if (!machine)
    return Status::error("LLVM cannot target the CPU '" + target.cpu + "'");
  return machine;
}

StatusOr<std::unique_ptr<Module>> buildModule(LLVMContext &context,
                                              const std::vector<RowKernelRequest> &requests,
                                              const CpuCodeTarget &target,
                                              TargetMachine &machine) {
  auto module = std::make_unique<Module>("kt_cpu_experts", context);
  module->setTargetTriple(kTriple);
  module->setDataLayout(machine.createDataLayout());
  for (const RowKernelRequest &request : requests) {
    std::string reason = unsupportedReason(request);
    if (!reason.empty())
      return Status::error(reason);
    if (module->getFunction(cpu::rowKernelSymbol(request.type, request.cols)))
      continue;
    if (usesInt8(request, target))
      emitInt8RowKernel(*module, request, target);
    else
      emitRowKernel(*module, request, target);
    // What the kernel reads, beside it in the object (rowKernelInputSymbol).
    const std::string input = rowKernelInput(request, target);
    new GlobalVariable(*module, ArrayType::get(Type::getInt8Ty(context), input.size() + 1), true,
                       GlobalValue::ExternalLinkage,
                       ConstantDataArray::getString(context, input, true),
                       cpu::rowKernelInputSymbol(request.type, request.cols));
    if (emitsTileKernels(target))
      emitTileKernel(*module, request, target);
  }
  std::string problems;
  raw_string_ostream stream(problems);
  if (verifyModule(*module, &stream))
    return Status::error("internal error: the generated CPU kernels do not verify: " + stream.str());
  return module;
}

void optimize(Module &module, TargetMachine &machine) {
  LoopAnalysisManager loops;
  FunctionAnalysisManager functions;
  CGSCCAnalysisManager cgscc;
  ModuleAnalysisManager modules;
  PassBuilder builder(&machine);
  builder.registerModuleAnalyses(modules);
  builder.registerCGSCCAnalyses(cgscc);
  builder.registerFunctionAnalyses(functions);
  builder.registerLoopAnalyses(loops);
  builder.crossRegisterProxies(loops, functions, cgscc, modules);
  builder.buildPerModuleDefaultPipeline(OptimizationLevel::O3).run(module, modules);
}

// Runs the system linker (binutils' ld, which g++ brings) to make a shared
// object of one relocatable object; the kernels call nothing, so no library
// is linked.
Status linkShared(const std::string &object, const std::string &shared) {
  std::vector<std::string> argv = {"ld", "-shared", "--hash-style=gnu", "-z", "noexecstack",
                                   "-o", shared, object};
  std::vector<char *> pointers;
  for (std::string &arg : argv)
    pointers.push_back(arg.data());
  pointers.push_back(nullptr);
  pid_t pid = 0;
  int spawned = posix_spawnp(&pid, "ld", nullptr, nullptr, pointers.data(), environ);
  if (spawned != 0)
    return Status::error("cannot run the linker 'ld' to build " + shared + ": " +
                         std::strerror(spawned) +
                         "; install binutils (Debian: apt-get install binutils)");
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return Status::error("the linker 'ld' failed to build " + shared + " (its message is above)");
  return Status::success();
}

} // namespace

StatusOr<CpuCodeTarget> namedCpuTarget(const std::string &cpu) {
  if (cpu != "x86-64" && !X86::parseArchX86(cpu, /*Only64Bit=*/true))
    return Status::error("'" + cpu + "' is not an x86-64 CPU LLVM knows");
  SmallVector<StringRef, 64> implied;
  X86::getFeaturesForCPU(cpu, implied);
  CpuCodeTarget target;
  target.cpu = cpu;
  for (StringRef feature : implied)
    target.features.push_back(feature.str());
  return target;
}

bool emitsTileKernels(const CpuCodeTarget &target) {
  return target.amxTiles && hasFeature(target, "amx-tile") && hasFeature(target, "amx-bf16") &&
         hasFeature(target, "avx512bw") && hasFeature(target, "avx512bf16");
}

int vectorBitsFor(const CpuCodeTarget &target) {
  if (hasFeature(target, "avx512f"))
    return 512;
  if (hasFeature(target, "avx2"))
    return 256;
  return 128;
}

std::string unsupportedReason(const RowKernelRequest &request) {
  const TypeCodegen codegen = typeCodegen(request.type);
  const std::string type(gguf::ggmlTypeName(request.type));
  if (!codegen.decode)
    return "no generated CPU kernel for weights of type " + type +
           " (types with kernels: q8_0, q4_K, q5_K, q6_K)";
  if (request.cols <= 0 || request.cols % codegen.blockValues != 0)
    return "rows of " + std::to_string(request.cols) + " " + type + " values are not whole " +
           std::to_string(codegen.blockValues) + "-value blocks";
  return {};
}

std::vector<RowKernelRequest> expertKernelRequests(const plan::Plan &plan) {
  std::vector<RowKernelRequest> requests;
  for (const plan::Op &op : plan.ops) {
    if (op.kind != "routed_experts" || (op.prefillDevice != "cpu" && op.decodeDevice != "cpu"))
      continue;
    for (const plan::Weight &weight : op.weights) {
      std::optional<GgmlType> type = gguf::parseGgmlType(weight.type);
      if (!type || weight.shape.empty())
        continue;
      // FP8 experts run as the q8_0 copy the executor makes at load.
      if (*type == GgmlType::F8_E4M3_B128)
        type = GgmlType::Q8_0;
      RowKernelRequest request{*type, weight.shape[0]};
      bool known = std::any_of(requests.begin(), requests.end(), [&](const RowKernelRequest &r) {
        return r.type == request.type && r.cols == request.cols;
      });
      if (!known && unsupportedReason(request).empty())
        requests.push_back(request);
    }
  }
  return requests;
}

namespace {

// The kernels' module with the machine it is built for (the module goes
// before its context).
struct KernelModule {
  std::unique_ptr<TargetMachine> machine;
  std::unique_ptr<LLVMContext> context;
  std::unique_ptr<Module> module;
};

StatusOr<KernelModule> kernelModule(const std::vector<RowKernelRequest> &requests,
                                    const CpuCodeTarget &target) {
  KernelModule out;
  StatusOr<std::unique_ptr<TargetMachine>> machine = targetMachine(target);
  if (!machine)
    return machine.status();
  out.machine = std::move(*machine);
  out.context = std::make_unique<LLVMContext>();
  StatusOr<std::unique_ptr<Module>> module = buildModule(*out.context, requests, target, *out.machine);
  if (!module)
    return module.status();
  out.module = std::move(*module);
  return out;
}

} // namespace

StatusOr<std::string> rowKernelIr(const std::vector<RowKernelRequest> &requests,
                                  const CpuCodeTarget &target) {
  StatusOr<KernelModule> kernels = kernelModule(requests, target);
  if (!kernels)
    return kernels.status();
  std::string text;
  raw_string_ostream stream(text);
  kernels->module->print(stream, nullptr);
  return stream.str();
}

StatusOr<plan::CpuCode> buildCpuCode(const std::vector<RowKernelRequest> &requests,
                                     const CpuCodeTarget &target, const std::string &sharedPath,
                                     const std::string &planDirectory) {
  StatusOr<KernelModule> kernels = kernelModule(requests, target);
  if (!kernels)
    return kernels.status();
  Module &module = *kernels->module;
  TargetMachine &machine = *kernels->machine;
  optimize(module, machine);

  const std::string suffix = ".tmp-" + std::to_string(getpid());
  const std::string object = sharedPath + suffix + ".o", temporary = sharedPath + suffix;
  auto cleanUp = [&] {
    std::error_code ignored;
    std::filesystem::remove(object, ignored);
    std::filesystem::remove(temporary, ignored);
  };
  {
    std::error_code error;
    raw_fd_ostream out(object, error, sys::fs::OF_None);
    if (error)
      return Status::error("cannot write " + object + ": " + error.message());
    legacy::PassManager passes;
    if (machine.addPassesToEmitFile(passes, out, nullptr, CGFT_ObjectFile)) {
      cleanUp();
      return Status::error("LLVM cannot emit object code for the CPU '" + target.cpu + "'");
    }
    passes.run(module);
    out.flush();
    if (out.has_error()) {
      out.clear_error();
      cleanUp();
      return Status::error("cannot write " + object + " (disk full?)");
    }
  }
  if (Status linked = linkShared(object, temporary); !linked.ok()) {
    cleanUp();
    return linked;
  }
  std::error_code error;
  std::filesystem::rename(temporary, sharedPath, error);
  if (error) {
    cleanUp();
    return Status::error("cannot write " + sharedPath + ": " + error.message());
  }
  std::filesystem::remove(object, error);

  plan::CpuCode code;
  code.file = std::filesystem::relative(sharedPath, planDirectory.empty() ? "." : planDirectory,
                                        error)
                  .string();
  if (error || code.file.empty())
    code.file = std::filesystem::absolute(sharedPath, error).string();
  code.size = std::filesystem::file_size(sharedPath, error);
  StatusOr<std::string> hash = cpu::codeFileHash(sharedPath);
  if (!hash)
    return hash.status();
  code.hash = *hash;
  code.cpu = target.cpu;
  code.features = codeFeatures(target);
  code.vectorBits = vectorBitsFor(target);
  for (const RowKernelRequest &request : requests) {
    std::string symbol = cpu::rowKernelSymbol(request.type, request.cols);
    bool listed = std::any_of(code.kernels.begin(), code.kernels.end(),
                              [&](const plan::CpuCodeKernel &k) { return k.symbol == symbol; });
    if (!listed)
      code.kernels.push_back({std::string(gguf::ggmlTypeName(request.type)), request.cols, symbol,
                              rowKernelInput(request, target)});
    if (emitsTileKernels(target) &&
        std::none_of(code.kernels.begin(), code.kernels.end(), [&](const plan::CpuCodeKernel &k) {
          return k.symbol == cpu::tileKernelSymbol(request.type, request.cols);
        }))
      code.kernels.push_back({std::string(gguf::ggmlTypeName(request.type)), request.cols,
                              cpu::tileKernelSymbol(request.type, request.cols), "bf16-tiles"});
  }
  return code;
}

} // namespace kt::codegen
