"""The papers' experiments: gradient flow, ResNet-vs-plain comparisons, degradation, report."""
