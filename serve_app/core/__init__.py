"""Pure request logic: types, audio, the per-file pipeline, text rules.

No Ray, no HTTP, no model stage: every package may import this one; it imports none of them.
"""
