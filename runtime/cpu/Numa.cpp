#include "runtime/cpu/Numa.h"

#include <numa.h>
#include <sched.h>

#include <algorithm>
#include <set>
#include <sstream>

// libnuma reports a CPU list it cannot parse on stderr through this weak
// hook (numa(3)); numaTopologyFor returns its own error with the fix.
extern "C" void numa_warn(int, char *, ...) {}

namespace kt::cpu {

namespace {

std::vector<int> cpusOf(const bitmask *mask) {
  std::vector<int> cpus;
  for (unsigned cpu = 0; cpu < mask->size; ++cpu)
    if (numa_bitmask_isbitset(mask, cpu))
      cpus.push_back(static_cast<int>(cpu));
  return cpus;
}

} // namespace

std::vector<int> allowedCpus() {
  cpu_set_t mask;
  CPU_ZERO(&mask);
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(mask), &mask) == 0)
    for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu)
      if (CPU_ISSET(cpu, &mask))
        cpus.push_back(cpu);
  return cpus;
}

std::string cpuListText(const std::vector<int> &cpus) {
  std::ostringstream out;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1)
      ++j;
    out << (i ? "," : "") << cpus[i];
    if (j > i)
      out << "-" << cpus[j];
    i = j + 1;
  }
  return out.str();
}

std::string NumaTopology::describe() const {
  std::ostringstream out;
  for (size_t i = 0; i < nodes.size(); ++i)
    out << (i ? "; " : "") << "node " << nodes[i].id << ": CPUs " << cpuListText(nodes[i].cpus);
  return out.str();
}

NumaTopology detectNumaTopology() {
  NumaTopology topology;
  if (numa_available() < 0)
    return topology;
  const std::vector<int> cpus = allowedCpus();
  const std::set<int> allowed(cpus.begin(), cpus.end());
  bitmask *mask = numa_allocate_cpumask();
  for (int node = 0; node <= numa_max_node(); ++node) {
    if (!numa_bitmask_isbitset(numa_all_nodes_ptr, static_cast<unsigned>(node)) ||
        numa_node_to_cpus(node, mask) != 0)
      continue;
    NumaNode n{node, {}};
    for (int cpu : cpusOf(mask))
      if (allowed.count(cpu))
        n.cpus.push_back(cpu);
    if (!n.cpus.empty())
      topology.nodes.push_back(std::move(n));
  }
  numa_free_cpumask(mask);
  return topology;
}

StatusOr<NumaTopology> numaTopologyFor(const std::string &setting) {
  if (setting == "auto" || setting.empty())
    return detectNumaTopology();
  if (setting == "off")
    return NumaTopology{};
  const std::vector<int> cpus = allowedCpus();
  const std::set<int> allowed(cpus.begin(), cpus.end());
  NumaTopology topology;
  std::set<int> seen;
  std::stringstream lists(setting);
  std::string list;
  while (std::getline(lists, list, ';')) {
    const int index = static_cast<int>(topology.nodes.size());
    bitmask *mask = list.empty() ? nullptr : numa_parse_cpustring_all(list.c_str());
    if (!mask)
      return Status::error("NUMA setting '" + setting + "': node " + std::to_string(index) + " ('" +
                           list +
                           "') is not a CPU list such as 0-7,16-23. Write the nodes' CPU lists "
                           "separated by ';', or use auto or off.");
    NumaNode node{index, cpusOf(mask)};
    numa_free_cpumask(mask);
    for (int cpu : node.cpus) {
      if (!allowed.count(cpu))
        return Status::error("NUMA setting '" + setting + "': CPU " + std::to_string(cpu) +
                             " is not one this process may run on (it may: " + cpuListText(cpus) +
                             ").");
      if (!seen.insert(cpu).second)
        return Status::error("NUMA setting '" + setting + "': CPU " + std::to_string(cpu) +
                             " is in two nodes; each CPU belongs to one.");
    }
    topology.nodes.push_back(std::move(node));
  }
  if (topology.nodes.empty())
    return Status::error("NUMA setting '" + setting +
                         "' names no nodes; use auto, off or CPU "
                         "lists such as 0-7;8-15.");
  return topology;
}

} // namespace kt::cpu
