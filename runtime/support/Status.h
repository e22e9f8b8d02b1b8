// Error reporting for runtime libraries.
//
// Runtime libraries are linked into MLIR tools, which are built without
// exceptions, so fallible runtime APIs return Status / StatusOr instead of
// throwing. A message is a full sentence for the user: it names the file and,
// where there is one, the fix.
#pragma once

#include <cassert>
#include <optional>
#include <string>
#include <utility>

namespace kt {

class [[nodiscard]] Status {
public:
  static Status success() { return Status(); }
  static Status error(std::string message) { return Status(std::move(message)); }

  bool ok() const { return !message_.has_value(); }
  explicit operator bool() const { return ok(); }
  const std::string &message() const {
    assert(!ok() && "message() of a successful Status");
    return *message_;
  }

private:
  Status() = default;
  explicit Status(std::string message) : message_(std::move(message)) {}
  std::optional<std::string> message_;
};

template <typename T> class [[nodiscard]] StatusOr {
public:
  StatusOr(T value) : value_(std::move(value)), status_(Status::success()) {}
  StatusOr(Status status) : status_(std::move(status)) {
    assert(!status_.ok() && "StatusOr built from a successful Status");
  }

  bool ok() const { return status_.ok(); }
  explicit operator bool() const { return ok(); }
  const Status &status() const { return status_; }
  const std::string &message() const { return status_.message(); }

  T &value() {
    assert(ok());
    return *value_;
  }
  const T &value() const {
    assert(ok());
    return *value_;
  }
  T *operator->() { return &value(); }
  const T *operator->() const { return &value(); }
  T &operator*() { return value(); }
  const T &operator*() const { return value(); }

private:
  std::optional<T> value_;
  Status status_;
};

} // namespace kt
