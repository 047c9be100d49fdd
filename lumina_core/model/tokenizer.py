"""Text tokenizer and the special-token ids of a checkpoint.

Every special id is looked up by name in the checkpoint's own vocabulary and validated, so a test
checkpoint with a different id layout works exactly like the released one.

User text is always encoded as text: a prompt that contains "<eoss>" or "<racm3:break>" gets the ids
that spell those characters, never the image-end / image-start ids (which would end or restart the
image block early). Only the sequence builder (tasks.build_prompt) places special ids.
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass

from ..errors import InputError, TokenizerError

log = logging.getLogger(__name__)

IMAGE_START = "<racm3:break>"
IMAGE_END = "<eoss>"
ROW_END = "<reserved08799>"
TURN_SEPARATOR = "<reserved08706>"
IMAGE_CODE_PREFIX = "<MOVQGAN"
GRID_BASE = 8800  # grid token for n units of 32 px is <reserved{8800+n:05d}>
MAX_GRID_UNITS = 99999 - GRID_BASE

# Only used when a checkpoint names none of its image-code tokens: the released vocabulary puts
# code c at 155000 + c (upstream hard-codes this). Applied only if the vocabulary size matches.
_RELEASED_VOCAB_SIZE = 171385
_RELEASED_CODE_START = 155000
_RELEASED_NUM_CODES = 16384


_RESERVED = re.compile(r"<reserved\d{5}>")


def check_text(text: str, what: str = "the prompt") -> None:
    """Text a tokenizer can take: a lone UTF-16 surrogate (U+D800-U+DFFF, e.g. from a client's broken
    escaping of an emoji) is not a character of any encoding, and tokenizers fail on it with a bare
    UnicodeEncodeError."""
    for i, ch in enumerate(text):
        if 0xD800 <= ord(ch) <= 0xDFFF:
            raise InputError(f"{what} has a broken character at position {i} (a lone UTF-16 surrogate, "
                             f"U+{ord(ch):04X}, usually half of an emoji escaped by the client): remove it or "
                             "send the text as UTF-8.")


def grid_token_name(units: int) -> str:
    return f"<reserved{GRID_BASE + units:05d}>"


@dataclass(frozen=True)
class SpecialTokens:
    bos: int
    image_start: int
    image_end: int
    row_end: int
    separator: int
    image_code_start: int
    num_image_codes: int

    @property
    def image_code_end(self) -> int:
        return self.image_code_start + self.num_image_codes

    @property
    def image_rows(self) -> tuple[int, int]:
        return (self.image_code_start, self.image_code_end)

    def is_image_code(self, token_id: int) -> bool:
        return self.image_code_start <= token_id < self.image_code_end


class _HFBackend:
    def __init__(self, path: str):
        from tokenizers import Tokenizer
        try:
            self.tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a plain Exception on bad JSON
            raise TokenizerError(f"could not read {path}: {e}. Re-download tokenizer.json.") from None

    def encode(self, text: str) -> list[int]:
        """Text -> ids through the normalizer, pre-tokenizer and model only. Tokenizer.encode would first
        cut out every added token found in the text (special or not: encode_special_tokens only covers
        the special ones, and the release may add its tokens as plain ones); for text without them both
        give the same ids."""
        tok = self.tok
        normalized = tok.normalizer.normalize_str(text) if tok.normalizer is not None else text
        pieces = tok.pre_tokenizer.pre_tokenize_str(normalized) if tok.pre_tokenizer is not None else [(normalized, None)]
        return [t.id for piece, _ in pieces for t in tok.model.tokenize(piece)]

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False)

    def added_ids(self) -> set[int]:
        return set(self.tok.get_added_tokens_decoder())

    def unknown_id(self) -> int | None:
        unk = getattr(self.tok.model, "unk_token", None)
        return self.tok.token_to_id(unk) if unk else None

    def token_to_id(self, name: str):
        return self.tok.token_to_id(name)

    def vocab(self) -> dict[str, int]:
        return self.tok.get_vocab(with_added_tokens=True)

    def __len__(self):
        return self.tok.get_vocab_size(with_added_tokens=True)


class _SentencePieceBackend:
    def __init__(self, path: str):
        try:
            import sentencepiece as spm
        except ImportError:
            raise TokenizerError(f"{path} is a sentencepiece model; install sentencepiece (pip install "
                                 "sentencepiece) or use the checkpoint's tokenizer.json.") from None
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(path)
        except Exception as e:
            raise TokenizerError(f"could not read sentencepiece model {path}: {e}") from None

    def encode(self, text: str) -> list[int]:
        return list(self.sp.EncodeAsIds(text))  # may match user-defined symbols: TextTokenizer spells them out

    def decode(self, ids: list[int]) -> str:
        return self.sp.DecodeIds(list(ids))

    def added_ids(self) -> set[int]:
        """Control pieces, and pieces written like added tokens (<...>): the python API does not tell
        user-defined symbols apart."""
        return {i for i in range(self.sp.GetPieceSize()) if self.sp.IsControl(i)
                or (self.sp.IdToPiece(i).startswith("<") and self.sp.IdToPiece(i).endswith(">") and len(self.sp.IdToPiece(i)) > 2)}

    def unknown_id(self) -> int | None:
        return self.sp.unk_id()

    def token_to_id(self, name: str):
        i = self.sp.PieceToId(name)
        return None if i == self.sp.unk_id() and name != self.sp.IdToPiece(i) else i

    def vocab(self) -> dict[str, int]:
        return {self.sp.IdToPiece(i): i for i in range(self.sp.GetPieceSize())}

    def __len__(self):
        return self.sp.GetPieceSize()


def _read_json(path: str):
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON ({e}).") from None


def _token_str(value):
    """tokenizer_config.json stores a token either as a string or as {"content": ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class TextTokenizer:
    """Prompt tokenizer plus the checkpoint's special ids (`.special`) and grid tokens."""

    def __init__(self, backend, bos_name: str, vocabulary_map: dict | None = None, source: str = ""):
        self.backend = backend
        self.source = source
        self.special = self._resolve_special(bos_name, vocabulary_map or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(cls, path: str) -> "TextTokenizer":
        """`path`: a checkpoint folder (tokenizer.json, else tokenizer.model) or one of those files."""
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        if os.path.isdir(path):
            candidates = [os.path.join(path, "tokenizer.json"), os.path.join(path, "tokenizer.model")]
            file = next((c for c in candidates if os.path.isfile(c)), None)
            if file is None:
                raise TokenizerError(f"no tokenizer.json (or tokenizer.model) in {path}. Copy the checkpoint's "
                                     "tokenizer.json into that folder.")
        elif os.path.isfile(path):
            file = path
        else:
            raise TokenizerError(f"tokenizer not found: {path}")
        backend = _SentencePieceBackend(file) if file.endswith(".model") else _HFBackend(file)
        tcfg = _read_json(os.path.join(folder, "tokenizer_config.json")) or {}
        bos_name = _token_str(tcfg.get("bos_token")) or _token_str(tcfg.get("eos_token"))
        if not bos_name:
            # Upstream uses `bos_token or eos_token` of the HF tokenizer; Qwen's eos is <|im_end|>.
            bos_name = "<|im_end|>"
            log.info("tokenizer_config.json names no bos/eos token; using %s as BOS", bos_name)
        model_cfg = _read_json(os.path.join(folder, "config.json")) or {}
        return cls(backend, bos_name, model_cfg.get("vocabulary_map"), source=file)

    def _id(self, name: str, role: str) -> int:
        i = self.backend.token_to_id(name)
        if i is None:
            raise TokenizerError(f"the tokenizer ({self.source}) has no special token {name} ({role}). "
                                 "Lumina-mGPT 2.0 needs it; use the tokenizer.json shipped with the checkpoint.")
        return i

    def _image_code_range(self, vocabulary_map: dict) -> tuple[int, int]:
        for source, names in (("config.json vocabulary_map", vocabulary_map), ("tokenizer vocabulary", None)):
            if names is None:
                names = self.backend.vocab()
            ids = sorted(i for n, i in names.items() if isinstance(n, str) and n.startswith(IMAGE_CODE_PREFIX))
            if not ids:
                continue
            if ids[-1] - ids[0] + 1 != len(ids):
                raise TokenizerError(f"image-code tokens ({IMAGE_CODE_PREFIX}...) in the {source} are not one "
                                     f"contiguous id range ({len(ids)} tokens between {ids[0]} and {ids[-1]}).")
            return ids[0], len(ids)
        if len(self.backend) >= _RELEASED_VOCAB_SIZE - 1 and self.backend.token_to_id(IMAGE_START) == 151665:
            log.warning("the checkpoint names no %s... tokens; assuming the released layout (code c is id %d + c)",
                        IMAGE_CODE_PREFIX, _RELEASED_CODE_START)
            return _RELEASED_CODE_START, _RELEASED_NUM_CODES
        raise TokenizerError(f"no image-code tokens ({IMAGE_CODE_PREFIX}...) in the tokenizer or in config.json's "
                             "vocabulary_map, so image codes cannot be mapped to token ids.")

    def _resolve_special(self, bos_name: str, vocabulary_map: dict) -> SpecialTokens:
        start, count = self._image_code_range(vocabulary_map)
        special = SpecialTokens(
            bos=self._id(bos_name, "BOS"),
            image_start=self._id(IMAGE_START, "image start"),
            image_end=self._id(IMAGE_END, "image end"),
            row_end=self._id(ROW_END, "image row end"),
            separator=self._id(TURN_SEPARATOR, "turn separator"),
            image_code_start=start,
            num_image_codes=count,
        )
        named = {"image start": special.image_start, "image end": special.image_end,
                 "row end": special.row_end, "separator": special.separator}
        if len(set(named.values())) != len(named):
            raise TokenizerError(f"special tokens share ids: {named}")
        for role, i in named.items():
            if special.is_image_code(i):
                raise TokenizerError(f"the {role} token id {i} lies inside the image-code range "
                                     f"[{start}, {start + count})")
        return special

    # ------------------------------------------------------------------ use
    def encode(self, text: str) -> list[int]:
        """User text -> ids, always as text: whatever it contains, no special, grid or image-code id
        comes out (see the module docstring)."""
        check_text(text, "the text")
        ids = self.backend.encode(text)
        if self.control_ids.isdisjoint(ids):
            return ids
        # The vocabulary maps some piece of this text straight onto a control token (a word-level
        # vocabulary holding "<eoss>", a sentencepiece user-defined symbol): spell those pieces out.
        ids = self._spelled(text)
        leaked = sorted(self.control_ids.intersection(ids))
        if leaked:
            raise TokenizerError(f"the tokenizer ({self.source}) turns this prompt text into control token id(s) "
                                 f"{leaked[:5]} however it is split; remove the characters that look like "
                                 "special tokens (<...>) from the prompt.")
        return ids

    @property
    def control_ids(self) -> frozenset[int]:
        """Every id user text must never produce: the added tokens (specials, grid and image codes), the
        special ids, the image-code range and any <reservedNNNNN> entry. Not the unknown token: that is
        how a tokenizer writes text it cannot spell."""
        cached = getattr(self, "_control_ids", None)
        if cached is None:
            s = self.special
            ids = set(self.backend.added_ids()) | {s.bos, s.image_start, s.image_end, s.row_end, s.separator}
            ids |= set(range(s.image_code_start, s.image_code_end))
            ids |= {i for name, i in self.backend.vocab().items() if _RESERVED.fullmatch(name)}
            ids.discard(self.backend.unknown_id())
            self._control_ids = cached = frozenset(ids)
        return cached

    def _spelled(self, text: str) -> list[int]:
        """Encode with every occurrence of a control token's name encoded one character at a time."""
        pattern = getattr(self, "_control_pattern", None)
        if pattern is None:  # built once, only for tokenizers that need it
            names = {n for n, i in self.backend.vocab().items() if i in self.control_ids and n}
            pattern = re.compile("|".join(re.escape(n) for n in sorted(names, key=len, reverse=True)))
            self._control_pattern = pattern
        ids, pos = [], 0
        for m in pattern.finditer(text):
            ids += self.backend.encode(text[pos:m.start()]) if m.start() > pos else []
            ids += [i for ch in m.group() for i in self.backend.encode(ch)]
            pos = m.end()
        return ids + (self.backend.encode(text[pos:]) if pos < len(text) else [])

    def decode(self, ids) -> str:
        return self.backend.decode(list(ids))

    def token_to_id(self, name: str):
        return self.backend.token_to_id(name)

    def __len__(self) -> int:
        return len(self.backend)

    def grid_token(self, units: int) -> int:
        """Id of the grid token for `units` x 32 px."""
        if not 1 <= units <= MAX_GRID_UNITS:
            raise TokenizerError(f"grid size {units} (x32 px) is out of range")
        name = grid_token_name(units)
        i = self.backend.token_to_id(name)
        if i is None:
            raise TokenizerError(f"the tokenizer has no grid token {name} for {units * 32} px; this checkpoint "
                                 "cannot express that size.")
        return i

    def max_grid_units(self) -> int:
        """The largest n such that the grid tokens for 1..n x 32 px all exist (0 if none)."""
        cached = getattr(self, "_max_grid_units", None)
        if cached is None:
            cached = 0
            while cached < MAX_GRID_UNITS and self.backend.token_to_id(grid_token_name(cached + 1)) is not None:
                cached += 1
            self._max_grid_units = cached
        return cached

    def grid_units(self, token_id: int) -> int | None:
        """Inverse of grid_token, for reading sizes back from a token stream."""
        name = None
        vocab = getattr(self, "_inverse", None)
        if vocab is None:
            self._inverse = vocab = {i: n for n, i in self.backend.vocab().items()}
        name = vocab.get(int(token_id))
        if name and name.startswith("<reserved") and name.endswith(">"):
            try:
                return int(name[len("<reserved"):-1]) - GRID_BASE
            except ValueError:
                return None
        return None

    def check_model_vocab(self, vocab_size: int) -> None:
        s = self.special
        top = max(s.bos, s.image_start, s.image_end, s.row_end, s.separator, s.image_code_end - 1)
        if top >= vocab_size:
            raise TokenizerError(f"the tokenizer uses id {top} but the model's vocabulary has {vocab_size} "
                                 "entries: tokenizer and model come from different checkpoints.")
