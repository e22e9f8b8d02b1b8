#!/usr/bin/env python3
"""Writes the golden fixtures: Hugging Face transformers' outputs for the
models of test/golden/cases.json, the numerical oracle the project's runtime
is compared to (docs/golden-fixtures.md).

Runs where torch and transformers are installed (the GPU machine; the models
are small, so everything runs on the CPU):

    python3 test/golden/make_golden.py --cases test/golden/cases.json \\
        --models build-golden/golden-models/hf --out $OUT/fixtures

For each case it loads MODELS/<case> (config.json + model.safetensors written
by kt-export-hf) into DeepseekV3ForCausalLM (DeepseekV2ForCausalLM for
softmax gating) with eager attention, checks that every weight of the model
is exactly the file's, and writes OUT/<case>.json: for each prompt the logits
at every prompt position, 32 greedy tokens (argmax, KV cache) and the logits of
some decode steps. The reference runs in float64; a float32 run and a run
without the cache are compared to it and recorded as stability checks.
"""
import argparse
import datetime
import json
import math
import os
import platform
import re
import struct
import sys

# The machine has no network: never let transformers try the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

FIXTURE_FORMAT = "kt-golden-fixture"
FIXTURE_VERSION = 1
MAX_FIXTURE_BYTES = 200_000
MODEL_CLASSES = {"deepseek_v3": "DeepseekV3ForCausalLM", "deepseek_v2": "DeepseekV2ForCausalLM"}


def fail(message):
    print(f"make_golden: error: {message}", file=sys.stderr)
    sys.exit(1)


def warn(message):
    print(f"make_golden: warning: {message}", file=sys.stderr)


try:
    import torch
except ImportError as error:
    fail(f"cannot import torch ({error}); run this script where PyTorch is installed "
         "(the GPU machine's python3)")
try:
    import transformers
except ImportError as error:
    fail(f"cannot import transformers ({error}); run this script where transformers is installed "
         "(the GPU machine has 5.x)")


def major_version(text):
    match = re.match(r"(\d+)", text)
    return int(match.group(1)) if match else 0


# --- safetensors, read without the safetensors package ------------------------

def read_safetensors(path):
    """name -> float32 tensor; checks the layout kt-export-hf writes."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 8:
        fail(f"{path}: too short for a safetensors file; re-export the model")
    (header_length,) = struct.unpack("<Q", data[:8])
    if 8 + header_length > len(data):
        fail(f"{path}: the header length {header_length} exceeds the file; re-export the model")
    header = json.loads(data[8:8 + header_length].decode("utf-8"))
    start = 8 + header_length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if entry["dtype"] != "F32":
            fail(f"{path}: tensor {name} is {entry['dtype']}; kt-export-hf writes F32 only")
        begin, end = entry["data_offsets"]
        count = math.prod(entry["shape"])
        if end - begin != 4 * count or start + end > len(data):
            fail(f"{path}: tensor {name} has inconsistent data offsets; re-export the model")
        values = torch.frombuffer(bytearray(data[start + begin:start + end]), dtype=torch.float32)
        tensors[name] = values.reshape(entry["shape"]) if entry["shape"] else values.reshape(())
    return tensors


# --- loading ------------------------------------------------------------------

def expected_state(state, tensors, model_dir):
    """For each entry of a model's state dict, the tensor the file gives it; every
    file tensor must be used. `state` maps names to tensors of the model's shapes."""
    expected, used = {}, set()
    for name, value in state.items():
        if name in tensors:
            tensor = tensors[name]
            used.add(name)
        else:
            # transformers 5 stores each layer's experts as 3-D tensors: gate_up_proj
            # [experts, 2 * ffn, hidden] (gate rows first) and down_proj [experts, hidden, ffn].
            match = re.fullmatch(r"(.*\.mlp\.experts)\.(gate_up_proj|down_proj)", name)
            if not match:
                if name.endswith("inv_freq"):
                    continue  # rotary frequencies, computed from config.json
                fail(f"{model_dir}: model weight {name} has no tensor in model.safetensors")
            prefix, kind = match.groups()
            count = value.shape[0]

            def stacked(part):
                names = [f"{prefix}.{e}.{part}.weight" for e in range(count)]
                missing = [n for n in names if n not in tensors]
                if missing:
                    fail(f"{model_dir}: model.safetensors lacks {missing[0]}")
                used.update(names)
                return torch.stack([tensors[n] for n in names])

            if kind == "gate_up_proj":
                tensor = torch.cat([stacked("gate_proj"), stacked("up_proj")], dim=1)
            else:
                tensor = stacked("down_proj")
        if tuple(value.shape) != tuple(tensor.shape):
            if value.dim() == 3 and tuple(value.shape) == tuple(tensor.transpose(1, 2).shape):
                tensor = tensor.transpose(1, 2).contiguous()
            else:
                fail(f"{model_dir}: {name} has shape {tuple(value.shape)} in the model but "
                     f"{tuple(tensor.shape)} in model.safetensors")
        expected[name] = tensor
    unused = sorted(set(tensors) - used)
    if unused:
        fail(f"{model_dir}: model.safetensors holds {len(unused)} tensor(s) the model does not use, "
             f"e.g. {unused[0]}")
    return expected


