"""SASRec surrogate: model, batching, training with early stopping, full-ranking evaluation (no IO)."""
