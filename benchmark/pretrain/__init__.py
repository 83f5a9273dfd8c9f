"""Pre-training: the encoder, the contrastive losses, the pair corpus methods sample from, and
the one training loop. Imports the layers below it (data, separation); never the pipeline."""
