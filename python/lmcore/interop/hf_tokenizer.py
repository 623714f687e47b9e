"""lmcore's tokenizers as Hugging Face ``tokenizers`` JSON, and back.

Export: a char vocabulary becomes a ``WordLevel`` model over a pre-tokenizer that isolates every
character (so each character is one token, newline and space included, with lmcore's ids), with a
decoder that joins tokens without spaces; a byte-level BPE is its own ``tokenizers`` JSON. Special
tokens (the chat markers) are added tokens with lmcore's ids, after the ordinary vocabulary.
``tokenizer_config.json`` says which class loads it (no custom code), keeps decoding exact
(``clean_up_tokenization_spaces: false``) and carries the chat template.

Import: a ``tokenizer.json`` of either shape becomes a ``CharTokenizer`` or a ``BpeTokenizer``;
anything else is refused with a ``ValueError`` saying what it is.
"""

from __future__ import annotations

import json
from typing import Any

from lmcore.conversation.template import CHAT_SPECIALS, CHAT_TEMPLATE, END
from lmcore.tokenizer import Tokenizer
from lmcore.tokenizer.base import LONE_SURROGATE
from lmcore.tokenizer.bpe import BpeTokenizer, hf_bpe
from lmcore.tokenizer.char import CharTokenizer

# Every character on its own: [\s\S] also matches a newline, which "." would not.
_ONE_CHAR = r"[\s\S]"


def hf_tokenizer(tok: Tokenizer) -> Any:
    """A ``tokenizers.Tokenizer`` that encodes and decodes as ``tok`` does, specials included."""
    from tokenizers import Regex, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HfTokenizer

    if isinstance(tok, CharTokenizer):
        if LONE_SURROGATE.search(tok.chars):
            raise ValueError("the char vocabulary holds a lone surrogate, which a tokenizer.json cannot store")
        hf = HfTokenizer(models.WordLevel({c: i for i, c in enumerate(tok.chars)}, unk_token="<unk>"))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(_ONE_CHAR), "isolated")
        hf.decoder = decoders.Fuse()
    else:
        hf = HfTokenizer.from_str(tok.to_dict()["tokenizer_json"])
    if tok.specials:
        hf.add_special_tokens(list(tok.specials))
    ids = [hf.token_to_id(s) for s in tok.specials]
    if ids != [tok.special_id(s) for s in tok.specials] or hf.get_vocab_size(with_added_tokens=True) != tok.vocab_size:
        raise ValueError("the exported tokenizer does not keep lmcore's token ids")  # (a bug, never a user's input)
    return hf


def tokenizer_config(tok: Tokenizer, max_length: int) -> dict[str, Any]:
    """``tokenizer_config.json``: the fast tokenizer class, exact decoding, the chat template."""
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": max_length,
    }
    if tok.chat_template == CHAT_TEMPLATE and END in tok.specials:
        config.update(chat_template=CHAT_TEMPLATE, eos_token=END)
    return config


def eos_token_id(tok: Tokenizer) -> int | None:
    """The token that ends a reply (a chat model's ``<|end|>``), or None: plain text never ends."""
    return tok.special_id(END) if tok.chat_template == CHAT_TEMPLATE and END in tok.specials else None


def _added_specials(spec: dict[str, Any], base: int) -> list[str]:
    """The added tokens after the ordinary vocabulary, which must have ids base, base + 1, ..."""
    added = sorted((a["id"], a["content"]) for a in spec.get("added_tokens") or [] if a["id"] >= base)
    if [i for i, _ in added] != list(range(base, base + len(added))):
        raise ValueError("its added tokens do not follow the vocabulary with consecutive ids")
    return [content for _, content in added]


def tokenizer_from_hf(tokenizer_json: str, config: dict[str, Any]) -> Tokenizer:
    """A ``tokenizer.json`` (and its ``tokenizer_config.json``) as lmcore's char or BPE tokenizer."""
    try:
        spec = json.loads(tokenizer_json)
        model = spec["model"]
        kind = model.get("type")
        vocab: dict[str, int] = model["vocab"]
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ValueError("tokenizer.json is not a tokenizers JSON file with a model and a vocabulary") from None
    specials = _added_specials(spec, len(vocab))
    template = config.get("chat_template")
    template = CHAT_TEMPLATE if template == CHAT_TEMPLATE and set(CHAT_SPECIALS) <= set(specials) else None
    if kind == "WordLevel":
        chars = sorted(vocab, key=vocab.__getitem__)
        if any(len(c) != 1 for c in chars) or chars != sorted(chars) or [vocab[c] for c in chars] != list(range(len(chars))):
            raise ValueError("its WordLevel vocabulary is not one character per id in code-point order "
                             "(lmcore's char tokenizer)")
        if spec.get("pre_tokenizer") != json.loads(hf_tokenizer(CharTokenizer("a")).to_str())["pre_tokenizer"]:
            raise ValueError("its WordLevel model does not split text into single characters")
        return CharTokenizer(chars, specials, template)
    if kind == "BPE":
        pre = spec.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
            raise ValueError("its BPE is not a GPT-2 byte-level BPE (ByteLevel pre-tokenizer, no prefix space)")
        from tokenizers import models

        hf = hf_bpe()
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        hf.model = models.BPE(vocab, merges)
        return BpeTokenizer(hf.to_str(), specials, template)
    raise ValueError(f"its model is {str(kind)[:40]!r}; lmcore reads a char WordLevel or a byte-level BPE")
