"""Generative Adversarial Distillation: black-box on-policy distillation of LLMs."""
