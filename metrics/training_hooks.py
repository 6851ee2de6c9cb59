"""What the training command takes from the metrics package: :data:`HOOKS`, handed by
``train_ILS_64.py`` and ``train_ILS_128.py`` to :func:`training.train_cli.make_main`.

training/ sits below metrics/ and does not import it (only the training loop calls the metrics, as
StyleGAN3's does); the scripts sit above both and join them here. The fields are described in
:class:`training.train_cli.MetricsHooks`.
"""

from __future__ import annotations

from metrics import auto_test, detector, metric_main
from training.train_cli import MetricsHooks


def resolve_detector(path: str | None, runs_code: bool) -> tuple[str, bool]:
    """``--detector`` and ``--detector-runs-code`` → the detector and whether it may run code, with
    ``$ILSGAN_DETECTOR`` and ``$ILSGAN_DETECTOR_RUNS_CODE`` read for what was not given."""
    return detector.resolve_detector_path(path), detector.resolve_runs_code(runs_code)


def check_auto_test_sizes(sizes: dict | None, resolution: int, device: str) -> None:
    """UserError when the auto test's UNet or MINE critics (``auto_test_sizes`` of a training
    config, None for the defaults) cannot fit in the free memory of ``device``."""
    auto_test.check_sizes_fit(auto_test.AutoTestSizes.from_dict(sizes), resolution, device)


HOOKS = MetricsHooks(valid_metrics=metric_main.list_valid_metrics, resolve_detector=resolve_detector,
                     check_detector=detector.check_detector, check_test_data=auto_test.check_test_data,
                     check_test_split=auto_test.check_test_split, check_auto_test_sizes=check_auto_test_sizes,
                     run_auto_test=auto_test.run_auto_test)