def verify_weights(model, tensors, model_dir):
    """Every parameter and buffer of the state dict equals the file's tensor."""
    state = model.state_dict()
    for name, tensor in expected_state(state, tensors, model_dir).items():
        value = state[name].detach().to(torch.float64)
        if not torch.equal(value, tensor.to(torch.float64)):
            difference = (value - tensor.to(torch.float64)).abs().max()
            fail(f"{model_dir}: {name} differs from model.safetensors (max |difference| "
                 f"{float(difference):.3g}); transformers did not load the weights as written")


def from_pretrained(model_class, model_dir, dtype):
    """transformers' own loading; returns (model, None) or (None, why it was not exact)."""
    kwargs = {"attn_implementation": "eager", "output_loading_info": True}
    # transformers 5 renamed torch_dtype to dtype.
    kwargs["dtype" if major_version(transformers.__version__) >= 5 else "torch_dtype"] = dtype
    # Ask for the plain per-expert loop where transformers offers other expert
    # kernels (5.x); versions without the choice refuse the argument.
    try:
        model, info = model_class.from_pretrained(model_dir, experts_implementation="eager",
                                                  **kwargs)
    except Exception as error:  # noqa: BLE001 - any refusal of the argument
        if "experts_implementation" not in str(error):
            return None, f"{type(error).__name__}: {error}"
        try:
            model, info = model_class.from_pretrained(model_dir, **kwargs)
        except Exception as retry_error:  # noqa: BLE001
            return None, f"{type(retry_error).__name__}: {retry_error}"
    problems = {key: value for key, value in info.items() if value}
    if problems:
        return None, f"loading was not exact: {problems}"
    return model, None


def construct_and_load(model_class, model_dir, dtype, tensors):
    """The model built from config.json, its state dict loaded strictly from the file."""
    config = model_class.config_class.from_pretrained(model_dir)
    for attribute in ("_attn_implementation", "_experts_implementation"):
        try:
            setattr(config, attribute, "eager")
        except Exception:  # noqa: BLE001 - versions without the attribute
            pass
    model = model_class(config).to(dtype)
    state = model.state_dict()
    expected = expected_state(state, tensors, model_dir)
    result = model.load_state_dict({name: tensor.to(dtype) for name, tensor in expected.items()},
                                   strict=False)
    missing = [name for name in result.missing_keys if not name.endswith("inv_freq")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"missing keys {missing}, unexpected keys {result.unexpected_keys}")
    return model


