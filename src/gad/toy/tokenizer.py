"""The toy world's tokenizer: pure bytes plus three ChatML special tokens.

Ids 0..255 are the 256 ByteLevel byte-characters in byte order (id == byte value), so any
UTF-8 text encodes and decodes exactly and no merges are learnt. Then:

  256 <|endoftext|>   pad
  257 <|im_start|>    start of a turn
  258 <|im_end|>      end of a turn = eos

The chat template is Qwen2.5's ChatML without the default system prompt, with the assistant
content and its `<|im_end|>` wrapped in `{% generation %}` so that
`apply_chat_template(..., return_assistant_tokens_mask=True)` marks the tokens to learn.
"""

from __future__ import annotations

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD_TOKEN = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, IM_END)
PAD_ID, IM_START_ID, IM_END_ID = 256, 257, 258
VOCAB_SIZE = 259

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _byte_vocab() -> dict[str, int]:
    """The ByteLevel alphabet, id == byte value."""
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+n.
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    mapping: dict[int, str] = {}
    n = 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + n)
            n += 1
    assert set(mapping.values()) == set(pre_tokenizers.ByteLevel.alphabet())
    return {mapping[b]: b for b in range(256)}


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level ChatML tokenizer (vocab 259, pad != eos, left padding)."""
    backend = Tokenizer(models.BPE(vocab=_byte_vocab(), merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD_TOKEN,
        eos_token=IM_END,
        extra_special_tokens=[IM_START],
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    assert tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == [PAD_ID, IM_START_ID, IM_END_ID]
    assert len(tok) == VOCAB_SIZE
    return tok
