"""Checkpoint conversion, in one place: what teachers, `init_from`, export and resume share.

  names    the parameter names of each format (transformers ViT / BEiT / CLIP, timm) and the
           tables between them
  layout   tensor layouts between torch modules and the shared Flax layers (q/k/v fused or
           split, transposed kernels, the patch-embedding kernel), the student's position
           embedding, a shared relative position table unshared, CLIP's patch embedding on the
           student's normalisation
  resize   torch's bicubic kernel: position embeddings on another grid, teachers' input images
  scan     the student's `block{i}` and scanned-stack layouts, and restoring a train state
           written in the other one
"""
