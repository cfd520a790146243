"""What the experiments are about, as data: languages (and their prompt strings), evaluation
benchmarks, and training records. Each is a registry that plugins can add to."""
