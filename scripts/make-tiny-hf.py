#!/usr/bin/env python3
"""Writes a tiny random-weight llama model as a Hugging Face folder, the format mlx_lm.server and
vllm serve load: config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
generation_config.json. It talks nonsense, but every code path of loading, tokenizing, chat
templating and generating is real. Made offline (no hub), deterministic, about 1.7 MB.

    python make-tiny-hf.py --out DIR

Needs numpy, safetensors and tokenizers (the MLX test venv has them, see
scripts/test-backends-py.sh). DIR is replaced as a whole: the model is written beside it and
renamed into place, so an interrupted run never leaves a half model that looks complete.
"""

import argparse
import json
import os
import shutil
import tempfile

import numpy as np
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

# ChatML special tokens; <|im_end|> ends a turn, so it is the end-of-sequence token.
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_TARGET = 384
# Small but in shapes both servers accept: vLLM's CPU attention wants a head size of 64.
HIDDEN = 128
HEADS = 2
INTERMEDIATE = 256
LAYERS = 2
MAX_POSITIONS = 512

CORPUS = [
    "Hello, how are you today?",
    "The quick brown fox jumps over the lazy dog.",
    "Corral runs local language model servers and routes requests to them.",
    "A small model says small things, one token at a time.",
    "What is the capital of France? Paris is the capital of France.",
    "Count with me: one, two, three, four, five, six, seven, eight, nine, ten.",
    "The user asks a question and the assistant answers it.",
    "Streaming sends each token as soon as it is ready.",
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def train_tokenizer():
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_TARGET,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    return tokenizer


def weights(vocab, rng):
    def w(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    head_dim = HIDDEN // HEADS
    tensors = {
        "model.embed_tokens.weight": w(vocab, HIDDEN),
        "model.norm.weight": np.ones(HIDDEN, dtype=np.float32),
        "lm_head.weight": w(vocab, HIDDEN),
    }
    for layer in range(LAYERS):
        p = f"model.layers.{layer}."
        tensors[p + "input_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        tensors[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        tensors[p + "self_attn.q_proj.weight"] = w(HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.k_proj.weight"] = w(HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.v_proj.weight"] = w(HEADS * head_dim, HIDDEN)
        tensors[p + "self_attn.o_proj.weight"] = w(HIDDEN, HEADS * head_dim)
        tensors[p + "mlp.gate_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.up_proj.weight"] = w(INTERMEDIATE, HIDDEN)
        tensors[p + "mlp.down_proj.weight"] = w(HIDDEN, INTERMEDIATE)
    return tensors


def write(out):
    tokenizer = train_tokenizer()
    # The embedding has exactly one row per token: a random model may pick any row, and a row
    # without a token would decode to nothing.
    vocab = tokenizer.get_vocab_size()
    bos = tokenizer.token_to_id("<|endoftext|>")
    eos = tokenizer.token_to_id("<|im_end|>")
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "num_key_value_heads": HEADS,
        "head_dim": HIDDEN // HEADS,
        "hidden_act": "silu",
        "max_position_embeddings": MAX_POSITIONS,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "vocab_size": vocab,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    }
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "model_max_length": MAX_POSITIONS,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    generation = {"bos_token_id": bos, "eos_token_id": eos, "max_new_tokens": 16}

    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tiny-hf.", dir=parent)
    try:
        tokenizer.save(os.path.join(tmp, "tokenizer.json"))
        save_file(
            weights(vocab, np.random.default_rng(1234)),
            os.path.join(tmp, "model.safetensors"),
            metadata={"format": "pt"},
        )
        for name, data in [
            ("config.json", config),
            ("tokenizer_config.json", tokenizer_config),
            ("generation_config.json", generation),
            (
                "special_tokens_map.json",
                {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"},
            ),
        ]:
            with open(os.path.join(tmp, name), "w", encoding="utf-8") as f:
                json.dump(data, f, indent=2)
        os.chmod(tmp, 0o755)
        for name in os.listdir(tmp):
            os.chmod(os.path.join(tmp, name), 0o644)
        if os.path.exists(out):
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="the model folder to write")
    args = parser.parse_args()
    write(args.out)


if __name__ == "__main__":
    main()
