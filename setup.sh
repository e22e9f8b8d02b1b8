#!/usr/bin/env bash
# Installs the build dependencies (Debian packages), configures ./build with
# ninja and ccache, and builds. Safe to run again: installed packages are
# skipped and the build is incremental.
#
#   ./setup.sh            install, configure, build everything
#   BUILD_DIR=dir ./setup.sh   build elsewhere
set -euo pipefail
cd "$(dirname "$0")"

BUILD_DIR=${BUILD_DIR:-build}
PACKAGES=(
  cmake ninja-build ccache g++ python3
  llvm-16-dev libmlir-16-dev mlir-16-tools llvm-16-tools
  libgtest-dev libgmock-dev
  nlohmann-json3-dev libcli11-dev libyaml-cpp-dev libpcre2-dev libxxhash-dev
  libcpp-httplib-dev libdnnl-dev libnuma-dev pkg-config curl
  # dnnl's CMake package looks for OpenCL (its GPU runtime) and fails without it.
  ocl-icd-opencl-dev
)

# The server test drives ktrun with the official openai SDK (npm).
command -v npm >/dev/null || PACKAGES+=(nodejs npm)

missing=()
for package in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$package")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if [ ! -f "$BUILD_DIR/build.ninja" ]; then
  cmake -G Ninja -S . -B "$BUILD_DIR" \
    -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_C_COMPILER_LAUNCHER=ccache -DCMAKE_CXX_COMPILER_LAUNCHER=ccache \
    -DMLIR_DIR=/usr/lib/llvm-16/lib/cmake/mlir \
    -DLLVM_EXTERNAL_LIT=/usr/lib/llvm-16/build/utils/lit/lit.py
fi
cmake --build "$BUILD_DIR"

# The official OpenAI client for test/Tools/ktrun-serve-openai.test, pinned;
# without it (no registry) that test reports UNSUPPORTED.
OPENAI_SDK=openai@6.30.1
if [ ! -f "$BUILD_DIR/node-clients/node_modules/openai/package.json" ]; then
  npm install --silent --no-audit --no-fund --prefix "$BUILD_DIR/node-clients" "$OPENAI_SDK" ||
    echo "setup: warning: could not install $OPENAI_SDK from npm; the openai SDK test will be skipped"
fi
