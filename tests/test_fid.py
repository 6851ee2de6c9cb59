"""FID/KID: formulas against direct numpy/scipy computations, the detector override, the real-set
cache, multi-process reduction, and the metric registry + JSON-lines report end to end.

A tiny TorchScript module with the Inception call convention stands in for the detector.
"""

import json
import os
import sys
import types

import numpy as np
import pytest
import scipy.linalg
import torch

import dnnlib
from metrics import detector as detector_lib
from metrics import frechet, metric_main

FEATURE_DIM = 8

# The tests script their own detector: TorchScript is the protocol's detector format.
pytestmark = pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:DeprecationWarning')


# ----------------------------------------------------------------------------------------------
# Fixtures: tiny detector, dataset and generator.

class TinyDetector(torch.nn.Module):
    """Inception call convention: uint8-range images [N, 3, H, W] -> features [N, 8]."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(12, FEATURE_DIM, generator=g), requires_grad=False)
        self.bias = torch.nn.Parameter(torch.randn(FEATURE_DIM, generator=g), requires_grad=False)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, 2).flatten(1)
        features = pooled @ self.weight + self.bias
        if return_features:
            return features
        return torch.softmax(features, dim=1)


def tiny_detector_features(images_uint8: np.ndarray) -> np.ndarray:
    """The tiny detector's features, computed directly in numpy from its weights: [N, 8] float64."""
    det = TinyDetector()
    n, c, h, w = images_uint8.shape
    pooled = (images_uint8.astype(np.float64) / 255).reshape(n, c, 2, h // 2, 2, w // 2).mean(axis=(3, 5))
    return pooled.reshape(n, -1) @ det.weight.double().numpy() + det.bias.double().numpy()


class TinyDataset:
    """Random uint8 images [3, 8, 8]; counts item reads to prove the cache is used."""

    def __init__(self, num_items=40, resolution=8, seed=1):
        rng = np.random.RandomState(seed)
        self.images = rng.randint(0, 256, size=[num_items, 3, resolution, resolution]).astype(np.uint8)
        self.reads = 0

    def __len__(self):
        return len(self.images)

    def __getitem__(self, idx):
        self.reads += 1
        return self.images[idx], np.zeros([0], np.float32)


class BankGenerator(torch.nn.Module):
    """Stand-in generator: returns the images of a fixed uint8 bank in order, as [-1, 1] floats."""

    def __init__(self, bank_uint8: np.ndarray, z_dim: int = 4):
        super().__init__()
        self.z_dim = z_dim
        self.bank = torch.from_numpy(bank_uint8)
        self.next = 0
        self.modes_seen = []

    def forward(self, z, truncation_psi=1.0, noise_mode='random'):
        assert z.shape[1] == self.z_dim and noise_mode == 'random'
        self.modes_seen.append(self.training)
        u = self.bank[self.next:self.next + len(z)].to(torch.float32)
        self.next += len(z)
        # (u - 127.5) / 127.5 maps back to u + 0.5 under x * 127.5 + 128, so truncation gives u.
        img = (u - 127.5) / 127.5
        return dict(img=img, fg=img, bg=img, mask=torch.ones_like(img[:, :1]))


@pytest.fixture(scope='module')
def detector_path(tmp_path_factory):
    path = tmp_path_factory.mktemp('detector') / 'tiny-detector.pt'
    torch.jit.script(TinyDetector()).save(str(path))
    return str(path)


# ----------------------------------------------------------------------------------------------
# Independent reference computations.

def direct_fid(feat1: np.ndarray, feat2: np.ndarray) -> float:
    """FID via the symmetric form Tr sqrtm(S1 S2) = Tr sqrtm(S1^1/2 S2 S1^1/2), through eigh."""
    mu1, mu2 = feat1.mean(0), feat2.mean(0)
    s1, s2 = np.cov(feat1, rowvar=False, bias=True), np.cov(feat2, rowvar=False, bias=True)
    return fid_by_eigh(mu1, s1, mu2, s2)


def fid_by_eigh(mu1, s1, mu2, s2) -> float:
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(np.clip(w, 0, None))) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sum(np.sqrt(np.clip(inner, 0, None))))


