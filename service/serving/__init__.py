"""Serving trained models: names and aliases to artifacts, the model cache and LiteRT, image
decoding, and the TF Serving and KServe V2 protocols."""
