"""The demo's text tokenizer: a small byte-level BPE trained with `tokenizers` on the task templates
and generated captions, plus Lumina's special, grid and image-code tokens under their real names
(<racm3:break>, <eoss>, <reserved08799>, grid tokens, the <reserved08706> separator) in the
released id order.

    python -m demo.train_tokenizer --out demo_model/lumina-mgpt2-shapes-demo --codes 512
"""
from __future__ import annotations

import argparse

from lumina_core.model.checkpoint_writer import add_lumina_tokens, save_tokenizer, train_text_tokenizer
from lumina_core.decoding.tasks import get_task, render_prompt

from .shapes import IMAGE_SIZE, training_scenes

TEXT_VOCAB = 512
DEMO_TASKS = ("t2i", "pair_canny", "control_canny")   # what the demo model is trained on


def task_canvas(task: str) -> tuple[int, int]:
    """(width, height) of the whole canvas of a demo task: dual-panel tasks stack two 64x64 panels."""
    return (IMAGE_SIZE, 2 * IMAGE_SIZE) if get_task(task).dual_panel else (IMAGE_SIZE, IMAGE_SIZE)


def corpus(n_captions: int = 4000, seed: int = 0) -> list[str]:
    """Every demo task's rendered prompt around generated captions."""
    out = []
    for i, scene in enumerate(training_scenes(seed, n_captions)):
        task = DEMO_TASKS[i % len(DEMO_TASKS)]
        out.append(render_prompt(get_task(task), scene.caption, *task_canvas(task)))
    return out


def build_tokenizer(num_codes: int, seed: int = 0):
    """A tokenizers.Tokenizer with the text BPE and every Lumina special token."""
    tok = train_text_tokenizer(corpus(seed=seed), vocab_size=TEXT_VOCAB)
    add_lumina_tokens(tok, num_codes, layout="released")
    return tok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for tokenizer.json and tokenizer_config.json")
    p.add_argument("--codes", type=int, default=512, help="number of MoVQGAN codes")
    args = p.parse_args(argv)
    tok = build_tokenizer(args.codes)
    save_tokenizer(args.out, tok)
    print(f"tokenizer: {tok.get_vocab_size(with_added_tokens=True)} tokens -> {args.out}")


if __name__ == "__main__":
    main()