def direct_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased polynomial-kernel MMD^2 with explicit double loops."""
    d = x.shape[1]
    k = lambda a, b: (np.dot(a, b) / d + 1) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


# ----------------------------------------------------------------------------------------------
# Formulas.

def test_fid_from_stats_matches_direct_computation_on_random_gaussian_features():
    rng = np.random.RandomState(0)
    a = rng.randn(300, 6) @ rng.randn(6, 6)
    b = rng.randn(300, 6) @ rng.randn(6, 6) + 0.5
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False, bias=True), np.cov(b, rowvar=False, bias=True)
    assert frechet.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(direct_fid(a, b), rel=1e-8)
    # And against the textbook expression evaluated with scipy directly.
    textbook = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert frechet.fid_from_stats(mu1, s1, mu2, s2) == pytest.approx(textbook, rel=1e-10)


def test_fid_is_zero_for_identical_statistics():
    rng = np.random.RandomState(1)
    a = rng.randn(200, 5)
    mu, sigma = a.mean(0), np.cov(a, rowvar=False, bias=True)
    assert abs(frechet.fid_from_stats(mu, sigma, mu, sigma)) < 1e-9


def test_fid_matches_closed_form_for_diagonal_covariances():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)  # = 7.25 + 4 + 1
    assert expected == pytest.approx(12.25)
    assert frechet.fid_from_stats(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(expected, rel=1e-12)


def test_feature_stats_mean_and_covariance_match_numpy_over_batches():
    rng = np.random.RandomState(2)
    feats = rng.randn(50, 4) * 3 + 10  # offset mean: the E[xx^T] - mu mu^T form must still be accurate
    stats = frechet.FeatureStats(keep_features=True)
    for start in range(0, 50, 16):
        stats.append(torch.from_numpy(feats[start:start + 16]).float())
    mean, cov = stats.mean_cov()
    f32 = feats.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(mean, f32.mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f32, rowvar=False, bias=True), rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(stats.features(), feats.astype(np.float32))
    assert stats.count == 50


def test_mmd2_matches_direct_double_loop():
    rng = np.random.RandomState(3)
    x, y = rng.rand(12, 5), rng.rand(9, 5) + 0.2
    mmd2 = frechet.mmd2_unbiased_polynomial(torch.from_numpy(x), torch.from_numpy(y))
    assert mmd2 == pytest.approx(direct_mmd2(x, y), rel=1e-10)


def test_kid_with_one_full_subset_equals_direct_mmd():
    rng = np.random.RandomState(4)
    real, gen = rng.rand(15, 4).astype(np.float32), rng.rand(15, 4).astype(np.float32) * 1.5
    kid = frechet.kid_from_features(real, gen, num_subsets=1, max_subset_size=1000)
    # A full-size subset is a permutation of each set, to which the MMD is invariant.
    assert kid == pytest.approx(direct_mmd2(real.astype(np.float64), gen.astype(np.float64)), rel=1e-9)


def test_kid_averages_direct_mmd_over_its_subsets():
    rng = np.random.RandomState(5)
    real, gen = rng.rand(20, 3), rng.rand(14, 3) + 0.1
    subsets = frechet.kid_subset_indices(20, 14, num_subsets=4, max_subset_size=6, seed=7)
    assert len(subsets) == 4 and all(len(r) == len(g) == 6 and len(set(r)) == 6 for r, g in subsets)
    expected = np.mean([direct_mmd2(real[r], gen[g]) for r, g in subsets])
    kid = frechet.kid_from_features(real, gen, num_subsets=4, max_subset_size=6, seed=7)
    assert kid == pytest.approx(expected, rel=1e-10)
    assert frechet.KID_NUM_SUBSETS == 20 and frechet.KID_MAX_SUBSET_SIZE == 1000  # the original's kid10k_full



def test_latents_do_not_depend_on_batching():
    whole = frechet.latents_for_indices(range(6), 5)
    parts = torch.cat([frechet.latents_for_indices([0, 1], 5), frechet.latents_for_indices([2, 3, 4, 5], 5)])
    assert torch.equal(whole, parts) and whole.shape == (6, 5)
    assert abs(float(frechet.latents_for_indices(range(2000), 4).std()) - 1) < 0.05


# ----------------------------------------------------------------------------------------------
# Detector: override, loading, features through the pipeline, offline error.

def test_resolve_detector_path_prefers_explicit_then_environment_then_url(monkeypatch):
    monkeypatch.delenv('ILSGAN_DETECTOR', raising=False)
    assert detector_lib.resolve_detector_path() == detector_lib.DETECTOR_URL
    assert detector_lib.DETECTOR_URL.endswith('/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt')
    monkeypatch.setenv('ILSGAN_DETECTOR', '/env/detector.pt')
    assert detector_lib.resolve_detector_path() == '/env/detector.pt'
    assert detector_lib.resolve_detector_path('/cli/detector.pt') == '/cli/detector.pt'


def test_detector_from_explicit_path_and_environment_gives_features_of_the_saved_module(detector_path, monkeypatch):
    monkeypatch.setenv('ILSGAN_DETECTOR', detector_path)
    via_env = detector_lib.load_detector(detector_lib.resolve_detector_path(), 'cpu')
    via_arg = detector_lib.load_detector(detector_path, 'cpu')
    assert via_env is via_arg  # cached per (path, device)
    images = TinyDataset(num_items=5).images
    features = via_arg(torch.from_numpy(images), return_features=True)
    np.testing.assert_allclose(features.double().numpy(), tiny_detector_features(images), rtol=1e-5, atol=1e-5)


def test_dataset_features_through_pipeline_match_direct_statistics(detector_path):
    dataset = TinyDataset(num_items=37)
    det = detector_lib.load_detector(detector_path, 'cpu')
    stats = frechet.compute_dataset_features(dataset, det, 'cpu', keep_features=True, batch_size=8, num_workers=0)
    expected = tiny_detector_features(dataset.images)
    assert stats.count == 37 and dataset.reads == 37
    np.testing.assert_allclose(stats.features(), expected, rtol=1e-5, atol=1e-5)
    mean, cov = stats.mean_cov()
    np.testing.assert_allclose(mean, expected.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cov, np.cov(expected, rowvar=False, bias=True), rtol=1e-4, atol=1e-5)
    limited = frechet.compute_dataset_features(dataset, det, 'cpu', max_items=10, batch_size=4, num_workers=0)
    np.testing.assert_allclose(limited.mean_cov()[0], expected[:10].mean(0), rtol=1e-5, atol=1e-5)


def test_missing_detector_offline_is_a_user_error_naming_the_override():
    with pytest.raises(dnnlib.UserError, match='--detector'):
        detector_lib.load_detector('http://127.0.0.1:9/x.pt', 'cpu', timeout=2, verbose=False)
    with pytest.raises(dnnlib.UserError, match='not found'):
        detector_lib.load_detector('/nonexistent/inception.pt', 'cpu')


def test_corrupt_detector_file_is_a_user_error(tmp_path):
    path = tmp_path / 'broken.pt'
    path.write_bytes(b'not a torchscript archive')
    with pytest.raises(dnnlib.UserError, match='not a TorchScript detector'):
        detector_lib.load_detector(str(path), 'cpu')


# ----------------------------------------------------------------------------------------------
# Real-set cache.

def test_real_statistics_are_cached_once_and_reused(detector_path):
    kwargs = dict(data='tiny-cache-test', resolution=8)
    dataset = TinyDataset(num_items=24)
    first = frechet.real_features(kwargs, detector_path, 'cpu', dataset=dataset, num_workers=0)
    path = frechet.real_stats_cache_path(kwargs, detector_path, None, False)
    assert os.path.isfile(path) and os.path.dirname(path) == os.path.join(dnnlib.cache_dir(), 'gan-metrics')
    assert dataset.reads == 24
    mtime = os.stat(path).st_mtime_ns
    second = frechet.real_features(kwargs, detector_path, 'cpu', dataset=dataset, num_workers=0)
    assert dataset.reads == 24 and os.stat(path).st_mtime_ns == mtime  # read from disk, not recomputed
    np.testing.assert_array_equal(second.mean_cov()[1], first.mean_cov()[1])
    # The key covers what changes the numbers (max_items, kind, x-flip never), nothing else.
    assert frechet.real_stats_cache_path(kwargs, detector_path, 10, False) != path
    assert frechet.real_stats_cache_path(kwargs, detector_path, None, True) != path
    assert frechet.real_stats_cache_path({**kwargs, 'xflip': True}, detector_path, None, False) == path
    assert frechet.real_stats_cache_path(kwargs, detector_lib.DETECTOR_URL, None, False) != path
    third = frechet.real_features(kwargs, detector_path, 'cpu', dataset=dataset, use_cache=False, num_workers=0)
    assert dataset.reads == 48 and third.count == 24


# ----------------------------------------------------------------------------------------------
# Multi-process reduction (two CPU ranks over gloo).

def _sharded_worker(rank, world_size, init_file, detector_path, out_dir):
    torch.distributed.init_process_group('gloo', init_method=f'file://{init_file}', rank=rank, world_size=world_size)
    try:
        det = detector_lib.load_detector(detector_path, 'cpu')
        stats = frechet.compute_dataset_features(TinyDataset(num_items=23), det, 'cpu', keep_features=True,
                                                 batch_size=4, num_gpus=world_size, rank=rank, num_workers=0)
        mean, cov = stats.mean_cov()
        # One item for two ranks: rank 1's shard is empty and must still join the reduction.
        single = frechet.compute_dataset_features(TinyDataset(num_items=23), det, 'cpu', max_items=1, keep_features=True,
                                                  num_gpus=world_size, rank=rank, num_workers=0)
        np.savez(os.path.join(out_dir, f'rank{rank}.npz'), count=stats.count, mean=mean, cov=cov,
                 features=stats.features(), single=single.features(), single_count=single.count)
    finally:
        torch.distributed.destroy_process_group()


def test_sharded_statistics_over_two_ranks_equal_single_process(detector_path, tmp_path):
    torch.multiprocessing.spawn(_sharded_worker, args=(2, str(tmp_path / 'rendezvous'), detector_path, str(tmp_path)),
                                nprocs=2, join=True)
    expected = tiny_detector_features(TinyDataset(num_items=23).images)
    for rank in range(2):
        with np.load(tmp_path / f'rank{rank}.npz') as result:
            assert int(result['count']) == 23
            np.testing.assert_allclose(result['mean'], expected.mean(0), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(result['cov'], np.cov(expected, rowvar=False, bias=True), rtol=1e-4, atol=1e-5)
            # Rank-major order: rank 0 holds items 0, 2, 4, ...; rank 1 holds 1, 3, ...
            order = np.concatenate([np.arange(0, 23, 2), np.arange(1, 23, 2)])
            np.testing.assert_allclose(result['features'], expected[order], rtol=1e-5, atol=1e-5)
            assert int(result['single_count']) == 1
            np.testing.assert_allclose(result['single'], expected[:1], rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Registry, calc_metric end to end, report.

def test_registry_names_and_validation():
    assert metric_main.list_valid_metrics() == ['fid10k_full', 'kid10k_full', 'fid50k_full', 'kid50k_full']
    assert metric_main.is_valid_metric('fid10k_full') and not metric_main.is_valid_metric('fid10k')
    with pytest.raises(dnnlib.UserError, match='fid10k_full'):
        metric_main.calc_metric('is50k', BankGenerator(np.zeros([1, 3, 8, 8], np.uint8)), None, 'cpu')


def test_calc_metric_end_to_end_matches_direct_fid_and_kid(detector_path):
    dataset = TinyDataset(num_items=30, seed=11)
    bank = np.random.RandomState(12).randint(0, 200, size=[30, 3, 8, 8]).astype(np.uint8)
    real_feats, gen_feats = tiny_detector_features(dataset.images), tiny_detector_features(bank)
    kwargs = dict(data='tiny-e2e', resolution=8)
    common = dict(detector=detector_path, batch_size=7, num_gen=30, dataset=dataset, num_workers=0)

    generator = BankGenerator(bank).train()
    fid = metric_main.calc_metric('fid10k_full', generator, kwargs, 'cpu', **common)
    assert generator.modes_seen == [False] * 5 and generator.training  # run in eval mode, handed back as it came
    assert set(fid) == {'results', 'metric', 'total_time', 'total_time_str', 'num_gpus', 'num_gen'}
    assert fid['metric'] == 'fid10k_full' and fid['num_gen'] == 30 and fid['num_gpus'] == 1
    assert fid['results']['fid10k_full'] == pytest.approx(direct_fid(real_feats, gen_feats), rel=1e-4)

    kid = metric_main.calc_metric('kid10k_full', BankGenerator(bank), kwargs, 'cpu', **common)
    # 30 real vs 30 generated: every subset of size 30 is a permutation of both sets.
    assert kid['results']['kid10k_full'] == pytest.approx(direct_mmd2(real_feats, gen_feats), rel=1e-4)

    same = metric_main.calc_metric('fid50k_full', BankGenerator(dataset.images), kwargs, 'cpu', **common)
    assert abs(same['results']['fid50k_full']) < 1e-4  # generator reproducing the real set


def test_kid10k_averages_20_subsets_and_kid50k_100_as_the_original(detector_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(frechet, 'kid_from_features',
                        lambda real, gen, num_subsets, max_subset_size, **_: seen.setdefault(len(seen), num_subsets))
    bank = np.random.RandomState(5).randint(0, 256, size=[12, 3, 8, 8]).astype(np.uint8)
    common = dict(detector=detector_path, batch_size=6, num_gen=12, dataset=TinyDataset(12), num_workers=0)
    for name in ('kid10k_full', 'kid50k_full'):
        metric_main.calc_metric(name, BankGenerator(bank), dict(data='tiny-kid', resolution=8), 'cpu', **common)
    assert seen == {0: 20, 1: 100}


def test_calc_metric_opens_the_real_set_through_open_dataset_without_xflip(detector_path, monkeypatch):
    opened = []
    tiny = TinyDataset(num_items=12, seed=13)

    def fake_open_dataset(**kwargs):
        opened.append(kwargs)
        return tiny

    monkeypatch.setitem(sys.modules, 'training.dataset', types.SimpleNamespace(open_dataset=fake_open_dataset))
    kwargs = dict(data='tiny-open', resolution=8, xflip=True, max_size=12)
    result = metric_main.calc_metric('fid10k_full', BankGenerator(tiny.images), kwargs, 'cpu', detector=detector_path,
                                     num_gen=12, num_workers=0)
    assert opened == [dict(data='tiny-open', resolution=8, xflip=False, max_size=12)]
    assert abs(result['results']['fid10k_full']) < 1e-4
    metric_main.calc_metric('fid10k_full', BankGenerator(tiny.images), kwargs, 'cpu', detector=detector_path,
                            num_gen=12, num_workers=0)
    assert len(opened) == 1  # second run: real statistics from the cache, the dataset is not even opened


def test_report_metric_appends_json_lines_with_the_exact_keys(tmp_path):
    result = dict(results={'fid10k_full': 12.5}, metric='fid10k_full', total_time=3.2, total_time_str='3s', num_gpus=1)
    snapshot = str(tmp_path / 'network-snapshot-000200.pt')
    metric_main.report_metric(result, str(tmp_path), snapshot, 0.5)
    later = dict(result, results={'fid10k_full': 11.0})
    metric_main.report_metric(later, str(tmp_path), 'network-snapshot-000400.pt', 1.0)
    metric_main.report_metric(result, str(tmp_path), snapshot, 1.0, rank=1)  # other ranks never write
    lines = [json.loads(line) for line in (tmp_path / 'metric-fid10k_full.jsonl').read_text().splitlines()]
    assert len(lines) == 2
    assert list(lines[0]) == ['results', 'metric', 'total_time', 'total_time_str', 'num_gpus', 'snapshot_pkl',
                              'timestamp', 'sigma']
    assert lines[0]['snapshot_pkl'] == 'network-snapshot-000200.pt' and lines[0]['sigma'] == 0.5
    assert lines[1]['results'] == {'fid10k_full': 11.0} and lines[1]['snapshot_pkl'] == 'network-snapshot-000400.pt'
    assert lines[0]['timestamp'] <= lines[1]['timestamp']


@pytest.mark.gpu
def test_cuda_metrics_match_cpu(detector_path):
    dataset = TinyDataset(num_items=30, seed=21)
    bank = np.random.RandomState(22).randint(0, 256, size=[30, 3, 8, 8]).astype(np.uint8)
    common = dict(detector=detector_path, batch_size=8, num_gen=30, dataset=dataset, num_workers=0, use_cache=False)
    for name in ('fid10k_full', 'kid10k_full'):
        on_cpu = metric_main.calc_metric(name, BankGenerator(bank), None, 'cpu', **common)['results'][name]
        on_gpu = metric_main.calc_metric(name, BankGenerator(bank).cuda(), None, 'cuda', **common)['results'][name]
        assert on_gpu == pytest.approx(on_cpu, rel=1e-3, abs=1e-6)
