// kt-kernel-trace: reading the recorder's files and summarizing graph
// launches (time per kernel node and the time its end adds to the launch).
#include "tools/kt-kernel-trace/KernelTrace.h"
#include "test/unit/common/RunCommand.h"
#include "test/unit/common/TempDir.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

using namespace kt::kerneltrace;

namespace {

// A launch of graph 5 at `t0` ns: three nodes, the second started early
// (a programmatic dependent launch) and waiting on the first, the third
// overlapping the second's end.
std::string launchOfGraph5(uint64_t t0) {
  auto line = [](const char *kind, uint64_t start, uint64_t end, int graph, int node,
                 const char *name) {
    return std::string(kind) + "," + std::to_string(start) + "," + std::to_string(end) + ",7," +
           std::to_string(graph) + "," + std::to_string(node) + ",128,1,1,256," + name + "\n";
  };
  return line("kernel", t0, t0 + 10000, 5, 1, "rms_norm") +
         line("kernel", t0 + 2000, t0 + 40000, 5, 2, "gemv_q8_0") +
         line("kernel", t0 + 39000, t0 + 45000, 5, 3, "add");
}

std::string traceText() {
  std::string text = std::string(kTraceHeader) + "\n";
  for (int i = 0; i < 4; ++i)
    text += launchOfGraph5(1000000ull * (i + 1));
  // Outside graphs: left out of the summaries.
  text += "kernel,100,200,7,0,0,1,1,1,32,argmax\n";
  text += "copy,300,900,8,0,0,0,0,0,0,4096 bytes to the host\n";
  return text;
}

} // namespace

TEST(KernelTrace, ReadsKernelsAndCopies) {
  std::istringstream in(traceText());
  auto records = readTrace(in, "t.csv");
  ASSERT_TRUE(records.ok()) << records.message();
  ASSERT_EQ(records->size(), 14u);
  const TraceRecord &copy = records->back();
  EXPECT_FALSE(copy.kernel);
  EXPECT_EQ(copy.name, "4096 bytes to the host");
  EXPECT_EQ(copy.start, 300u);
  const TraceRecord &gemv = (*records)[1];
  EXPECT_TRUE(gemv.kernel);
  EXPECT_EQ(gemv.graph, 5u);
  EXPECT_EQ(gemv.node, 2u);
  EXPECT_EQ(gemv.gridX, 128);
  EXPECT_EQ(gemv.blockX, 256);
  EXPECT_EQ(gemv.end - gemv.start, 38000u);
}

TEST(KernelTrace, SummarizesWhatEachNodeAddsToItsLaunch) {
  std::istringstream in(traceText());
  auto records = readTrace(in, "t.csv");
  ASSERT_TRUE(records.ok()) << records.message();
  const std::vector<GraphSummary> summaries = summarizeGraphs(*records, 0.25);
  ASSERT_EQ(summaries.size(), 1u); // graph 0 (no graph) is not summarized
  const GraphSummary &g = summaries[0];
  EXPECT_EQ(g.graph, 5u);
  EXPECT_EQ(g.launches, 3u);
  EXPECT_EQ(g.skippedLaunches, 1u);
  ASSERT_EQ(g.kernels.size(), 3u);
  EXPECT_EQ(g.kernels[1].name, "gemv_q8_0");
  EXPECT_NEAR(g.kernels[0].meanSeconds, 10e-6, 1e-12);
  EXPECT_NEAR(g.kernels[1].meanSeconds, 38e-6, 1e-12);
  // Added: the first from its start, the others past the latest end before.
  EXPECT_NEAR(g.kernels[0].meanAddedSeconds, 10e-6, 1e-12);
  EXPECT_NEAR(g.kernels[1].meanAddedSeconds, 30e-6, 1e-12);
  EXPECT_NEAR(g.kernels[2].meanAddedSeconds, 5e-6, 1e-12);
  EXPECT_NEAR(g.meanSpanSeconds, 45e-6, 1e-12);
}

