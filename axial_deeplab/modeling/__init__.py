"""Models: backbones, decoders, heads, losses and post-processing."""
