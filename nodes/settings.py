"""Settings nodes (kijai style): optional sampler inputs that keep the sampler itself small."""
from __future__ import annotations

from comfy_api.latest import io

from ..lumina_core.sjd import INITS, MODES, SJDecoder
from .types import ADVANCED, SJDType
from .validation import choice_problem, first_problem


class CountingForward:
    """The cached-step function SJD calls, counting its forwards so the sampler can show tokens per forward
    while it runs."""

    def __init__(self, forward_step):
        self.forward_step = forward_step
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.forward_step(*args, **kwargs)


class SJDSettings(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LuminaMGPT2SJDSettings",
            display_name="Lumina-mGPT 2.0 SJD Settings",
            category=ADVANCED,
            description="Speculative Jacobi decoding: each forward checks a window of guessed codes and keeps the "
                        "ones the model agrees with, so an image needs fewer forwards. 'exact' gives the same "
                        "distribution of images as plain sampling. Upstream advises against it for image-to-image "
                        "tasks.",
            inputs=[
                io.Int.Input("window", default=16, min=2, max=64,
                             tooltip="Codes per forward: the last known code plus window-1 guesses. 16 as upstream."),
                io.Combo.Input("init", options=list(INITS), default="random",
                               tooltip="How new guesses start: random codes, or the code one row above (spatial)."),
                io.Combo.Input("mode", options=list(MODES), default="exact",
                               tooltip="exact: lossless (same images in distribution as without SJD). upstream: "
                                       "upstream's acceptance rule, not lossless; for comparisons."),
            ],
            outputs=[SJDType.Output(display_name="sjd", tooltip="Connect to the sampler's 'sjd' input.")],
        )

    @classmethod
    def validate_inputs(cls, init: str, mode: str) -> bool | str:
        return first_problem(choice_problem("init", init, INITS), choice_problem("mode", mode, MODES))

    @classmethod
    def execute(cls, window: int, init: str, mode: str) -> io.NodeOutput:
        return io.NodeOutput({"window": window, "init": init, "mode": mode})


def sjd_decoder(settings: dict, engine) -> tuple[SJDecoder, CountingForward]:
    counter = CountingForward(engine.forward_step)
    return SJDecoder(**settings, forward=counter), counter
