"""ComfyUI adapters of the MOVA pack: one module per concern, each exporting a ``NODES`` list."""
