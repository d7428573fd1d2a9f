"""Tasks: thin LightningModules, one per kind of problem (classification, reconstruction, language modelling).

A task wraps a pure-torch model (attnlab.models) and owns its loss, metrics and test-time figures; the optimizer
and schedule come in as factories from attnlab.optim. Imports models, optim, plots and tracking, never data.
"""
