#!/usr/bin/env python3
"""Writes golden.json: reference token ids and chat-template renderings for the
C++ tokenizer tests, produced by Hugging Face `tokenizers` and `transformers`.

Run it where those libraries are installed (the GPU machine has them), with the
DeepSeek-V3 tokenizer directory (tokenizer.json + tokenizer_config.json):

  python3 test/unit/tokenizer/golden/make_golden.py \
      --tokenizer shared/data/deepseek-v3-tokenizer \
      --strings test/unit/tokenizer/golden/strings.json \
      --chats test/unit/tokenizer/golden/chats.json \
      --out test/unit/tokenizer/golden/golden.json

For every string it records
  ids           tokenizers' encode(text, add_special_tokens=False): special and
                added tokens spelled in the text are matched (the C++ side's
                EncodeOptions::parseSpecial = true);
  ids_plain     the same tokenizer without its special added tokens, so that
                their spelling is ordinary text (parseSpecial = false; added
                tokens that are neither special nor look special, like R1's
                <think>, stay, as the C++ side keeps matching them);
  ids_with_bos  ids with the beginning-of-sentence token in front, as
                tokenizer_config.json's add_bos_token asks.
For every conversation, with DeepSeek-V3's template (tokenizer_config.json) and
DeepSeek-R1's (V3's with R1's two changes applied, below), it records
transformers' apply_chat_template text and that text's ids from `tokenizers`.
"""
import argparse
import json
import os
import sys

import tokenizers
import transformers
from tokenizers import Tokenizer
from transformers import AutoTokenizer


def looks_special(content):
    """llama.cpp's converter rule (does_token_look_special), mirrored in C++."""
    if content in ("<pad>", "<mask>", "<2mass>", "[@BOS@]"):
        return True
    if content.startswith("<|") and content.endswith("|>"):
        return True
    if content.startswith("<\uff5c") and content.endswith("\uff5c>"):
        return True
    return content.startswith("<unused") and content.endswith(">")


def plain_text_tokenizer(tokenizer_json_path):
    with open(tokenizer_json_path, encoding="utf-8") as f:
        data = json.load(f)
    data["added_tokens"] = [
        token for token in data["added_tokens"]
        if not token["special"] and not looks_special(token["content"])
    ]
    return Tokenizer.from_str(json.dumps(data))


def replace_once(text, old, new, what):
    if text.count(old) != 1:
        sys.exit(f"make_golden.py: the V3 template does not contain {what} exactly once; "
                 "cannot derive the R1 template")
    return text.replace(old, new)


def r1_template(v3_template):
    """DeepSeek-R1's published template is V3's with two changes: an assistant
    turn keeps only what follows its last </think>, and the generation prompt
    opens the reasoning block."""
    template = replace_once(
        v3_template,
        "{{'<\uff5cAssistant\uff5c>' + message['content'] + '<\uff5cend\u2581of\u2581sentence\uff5c>'}}",
        "{% set content = message['content'] %}{% if '</think>' in content %}"
        "{% set content = content.split('</think>')[-1] %}{% endif %}"
        "{{'<\uff5cAssistant\uff5c>' + content + '<\uff5cend\u2581of\u2581sentence\uff5c>'}}",
        "the assistant turn")
    return replace_once(
        template,
        "{{'<\uff5cAssistant\uff5c>'}}{% endif %}",
        "{{'<\uff5cAssistant\uff5c><think>\\n'}}{% endif %}",
        "the generation prompt")


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True,
                        help="directory with tokenizer.json and tokenizer_config.json")
    parser.add_argument("--strings", required=True, help="JSON array of input strings")
    parser.add_argument("--chats", required=True, help="JSON array of conversations")
    parser.add_argument("--out", required=True, help="golden JSON file to write")
    args = parser.parse_args()

    tokenizer_json = os.path.join(args.tokenizer, "tokenizer.json")
    fast = Tokenizer.from_file(tokenizer_json)
    plain = plain_text_tokenizer(tokenizer_json)
    hf = AutoTokenizer.from_pretrained(args.tokenizer)
    # Ids come from `tokenizers` on tokenizer.json as it is. transformers 5
    # rebuilds this tokenizer from tokenizer_config.json's tokenizer_class
    # (LlamaTokenizerFast) with another pre-tokenizer, and its ids differ from
    # the model's (seen: "Hello world!" -> [42, 6629, 10030, 3] instead of
    # [0, 19923, 2058, 3]); transformers only renders the chat template.
    with open(os.path.join(args.tokenizer, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    bos = config["bos_token"]
    bos_id = fast.token_to_id(bos["content"] if isinstance(bos, dict) else bos)
    add_bos = bool(config.get("add_bos_token", False))
    with open(args.strings, encoding="utf-8") as f:
        strings = json.load(f)
    with open(args.chats, encoding="utf-8") as f:
        chats = json.load(f)

    encodings = []
    for text in strings:
        ids = fast.encode(text, add_special_tokens=False).ids
        if fast.decode(ids, skip_special_tokens=False) != text:
            print(f"note: tokenizers does not round-trip {text[:40]!r}", file=sys.stderr)
        encodings.append({
            "text": text,
            "ids": ids,
            "ids_plain": plain.encode(text, add_special_tokens=False).ids,
            "ids_with_bos": ([bos_id] if add_bos else []) + ids,
        })

    templates = {"v3": hf.chat_template, "r1": r1_template(hf.chat_template)}
    renderings = []
    for chat in chats:
        for name, template in templates.items():
            text = hf.apply_chat_template(chat["messages"], chat_template=template, tokenize=False,
                                          add_generation_prompt=chat["add_generation_prompt"])
            renderings.append({
                "name": chat["name"],
                "template": name,
                "messages": chat["messages"],
                "add_generation_prompt": chat["add_generation_prompt"],
                "text": text,
                "ids": fast.encode(text, add_special_tokens=False).ids,
            })

    # One entry per line keeps the file diffable.
    with open(args.out, "w", encoding="utf-8") as out:
        out.write('{"generator": ' + json.dumps({
            "script": "test/unit/tokenizer/golden/make_golden.py",
            "tokenizers": tokenizers.__version__,
            "transformers": transformers.__version__,
        }) + ',\n"encodings": [\n')
        out.write(",\n".join(json.dumps(e, ensure_ascii=False) for e in encodings))
        out.write('\n],\n"chats": [\n')
        out.write(",\n".join(json.dumps(r, ensure_ascii=False) for r in renderings))
        out.write("\n]}\n")
    print(f"wrote {args.out}: {len(encodings)} strings, {len(renderings)} chat renderings "
          f"(tokenizers {tokenizers.__version__}, transformers {transformers.__version__})")


if __name__ == "__main__":
    main()
