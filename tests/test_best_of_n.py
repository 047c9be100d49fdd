"""Best-of-N: candidates regenerate alone, chunking by memory, the likelihood recorded while sampling,
and the CLIP scorer on a tiny random CLIPModel folder with a real tokenizer and image processor."""
import pytest
import torch

from builders import tiny_checkpoint, tiny_movqgan
from lumina_core import InputError, LuminaMGPT, generate
from lumina_core.decoding.best_of_n import RESERVE_BYTES, best_of_n, bytes_per_image, chunk_size_for
from lumina_core.decoding.generate import plan_request
from lumina_core.decoding.scorers import CLIPScorer, LikelihoodScorer
from lumina_core.decoding.sjd import SJDecoder

KW = dict(cfg=3.0, top_k=20)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("m") / "ckpt", num_codes=64, shards=1)
    return LuminaMGPT.from_pretrained(folder, dtype=torch.float32)


def reference_logprob(model, prompt, codes, cfg, width, height, **plan_kw):
    """Sum of log p_guided(code) over the generated codes, from full causal forwards without a cache."""
    sp = model.tokenizer.special
    a, b = sp.image_rows
    plan = plan_request(model, prompt, width, height, **plan_kw)
    gen = codes[plan.layout.prefix_rows:]
    body = torch.cat([gen + a, torch.full((gen.shape[0], 1), sp.row_end)], 1).flatten()[:-1]
    total = 0.0
    seq_c, seq_u = torch.tensor(plan.cond_ids), torch.tensor(plan.uncond_ids)
    lc = model(torch.cat([seq_c, body])[None])[0, len(seq_c) - 1:-1, a:b]
    lu = model(torch.cat([seq_u, body])[None])[0, len(seq_u) - 1:-1, a:b]
    logp = (lu + cfg * (lc - lu)).log_softmax(-1)
    for i, tok in enumerate(body.tolist()):
        if tok != sp.row_end:
            total += float(logp[i, tok - a])
    return total


@pytest.mark.parametrize("decoder", [None, SJDecoder(window=6)], ids=["plain", "sjd"])
def test_recorded_likelihood_equals_full_forward(model, decoder):
    res = generate(model, "a red circle", 32, 32, seed=2, batch_size=2, decoder=decoder, **KW)
    for i in range(2):
        want = reference_logprob(model, "a red circle", res.codes[i], 3.0, 32, 32)
        assert abs(float(res.stats.logprob[i]) - want) < 1e-3 * abs(want) + 1e-3


def test_dual_panel_likelihood_counts_only_generated_codes(model):
    cond = torch.randint(0, 64, (4, 4), generator=torch.Generator().manual_seed(0))
    kw = dict(task="control_canny", condition_codes=cond)
    res = generate(model, "edges", 32, 64, seed=1, decoder=SJDecoder(window=4), **kw, **KW)
    want = reference_logprob(model, "edges", res.codes[0], 3.0, 32, 64, **kw)
    assert abs(float(res.stats.logprob[0]) - want) < 1e-3 * abs(want) + 1e-3
    assert res.stats.image_tokens == 4 * 4


@pytest.mark.parametrize("decoder", [None, SJDecoder(window=6)], ids=["plain", "sjd"])
def test_candidate_regenerated_alone_equals_candidate_in_batch(model, decoder):
    out = best_of_n(model, "a red circle", 32, 32, n=5, seed=40, chunk_size=2, decoder=decoder, **KW)
    assert out.codes.shape == (5, 4, 4) and out.seeds == [40, 41, 42, 43, 44] and len(out.stats) == 3
    assert out.best_index == int(out.scores.argmax())
    assert out.scores[out.best_index] == out.scores.max() and len(set(out.scores.tolist())) == 5
    for i in (0, 3):
        alone = generate(model, "a red circle", 32, 32, seed=40 + i, decoder=decoder, **KW)
        assert torch.equal(alone.codes[0], out.codes[i])
        score = LikelihoodScorer().score("a red circle", alone)
        torch.testing.assert_close(score[0], out.scores[i], rtol=1e-4, atol=1e-4)
    assert torch.equal(out.best_codes[0], out.codes[out.best_index])


def test_chunk_size_follows_the_memory_budget(model):
    plan = plan_request(model, "a red circle", 32, 32)
    per = bytes_per_image(model, plan.total_tokens + 2, True, 2)
    assert chunk_size_for(model, plan.total_tokens + 2, True, 2, n=8, memory_budget=RESERVE_BYTES + 3.5 * per) == 3
    assert chunk_size_for(model, plan.total_tokens + 2, True, 2, n=8, memory_budget=0) == 1
    out = best_of_n(model, "a red circle", 32, 32, n=4, seed=0, memory_budget=RESERVE_BYTES + 2.2 * per, **KW)
    assert out.chunk_size == 2 and len(out.stats) == 2


def test_bad_requests_say_what_to_change(model, tmp_path):
    with pytest.raises(InputError, match="n >= 1"):
        best_of_n(model, "x", 32, 32, n=0)
    with pytest.raises(InputError, match="image_tokenizer"):
        best_of_n(model, "x", 32, 32, n=2, scorer=type("S", (), {"name": "clip", "needs_images": True})())
    with pytest.raises(InputError, match="CLIP model folder"):
        CLIPScorer(str(tmp_path))


# ----------------------------------------------------------------------------- CLIP
def _bytes_to_unicode():
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest past 255."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, extra = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + extra)
            extra += 1
    return [chr(c) for c in cs]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random CLIPModel saved with a real BPE tokenizer and image processor."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer
    alphabet = _bytes_to_unicode()
    merges = [("r", "e"), ("re", "d</w>"), ("c", "i"), ("ci", "r"), ("cir", "c"), ("l", "e</w>"), ("circ", "le</w>")]
    names = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(names))}
    tok = CLIPTokenizer(vocab=vocab, merges=merges)
    eos = vocab["<|endoftext|>"]
    cfg = CLIPConfig(text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, max_position_embeddings=77,
                                      bos_token_id=vocab["<|startoftext|>"], eos_token_id=eos, pad_token_id=eos),
                     vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2), projection_dim=16)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("clip")
    CLIPModel(cfg).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tok).save_pretrained(folder)
    return str(folder)


def test_clip_scorer_picks_the_highest_clip_similarity(model, clip_folder):
    from transformers import CLIPModel, CLIPProcessor
    movq = tiny_movqgan(64)
    scorer = CLIPScorer(clip_folder, device="cpu", offload_device="cpu")  # the node's set-up (GPU + offload)
    out = best_of_n(model, "a red circle", 32, 32, n=3, seed=5, scorer=scorer, image_tokenizer=movq, **KW)
    assert out.images.shape == (3, 32, 32, 3) and out.best_index == int(out.scores.argmax())
    assert out.scores.abs().max() <= 1 and len(set(out.scores.tolist())) == 3
    # independently: CLIP's own logits_per_image divided by its logit scale is the cosine similarity
    clip, proc = CLIPModel.from_pretrained(clip_folder), CLIPProcessor.from_pretrained(clip_folder)
    pixels = (out.images * 255).round().to(torch.uint8).numpy()
    with torch.inference_mode():
        o = clip(**proc(text=["a red circle"], images=list(pixels), return_tensors="pt", padding=True))
        want = (o.logits_per_image[:, 0] / clip.logit_scale.exp()).float()
    torch.testing.assert_close(out.scores, want,
                               rtol=1e-4, atol=1e-5)
    assert next(scorer.model.parameters()).device == scorer.offload_device  # back where it waits
