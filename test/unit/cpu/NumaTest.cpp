// NUMA: node settings, threads pinned per node, tasks kept on their node,
// and the routed experts copied per node giving the same logits bit for bit;
// on one node, the experts copied into huge pages (--expert-pages huge)
// alike, and a bad --expert-pages refused.
// This host may have one node; two "nodes" of one CPU each exercise the
// same code (pinning is real, placement is first touch by pinned threads).
#include "runtime/cpu/Numa.h"
#include "runtime/cpu/ThreadPool.h"
#include "test/unit/cpu/TestModels.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <fstream>
#include <mutex>
#include <sched.h>
#include <set>

namespace kt::cpu::test {
namespace {

// Two nodes of this process's first two CPUs ("3;5"), or empty.
std::string twoNodes() {
  const std::vector<int> cpus = allowedCpus();
  return cpus.size() < 2 ? "" : std::to_string(cpus[0]) + ";" + std::to_string(cpus[1]);
}

TEST(Numa, CpuListText) {
  EXPECT_EQ(cpuListText({0, 1, 2, 5, 7, 8}), "0-2,5,7-8");
  EXPECT_EQ(cpuListText({3}), "3");
  EXPECT_EQ(cpuListText({}), "");
}

TEST(Numa, SettingsNameTheNodes) {
  StatusOr<NumaTopology> off = numaTopologyFor("off");
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->multiNode());
  EXPECT_TRUE(off->nodes.empty());

  // This host's nodes: only CPUs the process may use, each in one node.
  StatusOr<NumaTopology> host = numaTopologyFor("auto");
  ASSERT_TRUE(host.ok());
  const std::vector<int> allowed = allowedCpus();
  std::set<int> seen;
  for (const NumaNode &node : host->nodes) {
    EXPECT_FALSE(node.cpus.empty());
    for (int cpu : node.cpus) {
      EXPECT_TRUE(std::count(allowed.begin(), allowed.end(), cpu)) << cpu;
      EXPECT_TRUE(seen.insert(cpu).second) << cpu;
    }
  }
  std::printf("this host: %s\n", host->describe().c_str());

