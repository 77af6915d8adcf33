"""cellbox.runtime: the container engine (no Jupyter imports)."""
