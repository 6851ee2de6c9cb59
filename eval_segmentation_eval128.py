"""Placeholder until its issue lands."""

import sys

if __name__ == '__main__':
    print('eval_segmentation_eval128.py: not implemented yet', file=sys.stderr)
    sys.exit(1)
