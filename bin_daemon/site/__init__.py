"""Site learning: labelled frames from this bin's own site adapt the model without retraining.

``store`` keeps the examples (SQLite), ``teach`` adds one, ``head`` combines them with the
model's own classes, ``runtime`` applies the head to every frame.
"""
