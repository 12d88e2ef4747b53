"""Pre-training and fine-tuning's machinery: the loop, the optimiser, augmentation, FLOPs, processes."""
