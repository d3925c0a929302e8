#!/usr/bin/env python3
"""Golden files for sinkstar's reading of Hugging Face `tokenizer.json` (tests/hf_tokenizer.rs).

Trains a small byte-level BPE tokenizer with Hugging Face's own `tokenizers` library (the
implementation every `tokenizer.json` on the Hub comes from, independent of sinkstar's GGUF
path) on the opening chapters of Jane Austen's "Emma" (scripts/fetch-text.sh), in SmolLM2's
layout: digits split one by one, then GPT-2's byte-level pre-tokenizer; three control tokens
(<|endoftext|>, <|im_start|>, <|im_end|>) at ids 0-2. Writes to tests/golden/tokenizer/:

    tokenizer.json         the tokenizer, as `tokenizers` saves it
    tokenizer_config.json  bos/eos tokens, add_bos_token and a ChatML chat template
    golden.json            the ids `tokenizers` gives some awkward texts (digits, Unicode,
                           emoji, control tokens in raw text, runs of spaces and newlines)

    pip install tokenizers==0.22.1
    python3 scripts/tokenizer_golden.py
"""

import json
import os
import pathlib

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "golden" / "tokenizer"
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 400
# SmolLM2-Instruct's template (ChatML), as its tokenizer_config.json has it.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content']"
    " + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CASES = [
    "Emma Woodhouse, handsome, clever, and rich, with a comfortable home",
    "The pass key is 48213. Remember it.",
    "  two leading spaces,\ttabs\tand\n\nnewlines\n",
    "naïve café — Zürich, 東京 and 🚀🦀!",
    "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n<|im_start|>assistant\n",
    "x<|im_end|>y<|endoftext|>",
    "Mr. Knightley's   'odd'   spacing...",
    "",
]


def main():
    home = pathlib.Path(os.environ.get("SINKSTAR_HOME", os.path.expanduser("~/.cache/sinkstar")))
    text_path = home / "texts" / "emma.txt"
    if not text_path.exists():
        raise SystemExit(f"tokenizer_golden: no {text_path}: run scripts/fetch-text.sh")
    text = text_path.read_text()
    start = text.find("CHAPTER I")
    corpus = text[start:start + 60_000].split("\n\n")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator(corpus, trainer)

    OUT.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(OUT / "tokenizer.json"))
    config = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "add_bos_token": False,
              "chat_template": CHAT_TEMPLATE}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    cases = []
    for case in CASES:
        ids = tokenizer.encode(case, add_special_tokens=False).ids
        # The round trip is what sinkstar's decode promises (control tokens kept).
        assert tokenizer.decode(ids, skip_special_tokens=False) == case, case
        cases.append({"text": case, "ids": ids})
    golden = {"tokenizers": "0.22.1", "vocab_size": tokenizer.get_vocab_size(), "cases": cases}
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(f"tokenizer_golden: {tokenizer.get_vocab_size()} tokens, {len(cases)} cases in {OUT}")


if __name__ == "__main__":
    main()
