"""Small complete example environments built on the public API (``at2po.ToolEnv``)."""
