"""Checkpoint formats that are not fusion's own, read (and written) here so the model and tokenizer classes know
none of them: HF transformers' Chameleon / Anole layout (``hf_chameleon``), Meta's original release
(``meta_chameleon``), taming-transformers' VQGAN names (``taming``) and Lightning's ``vqgan.ckpt``
(``lightning_ckpt``). ``fusion.convert`` detects a folder's layout and calls these.
"""
