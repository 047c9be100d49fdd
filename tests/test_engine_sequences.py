"""Token sequences for every task, with the release's exact ids, and size / context validation."""
import re

import pytest
import torch

from builders import released_layout_tokenizer, tiny_tokenizer
from demo import DEMO_CHECKPOINT
from lumina_core import InputError, TASKS, TextTokenizer, build_prompt
from lumina_core.model.checkpoint_writer import save_tokenizer
from lumina_core.layout import ImageLayout
from lumina_core.decoding.tasks import image_rows_to_ids

START, END, ROW_END, SEP, BOS, CODE0 = 151665, 151666, 151670, 171384, 151645, 155000


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return TextTokenizer.from_pretrained(released_layout_tokenizer(tmp_path_factory.mktemp("tok")))


def grid(tok, units):
    return tok.token_to_id(f"<reserved{8800 + units:05d}>")


def test_special_ids_resolved_by_name(released):
    s = released.special
    assert (s.bos, s.image_start, s.image_end, s.row_end, s.separator) == (BOS, START, END, ROW_END, SEP)
    assert (s.image_code_start, s.num_image_codes) == (CODE0, 16384)


def test_768_text_to_image_sequence(released):
    plan = build_prompt(released, "t2i", "a red circle", 768, 768, max_positions=10240)
    assert plan.layout.block_tokens == 9316
    assert plan.layout.generated_tokens == 96 * 97 + 1
    ids = plan.cond_ids
    assert ids[0] == BOS
    assert ids[-4:] == [SEP, START, grid(released, 24), grid(released, 24)]
    assert plan.uncond_ids == [START, grid(released, 24), grid(released, 24)]
    assert released.decode(ids[1:-4]).startswith("Generate an image of")
    assert plan.text == "Generate an image of 768x768 according to the following prompt:\na red circle"
    assert len(ids) + plan.layout.generated_tokens == plan.total_tokens


def test_grid_tokens_height_first(released):
    plan = build_prompt(released, "t2i", "x", 512, 1024)
    assert plan.cond_ids[-2:] == [grid(released, 32), grid(released, 16)]
    assert released.grid_units(plan.cond_ids[-2]) == 32


def test_512x1024_controllable_canvas(released):
    cond = torch.randint(0, 16384, (64, 64))
    plan = build_prompt(released, "control_canny", "a cat", 512, 1024, condition_codes=cond, max_positions=10240)
    assert plan.text.startswith("Generate a dual-panel image of 512x1024 where the <upper half> displays a "
                                "<canny edge map>, while the <lower half> retains the original image")
    head = [START, grid(released, 32), grid(released, 16)]
    upper = plan.cond_ids[-4160:]
    assert plan.cond_ids[-4163:-4160] == head and plan.cond_ids[-4164] == SEP
    assert len(head) + len(upper) == 4163 and plan.layout.generated_tokens == 4161  # 4,163 + 4,161 = 8,324
    assert plan.layout.block_tokens == 8324
    rows = torch.tensor(upper).view(64, 65)
    assert (rows[:, -1] == ROW_END).all()
    assert torch.equal(rows[:, :-1] - CODE0, cond)
    assert plan.uncond_ids == head + upper  # text dropped, condition kept
    assert plan.layout.prefix_rows == 64 and plan.layout.gen_rows == 64


def test_every_task_builds(released):
    cond = torch.zeros(32, 64, dtype=torch.long)
    for name, spec in TASKS.items():
        plan = build_prompt(released, name, "p", 512, 512, condition_codes=cond if spec.needs_condition else None)
        assert plan.cond_ids[-len(plan.uncond_ids):] == plan.uncond_ids
        assert (plan.layout.prefix_rows == 32) == spec.needs_condition
    assert "<upper half> displays a <depth map>" in build_prompt(released, "control_depth", "p", 512, 512,
                                                                condition_codes=cond).text
    assert "<lower half> displays a <pose estimation map>" in build_prompt(released, "pair_pose", "p", 512, 512).text
    subj = build_prompt(released, "subject", "p", 512, 512, condition_codes=cond, subject_description="A red mug.")
    assert "displays a <A red mug.>" in subj.text


def test_row_ids_layout():
    class S:
        image_code_start, row_end = 100, 7
    assert image_rows_to_ids(torch.tensor([[0, 1], [2, 3]]), S) == [100, 101, 7, 102, 103, 7]


@pytest.mark.parametrize("w,h,hint", [(500, 512, "480 or 512"), (512, 0, "height=0"), (768, 770, "768 or 800")])
def test_size_not_multiple_of_32(released, w, h, hint):
    with pytest.raises(InputError, match="multiple of 32") as e:
        build_prompt(released, "t2i", "x", w, h)
    assert hint in str(e.value)
    if h == 0:  # the suggestion is a size that works, never 0 or negative
        assert "height 32." in str(e.value)


def test_dual_panel_height_must_split_into_two_grid_panels(released):
    with pytest.raises(InputError, match="multiple of 64"):
        build_prompt(released, "pair_depth", "x", 512, 544)


