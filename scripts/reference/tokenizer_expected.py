"""Produce the SmolLM2 tokenizer fixtures for test/tokenizer.test.ts with the Python oracle.

Usage: /work/pyref/bin/python scripts/reference/tokenizer_expected.py [TOKENIZER_DIR] [SMOLLM2_GGUF]

Writes (under test/fixtures/tokenizer/):
  smollm2_tokenizer_config.json  a tokenizer_config.json for the shared SmolLM2 tokenizer.json, which
                                 ships without one; its special tokens and chat template are taken
                                 from the SmolLM2 GGUF metadata (converted from the original config)
  smollm2_expected.json          ids from transformers' AutoTokenizer for every string in strings.json
                                 (with and without special tokens), cross-checked against the Rust
                                 `tokenizers` library, plus apply_chat_template renderings

Only for producing committed expected values; never a runtime dependency.
"""

import json
import os
import shutil
import sys
import tempfile

from gguf import GGUFReader
from tokenizers import Tokenizer as RustTokenizer
from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "test", "fixtures", "tokenizer")
tok_dir = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/models/SmolLM2-135M-Instruct-tokenizer"
gguf_path = sys.argv[2] if len(sys.argv) > 2 else os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def field(reader, key):
    return reader.fields[key].contents()


reader = GGUFReader(gguf_path)
tokens = field(reader, "tokenizer.ggml.tokens")
config = {
    "add_prefix_space": False,
    "bos_token": tokens[field(reader, "tokenizer.ggml.bos_token_id")],
    "eos_token": tokens[field(reader, "tokenizer.ggml.eos_token_id")],
    "pad_token": tokens[field(reader, "tokenizer.ggml.padding_token_id")],
    "unk_token": tokens[field(reader, "tokenizer.ggml.unknown_token_id")],
    "clean_up_tokenization_spaces": False,
    "model_max_length": 8192,
    # GPT2Tokenizer (the class named by the original repo) makes transformers 5.x rebuild the
    # pipeline without the Digits pre-tokenizer of tokenizer.json, so non-ASCII digits then split
    # differently from the Rust tokenizers library and llama.cpp; the generic class keeps
    # tokenizer.json exactly as the model was trained with.
    "tokenizer_class": "PreTrainedTokenizerFast",
    "chat_template": field(reader, "tokenizer.chat_template"),
}
with open(os.path.join(FIX, "smollm2_tokenizer_config.json"), "w") as f:
    json.dump(config, f, ensure_ascii=False, indent=1)
    f.write("\n")

with open(os.path.join(FIX, "strings.json")) as f:
    strings = json.load(f)["strings"]

with tempfile.TemporaryDirectory() as tmp:
    for name in ("tokenizer.json", "config.json"):
        shutil.copy(os.path.join(tok_dir, name), tmp)
    shutil.copy(os.path.join(FIX, "smollm2_tokenizer_config.json"), os.path.join(tmp, "tokenizer_config.json"))
    tok = AutoTokenizer.from_pretrained(tmp)

rust = RustTokenizer.from_file(os.path.join(tok_dir, "tokenizer.json"))

plain, special = [], []
for s in strings:
    ids = tok.encode(s, add_special_tokens=False)
    ids_special = tok.encode(s, add_special_tokens=True)
    if ids != rust.encode(s, add_special_tokens=False).ids:
        raise SystemExit(f"transformers and tokenizers disagree on {s!r}")
    plain.append(ids)
    special.append(ids_special)

chats = {
    "one_user_turn": [{"role": "user", "content": "What is the capital of France?"}],
    "system_and_user": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Name a prime number."},
    ],
    "multi_turn": [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "Colour of the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
    ],
}
rendered = {}
for name, messages in chats.items():
    rendered[name] = {
        "messages": messages,
        "with_generation_prompt": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
        "without_generation_prompt": tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False),
    }

out = {
    "source": "transformers %s AutoTokenizer on the SmolLM2-135M-Instruct tokenizer.json" % __import__("transformers").__version__,
    "ids": plain,
    "ids_with_special_tokens": special,
    "chat": rendered,
}
with open(os.path.join(FIX, "smollm2_expected.json"), "w") as f:
    json.dump(out, f, ensure_ascii=False)
    f.write("\n")
print(f"wrote {len(strings)} strings, {len(chats)} chats")
