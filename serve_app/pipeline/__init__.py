"""The diffusion engine: model families, the guided sampler, and the pipeline.

Imports neither Ray nor web code. Submodules import torch themselves, so
importing this package stays cheap for the ingress.
"""