def test_prompt_plus_image_longer_than_context(released):
    with pytest.raises(InputError, match=r"1024x1024 image takes 16516 tokens.*more than the model's 10240") as e:
        build_prompt(released, "t2i", "x", 1024, 1024, max_positions=10240)
    # by hand: 800x800 needs 100*101+4 = 10104 block tokens + 13 prompt tokens <= 10240; 832x832 needs 10924
    assert "the size is too large" in str(e.value) and "up to about 800x800 fits" in str(e.value)
    long_prompt = " ".join(["circle"] * 2000)
    # 2000 word tokens + 12 (BOS, template, separator) + 9316 (768x768) = 11328 positions: 1088 too many
    with pytest.raises(InputError, match=r"Shorten the prompt by 1088 tokens \(at most about 912 fit") as e:
        build_prompt(released, "t2i", long_prompt, 768, 768, max_positions=10240)
    assert "up to about 704x704 fits" in str(e.value)  # 88*89+4 = 7836 + 2012 <= 10240; 736x736: 8560 + 2012 > it


def test_when_no_size_fits_the_prompt_is_named_too_long_by_how_much():
    """A prompt longer than the whole context at any size: say so, by how many tokens, and what fits."""
    tok = TextTokenizer.from_pretrained(DEMO_CHECKPOINT)
    text = "x" * 20000
    with pytest.raises(InputError) as e:
        build_prompt(tok, "t2i", text, 64, 64, max_positions=512)
    message = str(e.value)
    template = len(tok.encode("Generate an image of 64x64 according to the following prompt:\n")) + 2
    own = len(tok.encode(text))
    excess = template + own + 76 - 512  # 64x64: 8 rows of 9 tokens + 4
    assert "the prompt is too long" in message and "no smaller size fits" in message
    assert f"Shorten it by at least {excess} tokens" in message
    assert f"at most about {512 - 76 - template} tokens fit at this size" in message
    assert "32x32" not in message and "64x64 fits" not in message


@pytest.mark.parametrize("task,height", [("t2i", 160), ("pair_canny", 320)])
def test_size_hints_are_in_the_units_the_user_typed_and_never_the_failed_size(task, height):
    """160x160 on a 400-position model: the hint is a smaller panel that really fits (checked by building
    it), never 160x160 itself, for single- and dual-panel tasks alike."""
    tok = TextTokenizer.from_pretrained(DEMO_CHECKPOINT)
    spec = TASKS[task]
    with pytest.raises(InputError) as e:
        build_prompt(tok, task, "a red circle", 160, height, max_positions=400)
    message = str(e.value)
    assert ("160x160 panel (160x320 canvas)" if spec.dual_panel else "160x160 image") in message
    side = int(re.search(r"up to about (\d+)x\1", message).group(1))
    assert side < 160
    panels = 2 if spec.dual_panel else 1
    build_prompt(tok, task, "a red circle", side, side * panels, max_positions=400)  # the hint fits
    with pytest.raises(InputError):
        build_prompt(tok, task, "a red circle", side + 32, (side + 32) * panels, max_positions=400)  # the largest


def test_size_beyond_the_grid_tokens_names_the_largest_size(tmp_path):
    tok = tiny_tokenizer(16, max_grid_units=4)
    save_tokenizer(str(tmp_path), tok)
    t = TextTokenizer.from_pretrained(str(tmp_path))
    assert t.max_grid_units() == 4
    build_prompt(t, "t2i", "x", 128, 128)
    with pytest.raises(InputError, match=r"160x128 image is larger than this checkpoint can express.*up to 128x128 px"):
        build_prompt(t, "t2i", "x", 160, 128)
    with pytest.raises(InputError, match=r"128x128 panel.*panels of up to 128 px wide and 64 px high"):
        build_prompt(t, "pair_canny", "x", 128, 256)
    build_prompt(t, "pair_canny", "x", 128, 128)  # 128x64 panels


def test_condition_errors(released):
    with pytest.raises(InputError, match="needs a condition image"):
        build_prompt(released, "control_canny", "x", 512, 1024)
    with pytest.raises(InputError, match=r"encode the condition at 512x512 px"):
        build_prompt(released, "control_canny", "x", 512, 1024, condition_codes=torch.zeros(32, 32, dtype=torch.long))
    with pytest.raises(InputError, match="remove the condition"):
        build_prompt(released, "t2i", "x", 512, 512, condition_codes=torch.zeros(64, 64, dtype=torch.long))
    with pytest.raises(InputError, match="unknown task"):
        build_prompt(released, "inpaint", "x", 512, 512)


def test_sentencepiece_tokenizer_model_is_accepted(tmp_path):
    import sentencepiece as spm
    from lumina_core.model.checkpoint_writer import image_code_token
    specials = ["<|im_end|>", "<racm3:break>", "<eoss>", "<reserved08799>", "<reserved08706>"] + \
        [f"<reserved{8800 + n:05d}>" for n in range(1, 5)] + [image_code_token(c) for c in range(16)]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(["a red circle on a blue background", "Generate an image according to the prompt"] * 50))
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(tmp_path / "tokenizer"), vocab_size=50,
                                   user_defined_symbols=specials, minloglevel=2)
    tok = TextTokenizer.from_pretrained(str(tmp_path))
    assert tok.source.endswith("tokenizer.model")
    assert tok.special.num_image_codes == 16
    plan = build_prompt(tok, "t2i", "a red circle", 64, 64)
    assert plan.cond_ids[-3] == tok.token_to_id("<racm3:break>")
    assert "red circle" in tok.decode(plan.cond_ids[1:-4])


def test_layout_arithmetic():
    lay = ImageLayout(96, 64, prefix_rows=4)
    assert (lay.w_lat, lay.h_lat, lay.gen_rows) == (12, 8, 4)
    assert lay.block_tokens == 8 * 13 + 4 and lay.generated_tokens == 4 * 13 + 1
