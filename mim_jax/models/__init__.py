"""Flax linen models: the student ViT, heads and decoders; shared layers."""
