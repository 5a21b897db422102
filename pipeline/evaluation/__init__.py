"""Scoring: frozen feature extractors (Inception-v3, the aisfx sound embedding), distances with
bootstrap intervals, the frozen judge (logistic regression on those features) and the table.

Nothing here is trained on generated data, and nothing is picked up implicitly: every weight
file comes from a pinned wheel (or a file named in ``params.yaml`` with its hash) and is
hash-checked before it is loaded.
"""
