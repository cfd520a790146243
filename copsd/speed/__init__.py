"""Speed measurements as commands (`copsd speed rollout`, `copsd speed step`): each measures the
transformers reference in the same run as ours, on random-weight Qwen3 shapes."""
