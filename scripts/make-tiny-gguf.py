#!/usr/bin/env python3
"""Writes a tiny random-weight llama model as GGUF, for end-to-end tests against a real llama-server.

The model is meant to load and answer fast, not to make sense: 2 layers, 64 dimensions, f16 weights
drawn from a fixed seed (so every run writes the same bytes), and the real 32k-token SentencePiece
vocabulary copied from llama.cpp's ggml-vocab-llama-spm.gguf, so tokenizing any text works. A
ChatML chat template makes /v1/chat/completions usable.

Needs numpy and llama.cpp's gguf-py on PYTHONPATH (scripts/test-backend.sh sets both up).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import gguf

N_LAYERS = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
N_FF = 128
N_CTX = 512
HEAD_DIM = N_EMBD // N_HEAD
SEED = 20240601

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def copy_tokenizer(vocab_path: Path, writer: gguf.GGUFWriter) -> int:
    """Copies every tokenizer.* key as stored (types included); returns the vocabulary size."""
    reader = gguf.GGUFReader(vocab_path)
    n_vocab = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            values = field.contents()
            writer.add_key_value(key, values, vtype, sub_type=field.types[-1])
            if key == gguf.Keys.Tokenizer.LIST:
                n_vocab = len(values)
        else:
            writer.add_key_value(key, field.contents(), vtype)
    if n_vocab == 0:
        raise SystemExit(f"{vocab_path} has no {gguf.Keys.Tokenizer.LIST}")
    return n_vocab


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=Path, required=True, help="ggml-vocab-llama-spm.gguf")
    parser.add_argument("--out", type=Path, required=True, help="the GGUF file to write")
    args = parser.parse_args()

    writer = gguf.GGUFWriter(args.out, arch="llama")
    writer.add_name("corral-tiny-llama")
    writer.add_context_length(N_CTX)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYERS)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    n_vocab = copy_tokenizer(args.vocab, writer)
    writer.add_vocab_size(n_vocab)
    writer.add_chat_template(CHATML_TEMPLATE)

    rng = np.random.default_rng(SEED)

    # numpy shapes are (rows, cols) = GGUF's ne reversed: a weight that maps n_in -> n_out is
    # (n_out, n_in). Small weights keep activations finite through the layers in f16.
    def matrix(n_out: int, n_in: int) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        # ggml's rms_norm multiplies by these in f32.
        return np.ones(N_EMBD, dtype=np.float32)

    t = gguf.MODEL_TENSOR

    # gguf-py names the tensor; llama.cpp looks the weights up under that name + ".weight".
    def add(tensor: gguf.MODEL_TENSOR, data: np.ndarray, bid: int | None = None) -> None:
        writer.add_tensor(gguf.TENSOR_NAMES[tensor].format(bid=bid) + ".weight", data)

    add(t.TOKEN_EMBD, matrix(n_vocab, N_EMBD))
    for bid in range(N_LAYERS):
        add(t.ATTN_NORM, norm(), bid)
        add(t.ATTN_Q, matrix(N_HEAD * HEAD_DIM, N_EMBD), bid)
        add(t.ATTN_K, matrix(N_HEAD_KV * HEAD_DIM, N_EMBD), bid)
        add(t.ATTN_V, matrix(N_HEAD_KV * HEAD_DIM, N_EMBD), bid)
        add(t.ATTN_OUT, matrix(N_EMBD, N_HEAD * HEAD_DIM), bid)
        add(t.FFN_NORM, norm(), bid)
        add(t.FFN_GATE, matrix(N_FF, N_EMBD), bid)
        add(t.FFN_UP, matrix(N_FF, N_EMBD), bid)
        add(t.FFN_DOWN, matrix(N_EMBD, N_FF), bid)
    add(t.OUTPUT_NORM, norm())
    add(t.OUTPUT, matrix(n_vocab, N_EMBD))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {n_vocab} tokens)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
