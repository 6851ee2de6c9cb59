"""Train ILSGAN at 128×128 (preset ILS).

    python train_ILS_128.py --outdir=out --data=cub --data-root=DRC_processed/birds --gpus=2

The evaluation chain runs by hand afterwards (generate_segmentation_samples.py,
eval_segmentation_eval128.py, eval_MI_MINE.py).
"""

from metrics import training_hooks
from training.train_cli import make_main

main = make_main(resolution=128, hooks=training_hooks.HOOKS)

if __name__ == '__main__':
    main()
