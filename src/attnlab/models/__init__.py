"""Pure-torch models: no lightning, hydra or omegaconf imports in this package."""
