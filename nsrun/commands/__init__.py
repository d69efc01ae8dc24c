"""The printing layer: one module per command, over the engine and the process side."""
