"""Tensor parallelism on CPU with gloo (2 and 4 ranks, fp32, a tiny random checkpoint): logits equal to the
single-process model, identical codes for plain, SJD and best-of-N decoding on every rank, 1/N of the
weights per rank, and a loader that reads only the rank's slices."""
import os

import pytest
import torch
import torch.multiprocessing as mp

from builders import tiny_checkpoint
from lumina_core import LuminaMGPT, best_of_n, generate
from lumina_core.decoding.sjd import SJDecoder
from lumina_core.parallel import tp

# GQA (8 query, 4 key/value heads), q-norm per head, k-norm in 2 groups of heads: every slicing rule runs
CFG = dict(hidden_size=64, num_attention_heads=8, num_key_value_heads=4, intermediate_size=160,
           q_norm_groups=8, k_norm_groups=2)
PROMPT = "a red circle"
RUNS = {
    "greedy": dict(cfg=3.0, top_k=1, seed=3, batch_size=2),
    "sampled": dict(cfg=3.0, top_k=16, temperature=1.0, seed=5, batch_size=2),
    "sjd_greedy": dict(cfg=3.0, top_k=1, seed=3, decoder=SJDecoder(window=6)),
    "sjd_sampled": dict(cfg=3.0, top_k=0, seed=7, decoder=SJDecoder(window=6)),
}