def load_model(model_dir, model_type, dtype, tensors):
    """(model in eval mode, how it was loaded)."""
    class_name = MODEL_CLASSES.get(model_type)
    if class_name is None:
        fail(f"{model_dir}/config.json: model_type {model_type!r} is not one kt-export-hf writes "
             f"({', '.join(MODEL_CLASSES)})")
    model_class = getattr(transformers, class_name, None)
    if model_class is None:
        fail(f"transformers {transformers.__version__} has no {class_name}; use a version that "
             "has it (DeepseekV3 arrived in 4.5x, the GPU machine has 5.x)")
    model, problem = from_pretrained(model_class, model_dir, dtype)
    loader = "from_pretrained"
    if model is None:
        # The per-expert names are those of DeepSeek's checkpoints, which transformers
        # converts while loading; should that fail, build the model and load the
        # state dict (fused here the same way) directly, strictly.
        warn(f"{model_dir}: {class_name}.from_pretrained did not load the checkpoint exactly "
             f"({problem}); building the model from config.json and loading its state dict "
             "directly")
        try:
            model = construct_and_load(model_class, model_dir, dtype, tensors)
        except Exception as error:  # noqa: BLE001
            fail(f"{model_dir}: loading {class_name} failed both through from_pretrained "
                 f"({problem}) and directly ({type(error).__name__}: {error})")
        loader = "load_state_dict"
    model.eval()
    verify_weights(model, tensors, model_dir)
    return model, loader


# --- running ------------------------------------------------------------------

def relative_l2(value, reference):
    value = value.to(torch.float64)
    reference = reference.to(torch.float64)
    norm = float(torch.linalg.vector_norm(reference))
    return float(torch.linalg.vector_norm(value - reference)) / (norm if norm > 0 else 1.0)


@torch.no_grad()
def greedy_run(model, prompt, new_tokens, decode_steps):
    """Prefill logits, greedy tokens (argmax; ties go to the lowest id), decode-step
    logits, the smallest top-1/top-2 gap met on the way."""
    output = model(input_ids=torch.tensor([prompt], dtype=torch.long), use_cache=True)
    prompt_logits = output.logits[0].to(torch.float64)
    cache = output.past_key_values
    logits = prompt_logits[-1]
    tokens, step_logits, margins = [], {}, []
    for step in range(new_tokens):
        if step > 0:
            output = model(input_ids=torch.tensor([[tokens[-1]]], dtype=torch.long),
                           past_key_values=cache, use_cache=True)
            cache = output.past_key_values
            logits = output.logits[0, -1].to(torch.float64)
            if step in decode_steps:
                step_logits[step] = logits
        top = torch.topk(logits, 2).values
        margins.append(float(top[0] - top[1]))
        tokens.append(int(torch.argmax(logits)))
    return prompt_logits, tokens, step_logits, margins


@torch.no_grad()
def full_sequence_logits(model, sequence):
    return model(input_ids=torch.tensor([sequence], dtype=torch.long), use_cache=False).logits[0]


@torch.no_grad()
def generate_tokens(model, prompt, new_tokens):
    eos = model.config.eos_token_id
    pad = model.config.pad_token_id
    output = model.generate(torch.tensor([prompt], dtype=torch.long), max_new_tokens=new_tokens,
                            do_sample=False, num_beams=1, use_cache=True,
                            pad_token_id=pad if pad is not None else eos)
    return output[0, len(prompt):].tolist()


def rounded(values, digits):
    return [float(f"{v:.{digits}g}") for v in values]


def rounded_rows(matrix, digits):
    return [rounded(row, digits) for row in matrix.tolist()]


