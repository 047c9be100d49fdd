"""ComfyUI entry point of the Lumina-mGPT 2.0 node pack.

Import guard: outside ComfyUI (pytest importing the repository, scripts using lumina_core) there is no
comfy_api, and nothing here may fail; inside ComfyUI the V3 nodes are registered via comfy_entrypoint.
"""
try:
    import comfy_api.latest  # noqa: F401  (only present inside ComfyUI)
except ImportError:
    pass
else:
    from .nodes import comfy_entrypoint  # noqa: F401

WEB_DIRECTORY = "./web"
