"""Placeholder until its issue lands."""

import sys

if __name__ == '__main__':
    print('train_ILS_128.py: not implemented yet', file=sys.stderr)
    sys.exit(1)
