"""Analysis of trained ViTs (towards_understanding_masked_distillation's measures).

Pure jnp functions, shapes in their docstrings; nothing here loads checkpoints except the CLI.

  attention   average attention distance, attention entropy, normalised mutual information
              between queries and keys, attention maps of chosen queries and of CLS
  spectra     token-level / image-level relative singular value spectra, relative log
              amplitude of the 2-D Fourier transform of feature maps
  hessian     Hessian-vector products, top-k eigenpairs by power iteration, Hutchinson trace,
              the loss surface along two directions (optionally filter-normalised)
  summary     every per-layer measure of one forward pass, in one jit-able function
  plots       PNGs of the above (matplotlib, Agg)
  cli         `python -m mim_jax.analysis --workdir runs/x --out runs/x/analysis`
"""
