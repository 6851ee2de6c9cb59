"""Train ILSGAN at 64×64 (presets ILS_predL [default], ILS_predN, ILS_learnL, ILS_learnN, ILS_L1; cpu = a 32 px CPU demo).

    python train_ILS_64.py --outdir=out --data=synthetic --cfg=cpu          # CPU demo (32 px), ~10 minutes
    python train_ILS_64.py --outdir=out --data=car --data-root=DRC_processed/cars --gpus=1
    torchrun --nproc_per_node=4 train_ILS_64.py --outdir=out --data=cub --data-root=...

After training, the auto test (generation → segmentation → MINE) runs unless --no-auto-test.
"""

from metrics import training_hooks
from training.train_cli import make_main

main = make_main(resolution=64, hooks=training_hooks.HOOKS)

if __name__ == '__main__':
    main()