def outputs(model, logits_only=False):
    """Everything compared between the single-process model and every rank."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, 12), generator=g)
    out = {}
    with torch.inference_mode():
        out["logits"] = model(ids)
        rows = model.tokenizer.special.image_rows
        from lumina_core.memory.kv_cache import KVCache
        cache = KVCache.for_model(model, 2, 16)
        out["code_logits"] = model.forward_step(ids[:, :9], cache, cache.slots(9), kv_len=9, rows=rows)
        out["cache_heads"] = cache.k[0].shape[1]
    if logits_only:
        return out
    for name, kw in RUNS.items():
        out[name] = generate(model, PROMPT, 32, 32, **kw).codes
    bon = best_of_n(model, PROMPT, 32, 32, n=3, seed=11, cfg=3.0, top_k=16, chunk_size=2)
    out["bon"] = (bon.codes, bon.scores, bon.best_index)
    return out


def _rank_main(rank, world, port, folder, results, quantization):
    torch.set_num_threads(1)
    shard = tp.init_group(rank, world, port)
    try:
        quantize = tp.quantizer(quantization, torch.float32, shard)
        model = tp.load_sharded(LuminaMGPT, folder, shard, dtype=torch.float32, quantize=quantize)
        out = outputs(model, logits_only=quantization is not None)
        out["resident"] = tp.resident_weight_bytes(model)
        torch.save(out, os.path.join(results, f"rank{rank}.pt"))
    finally:
        tp.leave_group()


def run_ranks(world, folder, results, quantization=None):
    meeting = tp.Rendezvous()  # held here, not by rank 0, so it outlives every rank
    try:
        mp.spawn(_rank_main, args=(world, meeting.port, folder, results, quantization), nprocs=world, join=True)
    finally:
        meeting.close()
    return [torch.load(os.path.join(results, f"rank{r}.pt")) for r in range(world)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder, _ = tiny_checkpoint(tmp_path_factory.mktemp("tp") / "ckpt", num_codes=64, shards=2, **CFG)
    return folder


@pytest.fixture(scope="module")
def reference(checkpoint):
    model = LuminaMGPT.from_pretrained(checkpoint, dtype=torch.float32)
    out = outputs(model)
    out["resident"] = tp.resident_weight_bytes(model)
    out["replicated"] = sum(p.numel() * 4 for n, p in model.named_parameters()
                            if "norm" in n and "self_attn" not in n or "embed_tokens" in n)
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_match_the_single_process_model(tmp_path, checkpoint, reference, world):
    ranks = run_ranks(world, checkpoint, str(tmp_path))
    for r, out in enumerate(ranks):
        # the shards' partial sums add up in another order: float32 rounding, measured up to 6e-6 on logits of
        # magnitude ~7; 1e-4 holds that on any CPU and is still 100x below the smallest greedy gap here
        torch.testing.assert_close(out["logits"], reference["logits"], rtol=0, atol=1e-4)
        torch.testing.assert_close(out["code_logits"], reference["code_logits"], rtol=0, atol=1e-4)
        assert out["cache_heads"] == CFG["num_key_value_heads"] // world  # the KV cache holds local heads only
        for name in RUNS:
            assert torch.equal(out[name], reference[name]), f"rank {r}: {name} codes differ"
        codes, scores, best = out["bon"]
        assert torch.equal(codes, reference["bon"][0]) and best == reference["bon"][2]
        torch.testing.assert_close(scores, reference["bon"][1], rtol=0, atol=1e-5)
    # the sampled runs are not trivially equal (different seeds give different images)
    assert not torch.equal(reference["sampled"][0], reference["sampled"][1])
    # each rank holds 1/world of the sharded weights, plus the replicated embedding and norms
    sharded = reference["resident"] - reference["replicated"]
    for out in ranks:
        local = out["resident"] - reference["replicated"]
        assert abs(local - sharded / world) <= 0.01 * sharded, (local, sharded / world)


def test_int8_shards_quantize_exactly_per_channel(tmp_path, checkpoint):
    """Quantizing after sharding gives each rank the int8 values and scales of the whole model's per-channel
    int8 (row-parallel layers take the channel's amax over every rank's slice)."""
    from lumina_core import quantize_int8_
    ref = LuminaMGPT.from_pretrained(checkpoint, dtype=torch.float32)
    quantize_int8_(ref, backend="native", kernel="dequant", dtype=torch.float32)
    want = outputs(ref, logits_only=True)
    ranks = run_ranks(2, checkpoint, str(tmp_path), "int8")
    for out in ranks:
        torch.testing.assert_close(out["code_logits"], want["code_logits"], rtol=0, atol=1e-4)


def test_int4_shards_equal_the_unsplit_model_at_the_shards_group_size(tmp_path, checkpoint):
    """int4 is group-wise along the input features: a column-parallel shard keeps whole rows and a
    row-parallel shard whole groups, so each rank holds the unsplit model's int4 layers (at the group size
    that divides the shard's input features; the real model keeps 128 over 2 ranks)."""
    from lumina_core.memory.quant import Int4Linear, int4_group_size
    ref = LuminaMGPT.from_pretrained(checkpoint, dtype=torch.float32)
    for parent in list(ref.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.Linear):
                local_in = child.in_features // 2 if name in tp.ROW_PARALLEL else child.in_features
                setattr(parent, name, Int4Linear.from_linear(child, group_size=int4_group_size(local_in),
                                                             dtype=torch.float32))
    want = outputs(ref, logits_only=True)
    for out in run_ranks(2, checkpoint, str(tmp_path), "int4"):
        torch.testing.assert_close(out["code_logits"], want["code_logits"], rtol=0, atol=1e-4)
    assert int4_group_size(11008 // 2) == 128 and int4_group_size(4096 // 2) == 128


def test_shard_plan_slices_head_rows_and_norm_groups():
    """The lm_head rows of all ranks, put back in rank order, are the whole vocabulary (codes and the rest)."""
    from lumina_core.model.config import LuminaConfig
    cfg = LuminaConfig(vocab_size=23, hidden_size=16, intermediate_size=8, num_hidden_layers=1,
                       num_attention_heads=4, num_key_value_heads=2)
    full = torch.arange(23.0)[:, None].expand(23, 16)
    codes, rest = [], []
    for r in range(2):
        plan = tp.Plan(cfg, tp.Shard(r, 2), code_rows=(5, 14))
        local = plan.take("lm_head.weight", full)
        assert local.shape[0] == plan.head_rows
        codes.append(local[: plan.codes[2], 0])
        rest.append(local[plan.codes[2]:, 0])
    assert torch.equal(torch.cat(codes)[:9], torch.arange(5.0, 14.0))
    assert torch.equal(torch.cat(rest)[:14], torch.cat([torch.arange(0.0, 5.0), torch.arange(14.0, 23.0)]))
    norm = torch.arange(2.0)[:, None].expand(2, 4)  # 2 groups over 4 heads: heads 0,1 -> 0; 2,3 -> 1
    assert torch.equal(tp.Plan(cfg, tp.Shard(1, 2), None).take("model.layers.0.self_attn.q_norm.weight", norm)[:, 0],
                       torch.tensor([1.0, 1.0]))


def test_indivisible_heads_give_a_clear_error():
    from lumina_core import InputError
    from lumina_core.model.config import LuminaConfig
    with pytest.raises(InputError, match="do not split evenly over 3 devices"):
        tp.check_divisible(LuminaConfig(num_attention_heads=32, num_key_value_heads=32), 3)


def test_a_rank_reads_only_its_slices_from_the_safetensors_files(checkpoint, monkeypatch):
    """Loading rank 1 of 2 indexes each safetensors slice for its part only: the elements read are half of
    the split tensors plus the replicated ones (no process group is needed to load)."""
    read = {"split": 0, "whole": 0}
    take = tp.Plan.take

    class Counting:
        def __init__(self, name, inner):
            self.name, self.inner = name, inner

        def get_shape(self):
            return self.inner.get_shape()

        def __getitem__(self, index):
            t = self.inner[index]
            replicated = "norm" in self.name and "self_attn" not in self.name or "embed" in self.name
            read["whole" if replicated else "split"] += t.numel()
            return t

    monkeypatch.setattr(tp.Plan, "take", lambda self, name, t: take(self, name, Counting(name, t)))
    model = tp.load_sharded(LuminaMGPT, checkpoint, tp.Shard(1, 2), dtype=torch.float32)
    full = LuminaMGPT.from_pretrained(checkpoint, dtype=torch.float32)
    split_total = sum(p.numel() for n, p in full.named_parameters()
                      if not ("norm" in n and "self_attn" not in n or "embed" in n))
    whole_total = sum(p.numel() for p in full.parameters()) - split_total
    assert read["whole"] == whole_total
    # half of every split tensor, plus the per-head q/k norms (read whole, then sliced: a few hundred values)
    assert split_total / 2 <= read["split"] <= split_total / 2 + 0.02 * split_total, (read, split_total)
    assert model.model.layers[0].self_attn.num_heads == CFG["num_attention_heads"] // 2


def test_serve_script_on_two_torchrun_ranks_writes_the_single_process_png(tmp_path, checkpoint, reference):
    """scripts/serve_tp.py under torchrun (env:// rendezvous, as across machines), gloo on the CPU."""
    import subprocess
    import sys

    import numpy as np
    from PIL import Image
    from safetensors.torch import save_file

    from builders import tiny_movqgan
    from lumina_core import decode_images
    from lumina_core.image.prep import unit_bhwc_to_pil
    vq = tiny_movqgan(64)
    save_file(vq.state_dict_for_save(), str(tmp_path / "vq.safetensors"))
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = tmp_path / "out.png"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           os.path.join(root, "scripts", "serve_tp.py"), "--checkpoint", checkpoint, "--image-tokenizer",
           str(tmp_path / "vq.safetensors"), "--prompt", PROMPT, "--width", "32", "--height", "32", "--seed", "5",
           "--cfg", "3.0", "--top-k", "16", "--device", "cpu", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "on 2 ranks" in done.stdout
    model = LuminaMGPT.from_pretrained(checkpoint, dtype=torch.float32)
    want = generate(model, PROMPT, 32, 32, seed=5, cfg=3.0, top_k=16)
    image = unit_bhwc_to_pil(decode_images(vq, want.panel_codes()))[0]
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(image))