def run_case(case, settings, models_root, skip_generate):
    name = case["name"]
    model_dir = os.path.join(models_root, name)
    for required in ("config.json", "model.safetensors", "kt-case.json"):
        if not os.path.isfile(os.path.join(model_dir, required)):
            fail(f"{model_dir}/{required} is missing; run test/golden/make_models.py first and "
                 "pass its hf/ folder as --models")
    with open(os.path.join(model_dir, "kt-case.json")) as f:
        record = json.load(f)
    if record.get("kt_gen_model") != case["kt_gen_model"]:
        fail(f"{model_dir} was made by `{record.get('kt_gen_model')}` but cases.json now says "
             f"`{case['kt_gen_model']}`; rerun make_models.py")
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    model_type = config["model_type"]
    vocab = config["vocab_size"]

    tensors = read_safetensors(os.path.join(model_dir, "model.safetensors"))
    reference, loader = load_model(model_dir, model_type, torch.float64, tensors)
    single, _ = load_model(model_dir, model_type, torch.float32, tensors)

    new_tokens = settings["greedy_tokens"]
    decode_steps = [s for s in settings["decode_logit_steps"] if 0 < s < new_tokens]
    eos = config.get("eos_token_id")
    prompts = []
    for prompt in case["prompts"]:
        ids = prompt["token_ids"]
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            fail(f"case {name}, prompt {prompt['name']}: token ids {bad} are outside the "
                 f"vocabulary of {vocab}")
        prompt_logits, tokens, step_logits, margins = greedy_run(reference, ids, new_tokens,
                                                                 decode_steps)
        if prompt_logits.shape != (len(ids), vocab):
            fail(f"case {name}: logits have shape {tuple(prompt_logits.shape)}, expected "
                 f"({len(ids)}, {vocab})")

        # The cache path against one pass over the whole sequence.
        full = full_sequence_logits(reference, ids + tokens[:-1]).to(torch.float64)
        positions = [len(ids) - 1 + s for s in range(new_tokens)]
        full_tokens = [int(torch.argmax(full[p])) for p in positions]
        if full_tokens != tokens:
            fail(f"case {name}, prompt {prompt['name']}: greedy tokens with the KV cache {tokens} "
                 f"differ from one pass without it {full_tokens}")
        cache_vs_full = max([relative_l2(prompt_logits, full[:len(ids)])] +
                            [relative_l2(step_logits[s], full[len(ids) - 1 + s])
                             for s in decode_steps])

        # float32 against float64: how well-conditioned this prompt is.
        logits32, tokens32, steps32, _ = greedy_run(single, ids, new_tokens, decode_steps)
        checks = {
            "min_top2_margin": min(margins),
            "cache_vs_full_rel_l2": cache_vs_full,
            "float32_prompt_rel_l2": relative_l2(logits32, prompt_logits),
            "float32_greedy_identical": tokens32 == tokens,
        }
        if tokens32 == tokens:
            checks["float32_decode_rel_l2"] = max(
                [relative_l2(steps32[s], step_logits[s]) for s in decode_steps] or [0.0])
        else:
            warn(f"case {name}, prompt {prompt['name']}: float32 greedy tokens {tokens32} differ "
                 f"from float64 {tokens}; this prompt is ill-conditioned, consider another")
        if checks["float32_prompt_rel_l2"] > 1e-5:
            warn(f"case {name}, prompt {prompt['name']}: float32 and float64 logits differ by "
                 f"{checks['float32_prompt_rel_l2']:.2e} (relative L2); a routing decision may "
                 "sit on a tie")
        if not skip_generate:
            generated = generate_tokens(reference, ids, new_tokens)
            eos_ids = eos if isinstance(eos, list) else [eos]
            identical = generated == tokens[:len(generated)] and (
                len(generated) == new_tokens or (generated and generated[-1] in eos_ids))
            if not identical:
                fail(f"case {name}, prompt {prompt['name']}: model.generate(do_sample=False) gave "
                     f"{generated}, the greedy loop {tokens}")
            checks["generate_identical"] = True
        prompts.append({"name": prompt["name"], "text": prompt.get("text"), "token_ids": ids,
                        "prompt_logits": prompt_logits, "greedy_tokens": tokens,
                        "greedy_margins": margins,
                        "decode_steps": decode_steps,
                        "decode_logits": torch.stack([step_logits[s] for s in decode_steps])
                        if decode_steps else torch.zeros((0, vocab), dtype=torch.float64),
                        "checks": checks})
    return record, config, loader, prompts


