"""Scorers for best-of-N: each maps a batch of candidates to one number per candidate, higher is better.

Interface: `score(prompt, result, images) -> FloatTensor [B]` on the CPU, where `result` is the
GenerationResult of the batch (codes, stats) and `images` the decoded output panels [B, H, W, 3] in
0..1, or None when the scorer says `needs_images = False`.
"""
from __future__ import annotations

import os

import torch

from ..errors import InputError


class LikelihoodScorer:
    """The model's own mean log-likelihood per image code under the guided (CFG) distribution.

    Summed by the samplers while they sample (DecodeStats.logprob), so it costs nothing extra and
    needs no other weights.
    """
    name = "likelihood"
    needs_images = False

    def score(self, prompt: str, result, images=None) -> torch.Tensor:
        if result.stats.logprob is None:
            raise InputError("this decoder did not record log-likelihoods; use the plain sampler or SJDecoder")
        return result.stats.logprob.float().cpu() / max(1, result.stats.image_tokens)


class CLIPScorer:
    """Cosine similarity of CLIP image and text embeddings (a transformers CLIPModel folder on disk:
    config.json, weights, tokenizer and preprocessor files, e.g. openai/clip-vit-large-patch14)."""
    name = "clip"
    needs_images = True

    def __init__(self, path: str, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32,
                 offload_device: str | torch.device | None = None):
        """offload_device: where the weights wait between scorings (e.g. "cpu" while a host needs the GPU for
        the image model); they move to `device` only inside `score`."""
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise InputError(f"{path} is not a CLIP model folder (no config.json). Download a transformers "
                             "CLIPModel (e.g. openai/clip-vit-large-patch14) into a folder and pass its path.")
        from transformers import CLIPModel, CLIPProcessor  # only this scorer needs transformers
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.offload_device = torch.device(offload_device) if offload_device is not None else None
        home = self.offload_device or self.device
        self.model = CLIPModel.from_pretrained(path, local_files_only=True).to(home, dtype).eval()
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        self.dtype = dtype

    def score(self, prompt: str, result, images: torch.Tensor) -> torch.Tensor:
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        inputs = self.processor(text=[prompt], images=list(pixels), return_tensors="pt", padding=True,
                                truncation=True)
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        self.model.to(self.device)
        try:
            with torch.inference_mode():
                out = self.model(**inputs)
        finally:
            if self.offload_device is not None:
                self.model.to(self.offload_device)
        image = torch.nn.functional.normalize(out.image_embeds.float(), dim=-1)
        text = torch.nn.functional.normalize(out.text_embeds.float(), dim=-1)
        return (image @ text[0]).cpu()
