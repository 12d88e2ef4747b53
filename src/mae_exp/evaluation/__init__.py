"""What is measured: the probe, fine-tuning, reconstructions, the report, tuning on validation."""