TEST(KernelTrace, LaunchesOfAnotherShapeAndGraphsByTimeAreKeptApart) {
  std::string text = std::string(kTraceHeader) + "\n";
  for (int i = 0; i < 3; ++i)
    text += launchOfGraph5(1000000ull * (i + 1));
  // A launch that ran only two of the nodes: left out, not mixed in.
  text += "kernel,9000000,9100000,7,5,1,1,1,1,32,rms_norm\n"
          "kernel,9100000,9200000,7,5,2,1,1,1,32,gemv_q8_0\n";
  // Graph 9: one long launch, more GPU time than graph 5's three.
  text += "kernel,20000000,20200000,7,9,4,1,1,1,32,lm_head\n";
  std::istringstream in(text);
  auto records = readTrace(in, "t.csv");
  ASSERT_TRUE(records.ok()) << records.message();
  const std::vector<GraphSummary> summaries = summarizeGraphs(*records, 0.0);
  ASSERT_EQ(summaries.size(), 2u);
  EXPECT_EQ(summaries[0].graph, 9u);
  EXPECT_EQ(summaries[1].graph, 5u);
  EXPECT_EQ(summaries[1].launches, 3u);
  EXPECT_EQ(summaries[1].skippedLaunches, 1u);
  EXPECT_NEAR(summaries[1].kernels[1].meanSeconds, 38e-6, 1e-12);
}

TEST(KernelTrace, RefusesOtherFilesWithTheLine) {
  {
    std::istringstream in("name,value\n");
    auto records = readTrace(in, "other.csv");
    ASSERT_FALSE(records.ok());
    EXPECT_NE(records.message().find("other.csv:1: not a kernel trace"), std::string::npos)
        << records.message();
  }
  {
    std::istringstream in(std::string(kTraceHeader) + "\nkernel,1,2,3,4,5,6,7,8,9,ok\n" +
                          "kernel,1,x,3,4,5,6,7,8,9,bad\n");
    auto records = readTrace(in, "t.csv");
    ASSERT_FALSE(records.ok());
    EXPECT_NE(records.message().find("t.csv:3: a field that should be a number"), std::string::npos)
        << records.message();
  }
  {
    std::istringstream in(std::string(kTraceHeader) + "\nkernel,5,2,3,4,5,6,7,8,9,late\n");
    auto records = readTrace(in, "t.csv");
    ASSERT_FALSE(records.ok());
    EXPECT_NE(records.message().find("t.csv:2: the record ends before it starts"),
              std::string::npos);
  }
  {
    std::istringstream in(std::string(kTraceHeader) + "\nkernel,1,2,3\n");
    auto records = readTrace(in, "t.csv");
    ASSERT_FALSE(records.ok());
    EXPECT_NE(records.message().find("t.csv:2: expected 11"), std::string::npos);
  }
  {
    std::istringstream in("");
    EXPECT_FALSE(readTrace(in, "empty.csv").ok());
  }
}

namespace {

kt::test::CommandResult runTool(const std::string &arguments) {
  return kt::test::runCommand(std::string(KT_BINARY_DIR) + "/bin/kt-kernel-trace " + arguments +
                              " 2>&1");
}

} // namespace

TEST(KernelTraceCli, PrintsEachGraphsNodesAndRefusesOtherFiles) {
  kt::test::TempDir dir;
  const std::string path = dir.file("trace.csv");
  std::ofstream(path) << traceText();
  kt::test::CommandResult ok = runTool(path);
  EXPECT_EQ(ok.exitCode, 0) << ok.output;
  EXPECT_NE(ok.output.find("graph 5: 3 launches summarized (1 skipped), 3 kernels, span 45.0 us"),
            std::string::npos)
      << ok.output;
  EXPECT_NE(ok.output.find("gemv_q8_0"), std::string::npos) << ok.output;
  EXPECT_NE(ok.output.find("38.0       30.0"), std::string::npos) << ok.output;

  kt::test::CommandResult none = runTool(path + " --graph 6");
  EXPECT_NE(none.exitCode, 0);
  EXPECT_NE(none.output.find("no graph launches of that graph"), std::string::npos) << none.output;

  std::ofstream(path) << "something else\n";
  kt::test::CommandResult bad = runTool(path);
  EXPECT_NE(bad.exitCode, 0);
  EXPECT_NE(bad.output.find(path + ":1: not a kernel trace"), std::string::npos) << bad.output;
}
