// The NUMA nodes the CPU threads and the routed experts' weights spread
// over. On a host with several nodes, the thread pool pins each thread to
// one node's CPUs and the experts are copied so that every node holds the
// rows its threads multiply (first touch by those threads); a host with one
// node does neither.
#pragma once

#include "runtime/support/Status.h"

#include <string>
#include <vector>

namespace kt::cpu {

struct NumaNode {
  int id = 0;            // the kernel's node number (or the position in a CPU-list setting)
  std::vector<int> cpus; // the node's CPUs this process may run on
};

struct NumaTopology {
  std::vector<NumaNode> nodes; // only nodes with usable CPUs
  bool multiNode() const { return nodes.size() > 1; }
  // "node 0: CPUs 0-7; node 1: CPUs 8-15".
  std::string describe() const;
};

// This host's nodes (libnuma), each with the CPUs of this process's affinity
// mask; memory-only nodes are left out. No NUMA support: one node.
NumaTopology detectNumaTopology();

// The nodes an ExecutorOptions::numa setting names: "auto" (this host's),
// "off" (one node: no pinning, no copies), or CPU lists of the nodes
// separated by ';' ("0-7,16-23;8-15,24-31"), each CPU one this process may
// run on and in one node only.
StatusOr<NumaTopology> numaTopologyFor(const std::string &setting);

// The CPUs this process may run on (its affinity mask), in increasing order.
std::vector<int> allowedCpus();

// "0-3,8" for {0, 1, 2, 3, 8}.
std::string cpuListText(const std::vector<int> &cpus);

} // namespace kt::cpu
