// Anonymous memory in the pages asked for: the expert copies (huge pages),
// the read-bandwidth buffers and the benchmark's expert pool (4 KiB or huge
// pages, to compare the two).
#pragma once

#include <cstddef>
#include <cstdint>
#include <sys/mman.h>

namespace kt::cpu {

// The pages of a buffer: as the kernel's transparent huge page setting
// decides, 4 KiB (as in a model file's mapping), or transparent huge pages.
enum class PageKind { System, Small, Huge };

// A private anonymous mapping of `bytes` in `pages`, its start rounded up to
// `alignment` (a power of two; 0: the page's); unmapped on destruction.
// data() is null if the mapping failed (errno says why).
class AnonymousMemory {
public:
  AnonymousMemory(size_t bytes, PageKind pages, size_t alignment = 0)
      : size_(bytes), mapped_(bytes + alignment) {
    void *memory =
        mmap(nullptr, mapped_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED)
      return;
    mapping_ = memory;
    const uintptr_t start = reinterpret_cast<uintptr_t>(memory);
    data_ = reinterpret_cast<uint8_t *>(
        alignment ? (start + alignment - 1) & ~uintptr_t(alignment - 1) : start);
    if (pages != PageKind::System)
      madvise(data_, size_, pages == PageKind::Huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
  }
  ~AnonymousMemory() {
    if (mapping_)
      munmap(mapping_, mapped_);
  }
  AnonymousMemory(const AnonymousMemory &) = delete;
  AnonymousMemory &operator=(const AnonymousMemory &) = delete;

  uint8_t *data() { return data_; }
  const uint8_t *data() const { return data_; }
  size_t size() const { return size_; }

private:
  void *mapping_ = nullptr;
  uint8_t *data_ = nullptr;
  size_t size_ = 0, mapped_ = 0;
};

} // namespace kt::cpu
