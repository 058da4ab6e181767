"""The data plane: the compiled forwarding engine and its Python-side helpers."""
