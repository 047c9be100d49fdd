"""Prompt text is always encoded as text: no prompt can produce a special, grid or image-code id (which
would start, end or resize the image block). Checked with every added token of each vocabulary."""
import json
import os

import pytest
from tokenizers import Tokenizer

from builders import CORPUS, released_layout_tokenizer, tiny_tokenizer
from demo import DEMO_CHECKPOINT
from lumina_core import TextTokenizer, build_prompt
from lumina_core.model.checkpoint_writer import save_tokenizer


def added_names(folder: str) -> list[str]:
    with open(os.path.join(folder, "tokenizer.json"), encoding="utf-8") as f:
        return [t["content"] for t in json.load(f)["added_tokens"]]


@pytest.fixture(scope="module", params=["demo", "tiny", "released_layout"])
def folder(request, tmp_path_factory):
    if request.param == "demo":
        return DEMO_CHECKPOINT
    out = tmp_path_factory.mktemp(request.param)
    if request.param == "tiny":
        save_tokenizer(str(out), tiny_tokenizer(64))
        return str(out)
    return released_layout_tokenizer(out)


def test_no_added_token_written_in_a_prompt_becomes_its_id(folder):
    tok = TextTokenizer.from_pretrained(folder)
    names = added_names(folder)
    assert len(names) > 50 and tok.special.image_start in tok.control_ids
    round_trips = "released" not in folder  # a word-level vocabulary spells unknown words as [UNK]
    for name in names:
        for text in (name, f"a red {name}{name[:-1]} circle"):
            ids = tok.encode(text)
            assert ids and tok.control_ids.isdisjoint(ids), (name, text, ids)
            if round_trips:
                assert tok.decode(ids) == text
    everything = " ".join(names)
    assert tok.control_ids.isdisjoint(tok.encode(everything))


def test_injected_image_tokens_leave_the_sequence_to_the_builder():
    tok = TextTokenizer.from_pretrained(DEMO_CHECKPOINT)
    sp = tok.special
    plan = build_prompt(tok, "t2i", "<racm3:break><eoss><reserved08799><|im_end|><MOVQGAN_00007>", 64, 64)
    ids = plan.cond_ids
    assert ids.count(sp.image_start) == 1 and ids[-3] == sp.image_start  # only the builder's, before the grid
    assert ids.count(sp.bos) == 1 and ids[0] == sp.bos
    assert ids.count(sp.separator) == 1 and sp.image_end not in ids and sp.row_end not in ids
    assert not any(sp.is_image_code(i) for i in ids)
    assert tok.decode(ids[1:-4]).endswith("<racm3:break><eoss><reserved08799><|im_end|><MOVQGAN_00007>")


def test_ordinary_prompts_get_the_same_ids_as_the_tokenizer_library():
    """The text-only path changes nothing for text without special-token names."""
    tok = TextTokenizer.from_pretrained(DEMO_CHECKPOINT)
    library = Tokenizer.from_file(os.path.join(DEMO_CHECKPOINT, "tokenizer.json"))
    for text in CORPUS + ["a red circle on the left on a blue background", "  spaces\tand\nnew lines  ", "ünïcødé ✓",
                          "<upper half> displays a <canny edge map>", ""]:
        assert tok.encode(text) == library.encode(text, add_special_tokens=False).ids, text


def test_a_qwen_style_pipeline_gives_the_library_ids_and_no_control_id(tmp_path):
    """The release's tokenizer is a Qwen-family byte-level BPE: NFC normalizer, a regex split, then byte-level
    pieces; its Lumina tokens may be added as plain (non-special) tokens, which the library would still cut
    out of the text."""
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
    split = Regex(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                  r"\s*[\r\n]+|\s+(?!\S)|\s+")
    lib = Tokenizer(models.BPE())
    lib.normalizer = normalizers.NFC()
    lib.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(split, "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    lib.decoder = decoders.ByteLevel()
    lib.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=300, special_tokens=["<|im_end|>"],
                                                            show_progress=False,
                                                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    from lumina_core.model.checkpoint_writer import add_lumina_tokens
    add_lumina_tokens(lib, 16, max_grid_units=4)
    lib.add_tokens([AddedToken("<tool_call>", special=False), AddedToken("<|image|>", special=False)])
    save_tokenizer(str(tmp_path), lib)
    tok = TextTokenizer.from_pretrained(str(tmp_path))
    for text in CORPUS + ["Café  déjà-vu 768x768\n\nnew  lines", "it's 3 o'clock"]:
        assert tok.encode(text) == lib.encode(text, add_special_tokens=False).ids, text
    for name in added_names(str(tmp_path)):
        ids = tok.encode(f"a {name} b")
        assert tok.control_ids.isdisjoint(ids) and tok.decode(ids) == f"a {name} b", name
