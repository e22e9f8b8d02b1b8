# -*- Python -*-
# lit configuration of the compiler tests: kt-opt / ktc / kt-gen-model with FileCheck.
import os
import shutil

import lit.formats
from lit.llvm import llvm_config

config.name = "KT"
config.test_format = lit.formats.ShTest(not llvm_config.use_lit_shell)
config.suffixes = [".mlir", ".test"]
config.test_source_root = os.path.dirname(__file__)
config.test_exec_root = os.path.join(config.kt_obj_root, "test")
# GoogleTest sources, fuzz targets and test inputs live beside the lit suites.
config.excludes = ["CMakeLists.txt", "lit.cfg.py", "lit.site.cfg.py", "unit", "fuzz", "Inputs"]

config.substitutions.append(("%PATH%", config.environment["PATH"]))
config.substitutions.append(("%shared_dir", config.kt_shared_dir))
# Tests that need the real DeepSeek-V3 tokenizer say `REQUIRES: deepseek-tokenizer`.
if os.path.isfile(os.path.join(config.kt_shared_dir, "data", "deepseek-v3-tokenizer",
                               "tokenizer.json")):
    config.available_features.add("deepseek-tokenizer")
# Tests that compile GPU kernels with NVRTC say `REQUIRES: cuda-kernels`.
if config.kt_have_cuda_kernels:
    config.available_features.add("cuda-kernels")

# Tests that run generated CPU code for a target say `REQUIRES: host-avx2` /
# `host-avx512` (this host's /proc/cpuinfo flags).
try:
    with open("/proc/cpuinfo") as cpuinfo:
        flags = next((l.split(":", 1)[1].split() for l in cpuinfo if l.startswith("flags")), [])
except OSError:
    flags = []
if {"avx2", "fma", "f16c", "bmi2", "movbe"} <= set(flags):
    config.available_features.add("host-avx2")
if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= set(flags):
    config.available_features.add("host-avx512")

# The server test with the official openai SDK (setup.sh installs it).
config.kt_openai_sdk = os.path.join(config.kt_obj_root, "node-clients", "node_modules", "openai")
if os.path.isfile(os.path.join(config.kt_openai_sdk, "package.json")) and shutil.which("node"):
    config.available_features.add("openai-sdk")
config.substitutions.append(("%openai_sdk", config.kt_openai_sdk))

llvm_config.with_system_environment(["HOME", "INCLUDE", "LIB", "TMP", "TEMP"])
llvm_config.use_default_substitutions()

tool_dirs = [config.kt_tools_dir, config.llvm_tools_dir]
llvm_config.add_tool_substitutions(["kt-opt", "ktc", "kt-gen-model", "ktrun", "cpu_expert_bench"], tool_dirs)
llvm_config.with_environment("PATH", config.llvm_tools_dir, append_path=True)
llvm_config.with_environment("PATH", config.kt_tools_dir, append_path=True)
