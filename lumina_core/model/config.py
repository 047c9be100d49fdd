"""Model configuration, read from a checkpoint's config.json (Hugging Face Chameleon field names)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields

from ..errors import CheckpointError


@dataclass
class LuminaConfig:
    vocab_size: int = 171385
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 10240
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    swin_norm: bool = False
    hidden_act: str = "silu"
    # Number of gamma/beta groups stored for the per-head q/k LayerNorm: upstream stores
    # (model_parallel_size, head_dim) and repeats over heads; transformers stores (heads, head_dim).
    # Read from the tensor shape at load time, not from config.json.
    q_norm_groups: int = 1
    k_norm_groups: int = 1
    qk_norm_eps: float = 1e-5
    # Token-name map from config.json (name -> id); used to find the image-code range.
    vocabulary_map: dict = field(default_factory=dict, repr=False)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, raw: dict) -> "LuminaConfig":
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in raw.items() if k in known and v is not None}
        if raw.get("rope_scaling"):
            raise CheckpointError(
                f"config.json asks for rope_scaling={raw['rope_scaling']!r}; Lumina-mGPT 2.0 uses plain RoPE "
                "and this engine does not implement scaled RoPE.")
        cfg = cls(**values)
        cfg.validate()
        return cfg

    @classmethod
    def from_file(cls, path: str) -> "LuminaConfig":
        try:
            with open(path, "r", encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise CheckpointError(f"config.json not found at {path}. A Lumina-mGPT checkpoint folder holds "
                                  "config.json, model*.safetensors and tokenizer.json.") from None
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path} is not valid JSON ({e}); re-download config.json.") from None
        model_type = raw.get("model_type")
        if model_type not in (None, "chameleon"):
            raise CheckpointError(f"{path} describes a '{model_type}' model; Lumina-mGPT 2.0 checkpoints have "
                                  "model_type 'chameleon'. Pick the Lumina-mGPT 2.0 folder.")
        return cls.from_dict(raw)

    def validate(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                                  f"{self.num_attention_heads}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                                  f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_act != "silu":
            raise CheckpointError(f"hidden_act '{self.hidden_act}' is not supported (expected 'silu').")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("q_norm_groups", "k_norm_groups", "qk_norm_eps")}
        out["model_type"] = "chameleon"
        return out


def read_config(checkpoint_dir: str) -> LuminaConfig:
    return LuminaConfig.from_file(os.path.join(checkpoint_dir, "config.json"))
