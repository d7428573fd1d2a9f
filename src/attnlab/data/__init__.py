"""Data: one LightningDataModule per data family, tokenizers, sources (hub or local files), batching.

Each data module states the facts a model needs (`facts()`: num_classes, vocab_size, ...) and what turns raw input into
the model's input (`preprocessing()`: a tokenizer, an image normalisation), and may save and reload artifacts (a trained
tokenizer) in a run directory. After `load_artifacts(run_dir)`, `facts()` and `preprocessing()` read no data: that is
how `attnlab.runs.load_model` rebuilds a trained model without its training data. Imports attnlab.errors and
attnlab.data only, never models or tasks.
"""