  const std::string two = twoNodes();
  if (two.empty())
    GTEST_SKIP() << "needs two CPUs";
  StatusOr<NumaTopology> lists = numaTopologyFor(two);
  ASSERT_TRUE(lists.ok()) << lists.message();
  ASSERT_EQ(lists->nodes.size(), 2u);
  EXPECT_EQ(lists->nodes[0].cpus, std::vector<int>{allowed[0]});
  EXPECT_EQ(lists->nodes[1].cpus, std::vector<int>{allowed[1]});
  EXPECT_EQ(lists->describe(), "node 0: CPUs " + std::to_string(allowed[0]) + "; node 1: CPUs " +
                                   std::to_string(allowed[1]));
}

TEST(Numa, BadSettingsSayWhatIsWrong) {
  auto expectError = [](const std::string &setting, const std::string &words) {
    StatusOr<NumaTopology> topology = numaTopologyFor(setting);
    ASSERT_FALSE(topology.ok()) << setting;
    EXPECT_NE(topology.message().find(words), std::string::npos) << topology.message();
  };
  expectError("0-x", "is not a CPU list");
  expectError("0;;1", "is not a CPU list");
  expectError(";", "is not a CPU list");
  const std::vector<int> allowed = allowedCpus();
  expectError(std::to_string(allowed[0]) + ";" + std::to_string(allowed[0]), "is in two nodes");
  // A CPU of the machine this process may not use (when there is one).
  cpu_set_t mask;
  CPU_ZERO(&mask);
  CPU_SET(allowed[0], &mask);
  const std::string other = std::to_string(allowed.size() > 1 ? allowed[1] : allowed[0]);
  if (allowed.size() > 1 && sched_setaffinity(0, sizeof(mask), &mask) == 0) {
    StatusOr<NumaTopology> topology = numaTopologyFor(other);
    cpu_set_t all;
    CPU_ZERO(&all);
    for (int cpu : allowed)
      CPU_SET(cpu, &all);
    ASSERT_EQ(sched_setaffinity(0, sizeof(all), &all), 0);
    ASSERT_FALSE(topology.ok());
    EXPECT_NE(topology.message().find("not one this process may run on"), std::string::npos)
        << topology.message();
  }
}

TEST(Numa, PoolPinsThreadsAndKeepsTasksOnTheirNode) {
  const std::string two = twoNodes();
  if (two.empty())
    GTEST_SKIP() << "needs two CPUs";
  const NumaTopology topology = *numaTopologyFor(two);
  ThreadPool pool(4, topology);
  ASSERT_EQ(pool.nodeCount(), 2);
  EXPECT_EQ(pool.threadCount(), 4);
  EXPECT_EQ(pool.threadsOnNode(0), 2);
  EXPECT_EQ(pool.threadsOnNode(1), 2);

  // Without stealing, node n's tasks run on node n's threads, on its CPU.
  const std::vector<int64_t> nodeStarts = {0, 40, 100};
  std::vector<int> ranOnNode(100, -1), ranOnCpu(100, -1), runs(100, 0);
  std::mutex mutex;
  pool.parallelForNodes(
      nodeStarts,
      [&](int64_t task, int thread) {
        std::lock_guard<std::mutex> lock(mutex);
        ranOnNode[size_t(task)] = pool.nodeOfThread(thread);
        ranOnCpu[size_t(task)] = sched_getcpu();
        ++runs[size_t(task)];
      },
      /*steal=*/false);
  for (int64_t task = 0; task < 100; ++task) {
    const int node = task < 40 ? 0 : 1;
    EXPECT_EQ(runs[size_t(task)], 1) << task;
    EXPECT_EQ(ranOnNode[size_t(task)], node) << task;
    EXPECT_EQ(ranOnCpu[size_t(task)], topology.nodes[size_t(node)].cpus[0]) << task;
  }
  // With stealing and in plain loops every task still runs once.
  for (bool plain : {false, true}) {
    std::fill(runs.begin(), runs.end(), 0);
    auto body = [&](int64_t task, int) {
      std::lock_guard<std::mutex> lock(mutex);
      ++runs[size_t(task)];
    };
    if (plain)
      pool.parallelFor(100, body);
    else
      pool.parallelForNodes({0, 0, 100}, body);
    EXPECT_EQ(runs, std::vector<int>(100, 1)) << (plain ? "parallelFor" : "stealing");
  }
}

TEST(Numa, FewerThreadsThanNodesIsOneNode) {
  const std::string two = twoNodes();
  if (two.empty())
    GTEST_SKIP() << "needs two CPUs";
  ThreadPool pool(1, *numaTopologyFor(two));
  EXPECT_EQ(pool.nodeCount(), 1);
  EXPECT_EQ(pool.threadCount(), 1);
}

// The routed-expert tensors of a model: their bytes, experts and MoE
// layers.
struct RoutedExpertTensors {
  uint64_t bytes = 0;
  int64_t experts = 0, moeLayers = 0;
};

uint64_t totalBytes(const std::vector<exec::HostBytes> &ranges) {
  uint64_t total = 0;
  for (const exec::HostBytes &range : ranges)
    total += range.bytes;
  return total;
}

// The tiny preset (q4_K experts) at hidden size 256, and its routed experts.
void buildExpertModel(const std::string &name, TestModel &m, RoutedExpertTensors &routed) {
  gen::ModelConfig config = *gen::presetConfig("tiny");
  config.hiddenSize = 256;
  ASSERT_NO_FATAL_FAILURE(buildModel(name, config, m));
  for (const gguf::TensorInfo &tensor : m.model->tensors())
    if (tensor.name.find("_exps.weight") != std::string::npos) {
      routed.bytes += tensor.nbytes;
      routed.experts += tensor.ne[2];
      routed.moeLayers += tensor.name.find("ffn_gate_exps") != std::string::npos;
    }
  ASSERT_GT(routed.bytes, 0u);
}

// The routed experts copied per node: the same logits bit for bit as one
// node, in prefill and decode, on the row kernels and (on AMX hosts) the
// tile kernels; one node copies nothing.
TEST(Numa, ExpertsPlacedPerNodeGiveTheSameLogits) {
  KT_REQUIRE_COMPILER();
  const std::string two = twoNodes();
  if (two.empty())
    GTEST_SKIP() << "needs two CPUs";
  TestModel m;
  RoutedExpertTensors routed;
  ASSERT_NO_FATAL_FAILURE(buildExpertModel("numa", m, routed));
  const uint64_t expertBytes = routed.bytes;
  const int64_t expertCount = routed.experts, moeLayers = routed.moeLayers;
  const std::vector<int32_t> tokens = sampleTokens(40, 5);
  for (int64_t tileTokens : {int64_t{0}, int64_t{2}}) {
    ExecutorOptions one;
    one.threads = 2;
    one.numa = "off";
    one.expertTileTokens = tileTokens;
    ExecutorOptions nodes = one;
    nodes.numa = two;
    auto single = makeExecutor(m, one), placed = makeExecutor(m, nodes);
    ASSERT_TRUE(single && placed);
    EXPECT_TRUE(single->numaPlacement().nodes.empty());
    EXPECT_EQ(single->numaPlacement().expertBytes, 0u);
    EXPECT_EQ(totalBytes(single->routedExpertBytes()), expertBytes);
    EXPECT_TRUE(placed->routedExpertBytes().empty()) << "each node reads its own band";
    const exec::NumaPlacement placement = placed->numaPlacement();
    EXPECT_EQ(placement.threadsPerNode, (std::vector<int>{1, 1}));
    // Every expert's bytes once, each band padded to a cache line.
    EXPECT_GE(placement.expertBytes, expertBytes);
    EXPECT_LT(placement.expertBytes, expertBytes + uint64_t(expertCount) / 3 * 2 * 64);
    if (tileTokens > 0)
      std::printf("tile kernels in %d of %lld MoE layers\n", placed->tileExpertLayers(),
                  static_cast<long long>(moeLayers));
    StatusOr<std::vector<float>> a = single->forward(tokens), b = placed->forward(tokens);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b) << "prefill, tile tokens " << tileTokens;
    for (int32_t token : {3, 17, 9}) {
      a = single->forward({token});
      b = placed->forward({token});
      ASSERT_TRUE(a.ok() && b.ok());
      EXPECT_EQ(*a, *b) << "decode, tile tokens " << tileTokens;
    }
  }
}

