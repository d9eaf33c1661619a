"""Experiments: jobs (train, prune), the demo, configs, the results store and reports."""
