"""Pure-torch models: no lightning, hydra or omegaconf imports in this package.

A model maps a batch's inputs to tensors (logits or a reconstruction); losses and metrics live in attnlab.tasks.
Constructors take flat keyword arguments, so every model is usable from a notebook with no config.
"""
