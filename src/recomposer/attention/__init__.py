"""Attention processors installed by module name (processors.py), the controls that use them: an attention
store (store.py) and Prompt-to-Prompt (p2p.py)."""