// One node, --expert-pages huge: every expert tensor's bytes copied once,
// the same logits bit for bit as reading them where the
// model file is mapped, in prefill and decode; "file" copies nothing; a
// value other than file or huge is refused with both named.
TEST(Numa, ExpertsCopiedIntoHugePagesGiveTheSameLogits) {
  KT_REQUIRE_COMPILER();
  std::ifstream thp("/sys/kernel/mm/transparent_hugepage/enabled");
  std::string modes;
  if (!std::getline(thp, modes) || modes.find("[never]") != std::string::npos)
    GTEST_SKIP() << "this host's transparent huge pages are off";
  TestModel m;
  RoutedExpertTensors routed;
  ASSERT_NO_FATAL_FAILURE(buildExpertModel("huge-pages", m, routed));
  const uint64_t expertBytes = routed.bytes;
  ExecutorOptions file;
  file.threads = 2;
  file.numa = "off";
  ExecutorOptions huge = file;
  huge.expertPages = "huge";
  auto reading = makeExecutor(m, file), copied = makeExecutor(m, huge);
  ASSERT_TRUE(reading && copied);
  EXPECT_FALSE(reading->numaPlacement().hugePages);
  EXPECT_EQ(reading->numaPlacement().expertBytes, 0u);
  const exec::NumaPlacement placement = copied->numaPlacement();
  EXPECT_TRUE(placement.hugePages);
  EXPECT_TRUE(placement.nodes.empty());
  EXPECT_EQ(placement.expertBytes, expertBytes);
  // Where the kernels read them: the model file's tensors, or the copy's,
  // each from a huge page's start.
  std::vector<const uint8_t *> tensorData;
  for (const gguf::TensorInfo &tensor : m.model->tensors())
    if (tensor.name.find("_exps.weight") != std::string::npos)
      tensorData.push_back(tensor.data);
  const std::vector<exec::HostBytes> inFile = reading->routedExpertBytes(),
                                     inCopy = copied->routedExpertBytes();
  EXPECT_EQ(totalBytes(inFile), expertBytes);
  EXPECT_EQ(totalBytes(inCopy), expertBytes);
  ASSERT_EQ(inFile.size(), tensorData.size());
  ASSERT_EQ(inCopy.size(), tensorData.size());
  for (size_t i = 0; i < inFile.size(); ++i) {
    EXPECT_NE(std::find(tensorData.begin(), tensorData.end(), inFile[i].data), tensorData.end());
    EXPECT_EQ(std::find(tensorData.begin(), tensorData.end(), inCopy[i].data), tensorData.end());
    EXPECT_EQ(reinterpret_cast<uintptr_t>(inCopy[i].data) % (2 << 20), 0u);
  }
  const std::vector<int32_t> tokens = sampleTokens(40, 5);
  StatusOr<std::vector<float>> a = reading->forward(tokens), b = copied->forward(tokens);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(*a, *b) << "prefill";
  for (int32_t token : {3, 17, 9}) {
    a = reading->forward({token});
    b = copied->forward({token});
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ(*a, *b) << "decode";
  }
  ExecutorOptions bad = file;
  bad.expertPages = "tiny";
  StatusOr<std::unique_ptr<CpuExecutor>> refused = CpuExecutor::create(m.plan, *m.model, bad);
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.message().find("--expert-pages 'tiny': give file"), std::string::npos)
      << refused.message();
}

} // namespace
} // namespace kt::cpu::test
