"""Recipes (shell): ``sl``, ``dpo``, ``rl``, ``rlhf``, ``distill``; each a short script over the shared step loop."""
