"""Shared building blocks. Shape legend used in comments throughout hymoe:
B = batch rows, T = new tokens per row, S = cached positions attended, H = hidden size,
N = attention heads, G = kv heads, D = head dim, R = MLA latent rank, E = experts,
K = experts per token, I = expert intermediate size, V = vocabulary.
"""
