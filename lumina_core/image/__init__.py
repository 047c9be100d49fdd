"""Pixels and image codes: the MoVQGAN image tokenizer, condition-image preparation and condition maps (canny),
and previews of partly generated images.

Floor 2: may import lumina_core.errors and lumina_core.layout only (no other room).
"""
