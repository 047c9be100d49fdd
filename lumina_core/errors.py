"""Errors raised by the engine. Each message says what is wrong and what to change."""


class LuminaError(Exception):
    """Base class for every error the engine raises on purpose."""


class CheckpointError(LuminaError):
    """A checkpoint file or folder is missing, corrupt, of the wrong kind or does not match the model."""


class TokenizerError(LuminaError):
    """The text tokenizer is missing a special token or is inconsistent with the model."""


class InputError(LuminaError, ValueError):
    """A user input (size, prompt, condition image, sampling option) cannot be used."""


class GenerationCancelled(LuminaError):
    """Generation was stopped by the caller's cancel check."""
