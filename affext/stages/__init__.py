"""The pipeline stages: CAMs, affinity labels, AffinityNet, random walk, evaluation."""
