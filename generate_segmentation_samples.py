"""Placeholder until its issue lands."""

import sys

if __name__ == '__main__':
    print('generate_segmentation_samples.py: not implemented yet', file=sys.stderr)
    sys.exit(1)
