"""Placeholder until its issue lands."""

import sys

if __name__ == '__main__':
    print('train_ILS_64.py: not implemented yet', file=sys.stderr)
    sys.exit(1)
