"""What is specific to training ILSGAN: networks, losses, augmentation, datasets, presets, the loop."""
