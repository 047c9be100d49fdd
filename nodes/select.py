"""Select Best: keep the k best-scored candidates of a best-of-N run."""
from __future__ import annotations

from comfy_api.latest import io

from ..lumina_core import InputError
from .types import ADVANCED, TokensType


class SelectBest(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2SelectBest",
            display_name="Lumina-mGPT 2.0 Select Best",
            category=ADVANCED,
            description="Keeps the k candidates with the highest best-of-N scores, best first.",
            inputs=[
                TokensType.Input("tokens", tooltip="A best-of-N sampler's output (every candidate with its score)."),
                io.Int.Input("k", default=1, min=1, max=64, tooltip="How many candidates to keep."),
            ],
            outputs=[
                TokensType.Output(display_name="tokens", tooltip="The k best candidates, best first."),
                io.String.Output(display_name="scores", tooltip="Every candidate's seed and score, best first, "
                                                                "one per line (kept ones marked *)."),
            ],
        )

    @classmethod
    def execute(cls, tokens, k: int) -> io.NodeOutput:
        if tokens.scores is None:
            raise InputError("these tokens have no scores: connect a Best-of-N Settings node to the sampler's "
                             "best_of_n input.")
        order = tokens.scores.argsort(descending=True, stable=True)
        kept = order[: min(k, len(order))]
        lines = [f"{'*' if rank < len(kept) else ' '} seed {tokens.seeds[i]}: {float(tokens.scores[i]):.4f}"
                 for rank, i in enumerate(order.tolist())]
        return io.NodeOutput(tokens.select(kept), "\n".join(lines))
