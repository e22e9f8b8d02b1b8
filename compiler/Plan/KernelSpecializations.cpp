#include "compiler/Plan/KernelSpecializations.h"

#include "compiler/Transforms/PlacementUtils.h"
#include "dialects/Graph/IR/GraphDialect.h"

#ifdef KT_HAVE_CUDA_KERNELS
#include "runtime/cpu/Rope.h"
#include "runtime/cuda/KernelCache.h"
#include "runtime/cuda/KernelCatalog.h"
#include "runtime/cuda/Nvrtc.h"
#endif

#include <algorithm>
#include <map>
#include <tuple>

using namespace mlir;
using namespace kt::graph;

namespace kt::compiler {

#ifdef KT_HAVE_CUDA_KERNELS
namespace {

struct Collector {
  TargetAttr target;
  // (file, entry, defines, arch) -> index in `kernels`; the specs for
  // recompiling (one file may hold several entries with equal defines).
  std::map<std::tuple<std::string, std::string, std::map<std::string, std::string>, std::string>,
           size_t>
      seen;
  std::vector<plan::KernelSpecialization> kernels;
  std::string error;

  void add(StatusOr<cuda::KernelSpec> spec, StringRef device, StringRef path) {
    if (!spec) {
      if (error.empty())
        error = spec.message();
      return;
    }
    unsigned index = 0;
    if (!device.startswith("cuda:") || device.drop_front(5).getAsInteger(10, index) ||
        index >= target.getGpuCount())
      return;
    std::string arch = target.getGpu(index).getArch().str();
    auto key = std::make_tuple(spec->file, spec->entry, spec->defines, arch);
    auto [it, inserted] = seen.emplace(key, kernels.size());
    if (inserted)
      kernels.push_back({spec->entry, spec->file, spec->defines, arch, "", {}});
    std::vector<std::string> &usedBy = kernels[it->second].usedBy;
    if (!path.empty() && std::find(usedBy.begin(), usedBy.end(), path.str()) == usedBy.end())
      usedBy.push_back(path.str());
  }
  // The arch of a cuda:N device, or empty.
  std::string arch(StringRef device) const {
    unsigned index = 0;
    if (!device.startswith("cuda:") || device.drop_front(5).getAsInteger(10, index) ||
        index >= target.getGpuCount())
      return {};
    return target.getGpu(index).getArch().str();
  }
};

// A matrix's GEMVs: one token per block for decode steps (dense Q8_0
// matrices of split rows: the planes GEMV and its quantization), a tile of
// tokens for prefill steps, and Q8_0 and k-quant prefill on tensor cores
// where the GPU has bf16 mma.sync.
// `perHead`: a stack of per-head matrices, which keeps the GEMV in prefill.
void addGemv(Collector &collector, gguf::GgmlType type, int64_t out, int64_t in, StringRef device,
             StringRef path, bool perHead = false) {
  for (StatusOr<cuda::KernelSpec> &spec :
       cuda::denseMatrixSpecs(type, out, in, perHead, cuda::archHasBf16Mma(collector.arch(device))))
    collector.add(std::move(spec), device, path);
}

// Routed experts on a GPU: the GEMVs of the chosen experts (decode: matrix
// ids read on the device, one token per block; prefill: tiles of choices
// grouped by expert, or the grouped tensor-core GEMM on sm_80 and newer),
// silu_mul and the weighted sum over the top-k (and the selection counts).
// `nativeFp8`: FP8 experts run as such where the GPU has wgmma (placed on
// the GPU); the expert cache always holds the CPU's q8_0 copies.
void addGpuExperts(Collector &collector, RoutedExpertsOp experts, StringRef device,
                   StringRef path, bool nativeFp8 = true) {
  const int64_t topK = cast<RankedTensorType>(experts.getTopkIds().getType()).getShape()[1];
  WeightAttr gateProj = experts.getGateProj();
  // FP8 experts (a checkpoint's) on sm_90a: the FP8 GEMV by expert id in
  // decode; in prefill the assignments gathered and quantized per expert,
  // then the grouped wgmma GEMM. Other GPUs run the q8_0 copies the
  // executor makes at load, with the q8_0 kernels.
  unsigned gpu = 0;
  (void)device.drop_front(5).getAsInteger(10, gpu); // a cuda:N device
  const bool fp8 = gateProj.getDtype() == graph::kFp8E4m3;
  const bool wgmma = nativeFp8 && gpu < collector.target.getGpuCount() &&
                     collector.target.getGpu(gpu).getArch() == "sm_90a";
  auto typeOf = [&](WeightAttr weight) -> std::optional<gguf::GgmlType> {
    if (fp8)
      return gguf::GgmlType::Q8_0;
    return gguf::parseGgmlType(weight.getDtype().str());
  };
  if (fp8 && wgmma) {
    for (WeightAttr weight : {gateProj, experts.getDownProj()}) {
      const int64_t out = weight.getShape()[1], in = weight.getShape()[0];
      collector.add(cuda::gemvFp8Spec(out, in), device, path);
      collector.add(cuda::fp8QuantizeSpec(in), device, path);
      StatusOr<cuda::Fp8GemmConfig> config = cuda::fp8GemmConfig(out);
      collector.add(config ? cuda::gemmFp8GroupedSpec(out, in, *config)
                           : StatusOr<cuda::KernelSpec>(config.status()),
                    device, path);
    }
    collector.add(cuda::elementwiseSpec("silu_mul", gateProj.getShape()[1]), device, path);
    for (const char *entry : {"moe_combine", "expert_counts"})
      collector.add(cuda::moeCombineSpec(gateProj.getShape()[0], topK, entry), device, path);
    return;
  }
  const bool mma = cuda::archHasBf16Mma(collector.arch(device));
  for (WeightAttr weight : {gateProj, experts.getUpProj(), experts.getDownProj()})
    if (std::optional<gguf::GgmlType> type = typeOf(weight); type && cuda::hasGpuGemv(*type)) {
      const int64_t out = weight.getShape()[1], in = weight.getShape()[0];
      for (bool grouped : {false, true})
        collector.add(
            cuda::gemvSpec(*type, out, in, grouped ? cuda::kGemvPrefillTokenTile : 1,
                           grouped ? cuda::GemvVariant::Grouped : cuda::GemvVariant::Plain),
            device, path);
      // Prefill's grouped tensor-core GEMM, where the GPU has bf16 mma.sync
      // (FP8 experts there: on their q8_0 copies).
      if (mma && cuda::gemmMmaFits(*type, out, in))
        collector.add(cuda::gemmMmaSpec(*type, out, in), device, path);
    }
  // Decode's gate and up products in one pass, where their types agree.
  if (gateProj.getDtype() == experts.getUpProj().getDtype())
    if (std::optional<gguf::GgmlType> type = typeOf(gateProj); type && cuda::hasGpuGemv(*type))
      collector.add(cuda::gemvSpec(*type, gateProj.getShape()[1], gateProj.getShape()[0], 1,
                                   cuda::GemvVariant::GateUp),
                    device, path);
  collector.add(cuda::elementwiseSpec("silu_mul", gateProj.getShape()[1]), device, path);
  for (const char *entry : {"moe_combine", "expert_counts"})
    collector.add(cuda::moeCombineSpec(gateProj.getShape()[0], topK, entry), device, path);
}

// Bytes the memory plan reserves for the GPU expert cache (on cuda:0).
uint64_t expertCacheBytes(ModuleOp module) {
  auto memoryPlan = module->getAttrOfType<DictionaryAttr>("ktgraph.memory_plan");
  auto gpu = memoryPlan ? memoryPlan.getAs<DictionaryAttr>("cuda:0") : DictionaryAttr();
  auto bytes = gpu ? gpu.getAs<IntegerAttr>("expert_cache") : IntegerAttr();
  return bytes ? bytes.getValue().getZExtValue() : 0;
}

// The kernel chosen for `phase` ("prefill", "decode"); empty where none is.
StringRef chosenKernel(DictionaryAttr kernels, StringRef phase) {
  auto name = kernels ? kernels.getAs<StringAttr>(phase) : StringAttr();
  return name ? name.getValue() : StringRef();
}

} // namespace

StatusOr<std::vector<plan::KernelSpecialization>> collectKernelSpecializations(ModuleOp module) {
  Collector collector;
  collector.target = module->getAttrOfType<TargetAttr>("ktgraph.target");
  if (!collector.target)
    return std::vector<plan::KernelSpecialization>();
  const bool expertCache = expertCacheBytes(module) > 0;
  module.walk([&](ModelModuleOpInterface op) {
    auto placement = op->getAttrOfType<PlacementAttr>("ktgraph.placement");
    if (!placement)
      return;
    // The expert cache runs copies of CPU-placed experts on cuda:0 (for the
    // layers whose results go there), adding their sum to the CPU's.
    if (auto experts = dyn_cast<RoutedExpertsOp>(op.getOperation());
        experts && expertCache && placement.getDecode() == "cpu" &&
        placement.getOut() == "cuda:0") {
      addGpuExperts(collector, experts, "cuda:0", op.getModulePath(), /*nativeFp8=*/false);
      collector.add(cuda::elementwiseSpec("add", experts.getGateProj().getShape()[0]), "cuda:0",
                    op.getModulePath());
    }
    auto kernels = op->getAttrOfType<DictionaryAttr>("ktgraph.kernels");
    StringRef path = op.getModulePath();
    for (auto [phase, device] : {std::pair<StringRef, StringRef>{"prefill", placement.getPrefill()},
                                 {"decode", placement.getDecode()}}) {
      if (!device.startswith("cuda:"))
        continue;
      if (auto norm = dyn_cast<RmsNormOp>(op.getOperation())) {
        const int64_t width = norm.getWeight().getShape()[0];
        const float eps = norm.getEps().convertToFloat();
        collector.add(cuda::rmsNormSpec(width, eps), device, path);
        // Prefill quantizes the result for the FP8 GEMM that reads it.
        if (phase == "prefill" && op->hasAttr("ktgraph.quantize_fp8"))
          collector.add(cuda::rmsNormFp8Spec(width, eps), device, path);
      } else if (auto fused = dyn_cast<AddRmsNormOp>(op.getOperation())) {
        const int64_t width = fused.getWeight().getShape()[0];
        const float eps = fused.getEps().convertToFloat();
        // And the adds and the norm apart: prefill's norm that quantizes for
        // an FP8 GEMM runs after the adds, and ktrun --no-fused-residual-norm
        // runs them all apart.
        for (StatusOr<cuda::KernelSpec> spec :
             {cuda::addRmsNormSpec(width, eps, int(fused.getAddends().size())),
              cuda::elementwiseSpec("add", width), cuda::rmsNormSpec(width, eps)})
          collector.add(std::move(spec), device, path);
        if (phase == "prefill" && op->hasAttr("ktgraph.quantize_fp8"))
          collector.add(cuda::rmsNormFp8Spec(width, eps), device, path);
      } else if (auto embedding = dyn_cast<EmbeddingOp>(op.getOperation())) {
        WeightAttr table = embedding.getWeight();
        std::optional<gguf::GgmlType> type = gguf::parseGgmlType(table.getDtype().str());
        if (type && (*type == gguf::GgmlType::F32 || *type == gguf::GgmlType::F16 ||
                     *type == gguf::GgmlType::BF16 || *type == gguf::GgmlType::Q8_0))
          collector.add(cuda::embeddingSpec(table.getShape()[0], table.getShape()[1], *type),
                        device, path);
      } else if (auto attention = dyn_cast<MlaAttentionOp>(op.getOperation())) {
        // RoPE of the queries (after each head's nope part) and of the shared
        // key, and in decode the absorbed attention core over the latent cache.
        cpu::RopeConfig rope;
        rope.dims = attention.getQkRopeHeadDim();
        rope.theta = attention.getRopeTheta().convertToDouble();
        rope.factor = attention.getRopeScalingFactor().convertToDouble();
        rope.originalContext = attention.getRopeOriginalContextLength();
        rope.yarnLogMultiplier = attention.getRopeYarnLogMultiplier().convertToDouble();
        const int64_t nope = attention.getQkNopeHeadDim(), dims = rope.dims;
        const int64_t heads = static_cast<int64_t>(attention.getNumHeads());
        const float cosSin = static_cast<float>(cpu::ropeCosSinScale(rope));
        collector.add(cuda::ropeSpec({dims, heads, nope + dims, nope, cosSin}), device, path);
        // The new kv_a rows appended to the latent cache, their latent
        // normalized and their rope key rotated on the way.
        const int64_t kvLora = attention.getKvLoraRank();
        const float eps = attention.getEps().convertToFloat();
        collector.add(cuda::mlaCacheAppendSpec(kvLora, dims, eps, cosSin), device, path);
        // The absorbed attention core: in prefill each token over its causal
        // prefix, in decode split over chunks of the cache.
        const float scale = static_cast<float>(cpu::attentionSoftmaxScale(nope + dims, rope));
        // Long prefills, and decode over long caches, on tensor cores where
        // the GPU has bf16 mma.
        unsigned gpu = 0;
        (void)device.drop_front(5).getAsInteger(10, gpu);
        const bool bf16Mma = gpu < collector.target.getGpuCount() &&
                             collector.target.getGpu(gpu).getComputeCapability() >= 80;
        if (phase == "prefill") {
          collector.add(cuda::mlaPrefillSpec(kvLora, dims, scale, heads), device, path);
          if (StatusOr<cuda::KernelSpec> mma = cuda::mlaPrefillMmaSpec(kvLora, dims, scale, heads);
              bf16Mma && mma)
            collector.add(mma, device, path);
        } else {
          for (const char *entry : {"mla_decode_split", "mla_combine"})
            collector.add(cuda::mlaDecodeSplitSpec(kvLora, dims, scale, heads, entry), device,
                          path);
          if (StatusOr<cuda::KernelSpec> mma = cuda::mlaDecodeMmaSpec(kvLora, dims, scale, heads);
              bf16Mma && mma)
            collector.add(mma, device, path);
        }
        // The norm of the compressed query.
        if (attention.getQLoraRank() > 0)
          collector.add(cuda::rmsNormSpec(attention.getQLoraRank(), eps), device, path);
        if (phase == "prefill" && op->hasAttr("ktgraph.quantize_fp8_q_norm"))
          collector.add(cuda::rmsNormFp8Spec(attention.getQLoraRank(), eps), device, path);
        // The per-head up-projections of the latent, batched over heads; a
        // model with only the joint kv_b_proj gets them split into f32 at load.
        if (attention.getKBProj() && attention.getVBProj()) {
          for (WeightAttr weight : {*attention.getKBProj(), *attention.getVBProj()}) {
            std::optional<gguf::GgmlType> type = gguf::parseGgmlType(weight.getDtype().str());
            if (type && cuda::hasGpuGemv(*type))
              addGemv(collector, *type, weight.getShape()[1], weight.getShape()[0], device, path,
                      /*perHead=*/true);
          }
        } else {
          const int64_t v = attention.getVHeadDim();
          addGemv(collector, gguf::GgmlType::F32, kvLora, nope, device, path);
          addGemv(collector, gguf::GgmlType::F32, v, kvLora, device, path);
        }
      } else if (isa<MlpOp, SharedExpertsOp>(op.getOperation())) {
        WeightAttr gateProj = isa<MlpOp>(op.getOperation())
                                  ? cast<MlpOp>(op.getOperation()).getGateProj()
                                  : cast<SharedExpertsOp>(op.getOperation()).getGateProj();
        collector.add(cuda::elementwiseSpec("silu_mul", gateProj.getShape()[1]), device, path);
        if (phase == "prefill" && op->hasAttr("ktgraph.quantize_fp8_act"))
          collector.add(cuda::elementwiseSpec("silu_mul_fp8", gateProj.getShape()[1]), device,
                        path);
      } else if (auto gate = dyn_cast<MoeGateOp>(op.getOperation())) {
        cuda::MoeGateShape shape;
        shape.experts = gate.getNumExperts();
        shape.topK = gate.getTopK();
        shape.groups = gate.getNGroup();
        shape.groupsUsed = gate.getTopkGroup();
        shape.sigmoid = gate.getScoringFunc() == "sigmoid";
        shape.hasBias = static_cast<bool>(gate.getEScoreCorrectionBias());
        shape.normalize = gate.getNormTopkProb();
        shape.scale = static_cast<float>(gate.getRoutedScalingFactor().convertToDouble());
        collector.add(cuda::moeGateSpec(shape), device, path);
        // The router's logits.
        WeightAttr router = gate.getWeight();
        if (std::optional<gguf::GgmlType> type = gguf::parseGgmlType(router.getDtype().str());
            type && cuda::hasGpuGemv(*type))
          addGemv(collector, *type, router.getShape()[1], router.getShape()[0], device, path);
      } else if (auto experts = dyn_cast<RoutedExpertsOp>(op.getOperation())) {
        addGpuExperts(collector, experts, device, path);
      } else if (auto head = dyn_cast<LmHeadOp>(op.getOperation())) {
        WeightAttr weight = head.getWeight();
        std::optional<gguf::GgmlType> type = gguf::parseGgmlType(weight.getDtype().str());
        if (type && cuda::hasGpuGemv(*type) &&
            chosenKernel(kernels, phase).endswith((".gemv_" + weight.getDtype()).str()))
          addGemv(collector, *type, weight.getShape()[1], weight.getShape()[0], device, path);
        // Greedy decoding and sampling where the logits are.
        if (phase == "decode") {
          collector.add(cuda::argmaxSpec(weight.getShape()[1]), device, path);
          collector.add(cuda::sampleSpec(weight.getShape()[1]), device, path);
        }
      }
    }
    // Linear sub-modules placed on their own: their decode GEMVs (q8_0 and
    // k-quants).
    auto subPlacements = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_placements");
    auto subKernels = op->getAttrOfType<DictionaryAttr>("ktgraph.sub_kernels");
    if (!subPlacements || !subKernels)
      return;
    for (auto &[role, weight] : op.getWeights()) {
      auto sub = subPlacements.getAs<PlacementAttr>(role);
      auto chosen = subKernels.getAs<DictionaryAttr>(role);
      // FP8 weights decode with the FP8 GEMV, whatever the prefill kernel.
      if (sub && weight.getDtype() == graph::kFp8E4m3 && sub.getDecode().startswith("cuda:") &&
          chosenKernel(chosen, "decode").contains(".fp8")) {
        const int64_t out = weight.getShape()[1], in = weight.getShape()[0];
        collector.add(cuda::gemvFp8Spec(out, in), sub.getDecode(), (path + "." + role).str());
        // Prefill on sm_90a: the wgmma GEMM on quantized activations, where
        // the shape suits it (else the GEMV serves prefill too).
        if (sub.getPrefill().startswith("cuda:") &&
            chosenKernel(chosen, "prefill").endswith(".fp8_wgmma") && cuda::fp8GemmFits(out, in)) {
          StatusOr<std::vector<cuda::KernelSpec>> gemms = cuda::gemmFp8TileSpecs(out, in);
          if (!gemms)
            collector.add(gemms.status(), sub.getPrefill(), (path + "." + role).str());
          else
            for (cuda::KernelSpec &gemm : *gemms)
              collector.add(std::move(gemm), sub.getPrefill(), (path + "." + role).str());
          for (StatusOr<cuda::KernelSpec> spec :
               {cuda::gemmFp8SumSpec(out, in), cuda::fp8QuantizeSpec(in)})
            collector.add(std::move(spec), sub.getPrefill(), (path + "." + role).str());
        }
        // sm_80 to sm_89: weights and activations to bf16, mma.sync.
        const StringRef prefill = chosenKernel(chosen, "prefill");
        if (sub.getPrefill().startswith("cuda:") &&
            (prefill.endswith(".fp8_mma") || prefill.endswith(".fp8_dequant_bf16")) &&
            cuda::fp8GemmFits(out, in))
          collector.add(cuda::gemmFp8Bf16Spec(out, in), sub.getPrefill(),
                        (path + "." + role).str());
        continue;
      }
      std::optional<gguf::GgmlType> type = gguf::parseGgmlType(weight.getDtype().str());
      if (!sub || !type || !cuda::hasGpuGemv(*type) || weight.getShape().size() != 2 ||
          !chosenKernel(chosen, "decode").endswith((".gemv_" + weight.getDtype()).str()))
        continue;
      addGemv(collector, *type, weight.getShape()[1], weight.getShape()[0], sub.getDecode(),
              (path + "." + role).str());
    }
  });
  // Residual adds and the sum of routed and shared experts.
  module.walk([&](AddOp add) {
    const int64_t width = cast<RankedTensorType>(add.getType()).getShape()[1];
    for (Phase phase : {Phase::Prefill, Phase::Decode})
      if (std::optional<StringRef> device = runDevice(add, phase); device && isGpu(*device))
        collector.add(cuda::elementwiseSpec("add", width), *device, "");
  });
  if (!collector.error.empty())
    return Status::error(collector.error);

  // Cache keys include the NVRTC version: only where NVRTC is here.
  StatusOr<const cuda::Nvrtc *> nvrtc = cuda::Nvrtc::instance();
  if (nvrtc) {
    cuda::KernelCache cache("", **nvrtc);
    for (plan::KernelSpecialization &kernel : collector.kernels) {
      StatusOr<cuda::KernelSpec> spec =
          cuda::makeKernelSpec(kernel.file, kernel.entry, kernel.defines, 0);
      if (!spec)
        return spec.status();
      if (StatusOr<std::string> key = cache.keyHex(*spec, kernel.arch))
        kernel.cacheKey = *key;
    }
  }
  return collector.kernels;
}

StatusOr<PrecompileStats>
precompileKernels(const std::vector<plan::KernelSpecialization> &kernels) {
  StatusOr<const cuda::Nvrtc *> nvrtc = cuda::Nvrtc::instance();
  if (!nvrtc)
    return nvrtc.status();
  StatusOr<std::string> directory = cuda::KernelCache::defaultDirectory();
  if (!directory)
    return directory.status();
  cuda::KernelCache cache(*directory, **nvrtc);
  for (const plan::KernelSpecialization &kernel : kernels) {
    StatusOr<cuda::KernelSpec> spec =
        cuda::makeKernelSpec(kernel.file, kernel.entry, kernel.defines, 0);
    if (!spec)
      return spec.status();
    StatusOr<cuda::CompiledKernel> compiled = cache.getOrCompile(*spec, kernel.arch);
    if (!compiled)
      return compiled.status();
  }
  PrecompileStats stats;
  stats.kernels = kernels.size();
  stats.fromCache = cache.stats().hits;
  stats.compiled = cache.stats().misses;
  stats.compileSeconds = cache.stats().compileSeconds;
  stats.cacheDirectory = *directory;
  return stats;
}

#else

StatusOr<std::vector<plan::KernelSpecialization>> collectKernelSpecializations(ModuleOp) {
  return std::vector<plan::KernelSpecialization>();
}

StatusOr<PrecompileStats> precompileKernels(const std::vector<plan::KernelSpecialization> &) {
  return Status::error("this ktc was built without the CUDA toolkit (nvrtc.h), so it cannot "
                       "precompile GPU kernels; rebuild with /usr/local/cuda present");
}

#endif

} // namespace kt::compiler
