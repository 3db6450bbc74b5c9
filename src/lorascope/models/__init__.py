"""Base models: building, pretraining and preparing them (``base``, ``tiny``), and loading them
as rerankers (``reranker``). Submodules import torch/transformers; import them directly."""
