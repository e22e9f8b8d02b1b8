#!/usr/bin/env python3
"""Regenerates the golden cases' models: for each case of cases.json, runs its
kt-gen-model command (GGUF) and kt-export-hf (Hugging Face config.json +
model.safetensors in f32).

    python3 test/golden/make_models.py --bin build-golden/bin --out build-golden/golden-models

writes OUT/gguf/<case>.gguf and OUT/hf/<case>/{config.json, model.safetensors,
kt-case.json}. OUT/hf is what make_golden.py reads on the machine with
transformers; kt-case.json records the command and the GGUF's sha256 so the
fixtures can name the exact model they describe. Standard library only.
"""
import argparse
import hashlib
import json
import os
import shlex
import subprocess
import sys

# What travels to the device machine (the working tree and carried paths) is
# limited to 64 MiB in all; leave room for the repository itself.
TRANSFER_WARNING_BYTES = 56 * 1024 * 1024


def fail(message):
    print(f"make_models: error: {message}", file=sys.stderr)
    sys.exit(1)


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run(command):
    print("+ " + " ".join(shlex.quote(part) for part in command), flush=True)
    result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if result.returncode != 0:
        fail(f"{os.path.basename(command[0])} exited with {result.returncode}:\n{result.stdout}")


def directory_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, name)) for name in files)
    return total


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin", required=True,
                        help="directory holding kt-gen-model and kt-export-hf (BUILD/bin)")
    parser.add_argument("--cases", default=os.path.join(here, "cases.json"))
    parser.add_argument("--out", required=True, help="output directory (gguf/ and hf/ inside)")
    parser.add_argument("--only", nargs="*", default=None, metavar="CASE",
                        help="only these cases (default: all)")
    args = parser.parse_args()

    generator = os.path.join(args.bin, "kt-gen-model")
    exporter = os.path.join(args.bin, "kt-export-hf")
    for tool in (generator, exporter):
        if not os.access(tool, os.X_OK):
            fail(f"{tool} not found; build it with `ninja -C BUILD kt-gen-model kt-export-hf` "
                 "and pass --bin BUILD/bin")
    with open(args.cases) as f:
        cases = json.load(f)["cases"]
    names = [case["name"] for case in cases]
    for name in args.only or []:
        if name not in names:
            fail(f"no case named {name!r} in {args.cases}; cases: {', '.join(names)}")
    selected = [case for case in cases if not args.only or case["name"] in args.only]

    gguf_dir = os.path.join(args.out, "gguf")
    hf_root = os.path.join(args.out, "hf")
    os.makedirs(gguf_dir, exist_ok=True)
    os.makedirs(hf_root, exist_ok=True)
    for case in selected:
        name = case["name"]
        command = shlex.split(case["kt_gen_model"])
        if not command or command[0] != "kt-gen-model":
            fail(f"case {name}: kt_gen_model must start with 'kt-gen-model'")
        gguf = os.path.join(gguf_dir, name + ".gguf")
        hf_dir = os.path.join(hf_root, name)
        run([generator] + command[1:] + ["-o", gguf, "--quiet"])
        run([exporter, gguf, "-o", hf_dir, "--quiet"])
        record = {
            "case": name,
            "kt_gen_model": case["kt_gen_model"],
            "gguf_sha256": sha256_of(gguf),
            "gguf_bytes": os.path.getsize(gguf),
        }
        with open(os.path.join(hf_dir, "kt-case.json"), "w") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        print(f"{name}: {record['gguf_bytes']} bytes of GGUF, "
              f"{directory_bytes(hf_dir)} bytes exported, sha256 {record['gguf_sha256'][:16]}...")

    total = directory_bytes(hf_root)
    print(f"{hf_root}: {total / 1e6:.1f} MB for {len(selected)} case(s)")
    if total > TRANSFER_WARNING_BYTES:
        print("make_models: warning: that is more than the device machine takes along with the "
              "repository (64 MiB in all); run make_golden.py in batches with --only",
              file=sys.stderr)


if __name__ == "__main__":
    main()
