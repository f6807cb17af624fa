"""Frozen-encoder evaluation: features over an eval pass, weighted kNN, linear probe.

  features.extract_features(apply_fn, params, iterator) -> (feats [n, D], labels [n]) numpy
  knn.knn_classify(train_feats, train_labels, test_feats, k, temperature, num_classes)
  knn.knn_evaluate(apply_fn, params, train_iter, test_iter, ...) -> {"knn/top1": ...}
  linear_probe.train_linear_probe(feats, labels, num_classes, ...) -> LinearProbe

Depends on models only: the caller builds the eval iterators (`mim_jax.data.input_pipeline.
make_eval_iterator`, which pads the last batch and marks real rows with "valid").
"""
