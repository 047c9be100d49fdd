"""How weights and caches are held: int8 and int4 weight-only layers and their kernels, the KV cache (bf16 or
int8), where the embedding table lives, the planner that picks what fits a card, and the system memory left
in a container.

Floor 2: may import lumina_core.errors and lumina_core.layout only (no other room).
"""
