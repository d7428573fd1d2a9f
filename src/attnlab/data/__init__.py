"""Data: one LightningDataModule per data family, tokenizers, sources (hub or local files), batching.

Each data module states the facts a model needs (`facts()`: num_classes, vocab_size, ...) and may save and reload
artifacts (a trained tokenizer) in a run directory. Imports attnlab.errors and attnlab.data only, never models or tasks.
"""