def fixture_text(case, record, config, loader, prompts, digits, tolerance):
    fixture = {
        "format": FIXTURE_FORMAT,
        "version": FIXTURE_VERSION,
        "case": case["name"],
        "covers": case.get("covers", []),
        "kt_gen_model": case["kt_gen_model"],
        "gguf_sha256": record["gguf_sha256"],
        "model_type": config["model_type"],
        "vocab_size": config["vocab_size"],
        "eos_token_id": config.get("eos_token_id"),
        "tolerance": {"logits_rel_l2": tolerance, "greedy_tokens": "identical"},
        "reference": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "class": MODEL_CLASSES[config["model_type"]],
            "dtype": "float64",
            "attn_implementation": "eager",
            "loaded_by": loader,
            "device": "cpu",
            "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
        "float_significant_digits": digits,
        "conventions": {
            "prompt_logits": "row i: the logits after prompt token i (predicting token i + 1)",
            "greedy_tokens": "argmax (ties to the lowest id) with the KV cache; token 0 comes from "
                             "the last prompt row; generation does not stop at EOS",
            "decode_logits": "row k: the logits of decode step decode_steps[k], after feeding "
                             "greedy_tokens[step - 1], which predict greedy_tokens[step]",
            "greedy_margins": "per greedy token, the gap between the largest and second largest "
                              "logit it was chosen from",
            "checks": "min_top2_margin: the smallest greedy margin; *_rel_l2: ||x - ref|| / ||ref|| "
                      "against the float64 reference",
        },
        "prompts": [dict(({"text": p["text"]} if p["text"] is not None else {}), **{
            "name": p["name"],
            "token_ids": p["token_ids"],
            "greedy_tokens": p["greedy_tokens"],
            "greedy_margins": rounded(p["greedy_margins"], 3),
            "checks": {k: (float(f"{v:.3g}") if isinstance(v, float) else v)
                       for k, v in p["checks"].items()},
            "decode_steps": p["decode_steps"],
            "prompt_logits": rounded_rows(p["prompt_logits"], digits),
            "decode_logits": rounded_rows(p["decode_logits"], digits),
        }) for p in prompts],
    }
    text = json.dumps(fixture, indent=1)
    # One line per row of numbers keeps the file small and readable.
    text = re.sub(r"\[\s*([-+0-9.eE,\s]+?)\s*\]",
                  lambda m: "[" + ",".join(x.strip() for x in m.group(1).split(",")) + "]", text)
    return text + "\n"


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=os.path.join(here, "cases.json"))
    parser.add_argument("--models", required=True,
                        help="the hf/ folder make_models.py wrote (one directory per case)")
    parser.add_argument("--out", required=True, help="directory for <case>.json fixtures")
    parser.add_argument("--only", nargs="*", default=None, metavar="CASE")
    parser.add_argument("--skip-generate-check", action="store_true",
                        help="do not compare the greedy loop with model.generate()")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = parser.parse_args()

    with open(args.cases) as f:
        settings = json.load(f)
    cases = settings["cases"]
    names = [case["name"] for case in cases]
    for name in args.only or []:
        if name not in names:
            fail(f"no case named {name!r} in {args.cases}; cases: {', '.join(names)}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    os.makedirs(args.out, exist_ok=True)
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, "
          f"python {platform.python_version()}", flush=True)

    for case in cases:
        if args.only and case["name"] not in args.only:
            continue
        record, config, loader, prompts = run_case(case, settings, args.models,
                                                   args.skip_generate_check)
        tolerance = case["tolerance"]["logits_rel_l2"]
        for digits in (8, 7):
            text = fixture_text(case, record, config, loader, prompts, digits, tolerance)
            if len(text.encode()) <= MAX_FIXTURE_BYTES:
                break
        else:
            fail(f"case {case['name']}: the fixture needs {len(text.encode())} bytes even with 7 "
                 f"digits (limit {MAX_FIXTURE_BYTES}); use shorter prompts or fewer "
                 "decode_logit_steps")
        path = os.path.join(args.out, case["name"] + ".json")
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
        summary = "; ".join(
            f"{p['name']}: tokens {p['greedy_tokens'][:6]}..., margin "
            f"{p['checks']['min_top2_margin']:.3g}, f32 rel {p['checks']['float32_prompt_rel_l2']:.1e}"
            for p in prompts)
        print(f"{path}: {len(text.encode())} bytes; {summary}", flush=True)


if __name__ == "__main__":
    main()
