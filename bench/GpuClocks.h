// The GPU's SM clock and board power while timed work runs, read through
// NVML (libnvidia-ml, loaded at run time; none where it is missing) every
// millisecond on a second thread. Under the board's power limit the clock
// a kernel runs at depends on how much power its work draws, so two
// kernels' times compare per clock only with their clocks beside them.
#pragma once

#include "runtime/support/Status.h"

#include <dlfcn.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>

namespace kt::bench {

class GpuClocks {
public:
  // Averages over one sampled run (samples 0: none taken).
  struct Reading {
    double megahertz = 0, watts = 0;
    int samples = 0;
  };

  // NVML's view of the GPU at `pciBusId`, or null (with the reason in
  // `whyNone`) where NVML cannot be loaded or does not know it.
  static std::unique_ptr<GpuClocks> open(const std::string &pciBusId, std::string &whyNone) {
    void *library = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!library) {
      whyNone = "libnvidia-ml.so.1 could not be loaded";
      return nullptr;
    }
    std::unique_ptr<GpuClocks> clocks(new GpuClocks());
    auto bind = [&](auto &slot, const char *name) {
      slot = reinterpret_cast<std::remove_reference_t<decltype(slot)>>(dlsym(library, name));
      return slot != nullptr;
    };
    int (*init)() = nullptr;
    int (*byBusId)(const char *, void **) = nullptr;
    if (!bind(init, "nvmlInit_v2") || !bind(byBusId, "nvmlDeviceGetHandleByPciBusId_v2") ||
        !bind(clocks->clockInfo_, "nvmlDeviceGetClockInfo") ||
        !bind(clocks->powerUsage_, "nvmlDeviceGetPowerUsage")) {
      whyNone = "NVML lacks the calls the clock readings need";
      return nullptr;
    }
    if (init() != 0 || byBusId(pciBusId.c_str(), &clocks->device_) != 0) {
      whyNone = "NVML does not know the GPU at " + pciBusId;
      return nullptr;
    }
    return clocks;
  }

  // Runs `work` while a second thread reads the clock and power every
  // millisecond; returns what `work` returns and leaves the averages in
  // `reading`.
  template <class Work> auto during(Work &&work, Reading &reading) {
    std::atomic<bool> done{false};
    Reading sum;
    std::thread sampler([&] {
      while (!done.load(std::memory_order_relaxed)) {
        unsigned megahertz = 0, milliwatts = 0;
        if (clockInfo_(device_, kSmClock, &megahertz) == 0 &&
            powerUsage_(device_, &milliwatts) == 0) {
          sum.megahertz += megahertz;
          sum.watts += milliwatts / 1000.0;
          ++sum.samples;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
    });
    auto result = work();
    done = true;
    sampler.join();
    reading = sum;
    if (sum.samples > 0) {
      reading.megahertz /= sum.samples;
      reading.watts /= sum.samples;
    }
    return result;
  }

private:
  GpuClocks() = default;
  static constexpr int kSmClock = 1; // NVML_CLOCK_SM
  void *device_ = nullptr;
  int (*clockInfo_)(void *, int, unsigned *) = nullptr;
  int (*powerUsage_)(void *, unsigned *) = nullptr;
};

} // namespace kt::bench
