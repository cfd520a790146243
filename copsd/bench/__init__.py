"""Benchmarks as commands (`copsd bench rollout`, `copsd bench step`): each measures the
transformers reference in the same run as ours, on random-weight Qwen3 shapes."""
