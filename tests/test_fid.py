"""FID/KID: formulas against direct numpy/scipy computations, the detector override, the real-set
cache, multi-process reduction, and the metric registry + JSON-lines report end to end; the
detector file read as data, and hostile detector files (made here) refused without running.

A tiny TorchScript module with the Inception call convention stands in for the detector; the
tests register it in ``metrics.detector.ARCHITECTURES``, so its files are rebuilt from their
tensors as the published detector's would be.
"""

import hashlib
import io
import json
import os
import pickle
import sys
import types
import zipfile
from typing import Tuple

import numpy as np
import pytest
import scipy.linalg
import torch

import dnnlib
from metrics import detector as detector_lib
from metrics import frechet, metric_main

FEATURE_DIM = 8

# The tests script their own detectors (and load their own as references): TorchScript is the
# protocol's detector format.
pytestmark = [pytest.mark.filterwarnings('ignore:`torch.jit.script` is deprecated:DeprecationWarning'),
              pytest.mark.filterwarnings('ignore:`torch.jit.load` is deprecated:DeprecationWarning')]


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


@pytest.fixture(autouse=True)
def tiny_architecture(monkeypatch):
    """The tiny detector as an architecture of ours: its files are read as tensors, never run."""
    monkeypatch.setitem(detector_lib.ARCHITECTURES, 'tiny-test', TinyDetector)


class Unregistered(torch.nn.Module):
    """An honest detector no architecture of ours matches: features = pooled @ weight, [N, 5]."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(-1, 1, 60).reshape(12, 5), requires_grad=False)

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, 2).flatten(1) @ self.weight


class RunsCodeOnLoad(torch.nn.Module):
    """Hostile: its ``__setstate__`` (run by torch.jit.load) creates the file ``canary``."""

    def __init__(self, canary: str):
        super().__init__()
        self.canary = canary

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32), 1).flatten(1)

    @torch.jit.export
    def __getstate__(self) -> Tuple[str, bool]:
        return (self.canary, self.training)

    @torch.jit.export
    def __setstate__(self, state: Tuple[str, bool]) -> None:
        self.canary = state[0]
        # The result is used so that TorchScript keeps the call: from_file(shared=True) creates the file.
        self.training = bool(torch.from_file(self.canary, True, 4).numel() > 0) and state[1]


class RunsCodeOnCall(TinyDetector):
    """Hostile: the tiny detector's weights, and a ``forward`` that creates the file ``canary``."""

    def __init__(self, canary: str):
        super().__init__()
        self.canary = canary

    def forward(self, x: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        touched = torch.from_file(self.canary, True, 4).sum() * 0
        pooled = torch.nn.functional.adaptive_avg_pool2d(x.to(torch.float32) / 255.0, 2).flatten(1)
        return pooled @ self.weight + self.bias + touched


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
    assert type(via_arg) is TinyDetector  # rebuilt as our module: the file's code is not used
    images = TinyDataset(num_items=5).images
    features = via_arg(torch.from_numpy(images), return_features=True)
    np.testing.assert_allclose(features.double().numpy(), tiny_detector_features(images), rtol=1e-5, atol=1e-5)


def test_rebuilt_detector_gives_exactly_the_features_of_the_torchscript_module(detector_path):
    """FID/KID cannot move: the rebuilt module's features equal the scripted file's, bit for bit."""
    images = torch.from_numpy(TinyDataset(num_items=9, seed=4).images)
    scripted = torch.jit.load(detector_path)  # our own file: safe to run here, as the reference
    rebuilt = detector_lib.load_detector(detector_path, 'cpu')
    assert torch.equal(rebuilt(images, return_features=True), scripted(images, return_features=True))


def test_archive_tensors_are_read_with_their_names_views_and_dtypes(tmp_path):
    class Nested(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2)
            self.register_buffer('every_other', torch.arange(8.0)[1::2])   # a view into a larger storage
            self.register_buffer('halves', torch.tensor([1.5, -2.0], dtype=torch.float16))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.lin(x)

    class Outer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = Nested()
            self.register_buffer('count', torch.tensor([7], dtype=torch.int64))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    module = Outer()
    path = tmp_path / 'nested.pt'
    torch.jit.script(module).save(str(path))
    tensors = detector_lib.read_archive_tensors(path.read_bytes())
    expected = module.state_dict()
    assert sorted(tensors) == sorted(expected) == ['count', 'inner.every_other', 'inner.halves', 'inner.lin.bias',
                                                   'inner.lin.weight']
    for name, value in expected.items():
        assert tensors[name].dtype == value.dtype and torch.equal(tensors[name], value), name
    assert tensors['inner.every_other'].tolist() == [1.0, 3.0, 5.0, 7.0]


def test_detector_of_no_known_architecture_or_digest_is_refused_unless_the_user_lets_it_run(tmp_path, capsys):
    path = tmp_path / 'unregistered.pt'
    torch.jit.script(Unregistered()).save(str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with pytest.raises(dnnlib.UserError) as info:
        detector_lib.load_detector(str(path), 'cpu')
    message = str(info.value)
    assert len(message.splitlines()) == 1
    assert str(path) in message and digest in message and '--detector-runs-code' in message
    assert 'ILSGAN_DETECTOR_RUNS_CODE=1' in message and 'runs its own code' in message
    # The user's opt-in: loaded with TorchScript, said in a warning, and the features are its own.
    detector = detector_lib.load_detector(str(path), 'cpu', runs_code=True)
    assert isinstance(detector, torch.jit.ScriptModule)
    assert f'running the code of the detector {path} (SHA-256 {digest})' in capsys.readouterr().err
    images = TinyDataset(num_items=3).images
    pooled = (images.astype(np.float64) / 255).reshape(3, 3, 2, 4, 2, 4).mean(axis=(3, 5)).reshape(3, 12)
    np.testing.assert_allclose(detector(torch.from_numpy(images), return_features=True).double().numpy(),
                               pooled @ Unregistered().weight.double().numpy(), rtol=1e-5, atol=1e-6)
    # The opt-in is remembered per call, not per file: without it the file is still refused.
    with pytest.raises(dnnlib.UserError, match='refusing the detector'):
        detector_lib.load_detector(str(path), 'cpu')


def test_detector_whose_setstate_runs_code_is_refused_in_one_line_and_never_runs(tmp_path):
    canary = tmp_path / 'PWNED-setstate'
    path = tmp_path / 'on-load.pt'
    torch.jit.script(RunsCodeOnLoad(str(canary))).save(str(path))
    assert not canary.exists()
    with pytest.raises(dnnlib.UserError) as info:
        detector_lib.load_detector(str(path), 'cpu')
    assert len(str(info.value).splitlines()) == 1 and 'own state (__getstate__/__setstate__)' in str(info.value)
    assert '--detector-runs-code' in str(info.value)
    with pytest.raises(dnnlib.UserError, match='refusing the detector'):
        detector_lib.check_detector(str(path))
    assert not canary.exists()
    # The file is live: the opt-in that says it runs code does run it.
    detector_lib.load_detector(str(path), 'cpu', runs_code=True, verbose=False)
    assert canary.exists()


def test_detector_whose_forward_runs_code_is_rebuilt_and_its_forward_never_runs(tmp_path):
    canary = tmp_path / 'PWNED-forward'
    path = tmp_path / 'on-call.pt'
    torch.jit.script(RunsCodeOnCall(str(canary))).save(str(path))
    images = TinyDataset(num_items=4).images
    for runs_code in (False, True):   # with the tensors of a known architecture, its code is never needed
        detector = detector_lib.load_detector(str(path), 'cpu', runs_code=runs_code)
        assert type(detector) is TinyDetector
        features = detector(torch.from_numpy(images), return_features=True)
        np.testing.assert_allclose(features.double().numpy(), tiny_detector_features(images), rtol=1e-5, atol=1e-5)
    assert not canary.exists()
    torch.jit.load(str(path))(torch.from_numpy(images))   # the file is live when run
    assert canary.exists()


def test_training_refuses_a_detector_that_runs_code_before_the_run_directory_exists(tmp_path):
    from click.testing import CliRunner
    import train_ILS_64
    canary = tmp_path / 'PWNED-cli'
    path = tmp_path / 'on-load.pt'
    torch.jit.script(RunsCodeOnLoad(str(canary))).save(str(path))
    out = tmp_path / 'runs'
    result = CliRunner().invoke(train_ILS_64.main, ['--outdir', str(out), '--data=synthetic', '--cfg=cpu',
                                                    '--metrics=fid10k_full', '--no-auto-test', f'--detector={path}'])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and lines[-1].startswith('error: refusing the detector ')
    assert sum(line.startswith('error:') for line in lines) == 1 and 'Traceback' not in result.output
    assert '--detector-runs-code' in lines[-1]
    assert not canary.exists() and not any(out.iterdir() if out.exists() else [])


def test_pickle_payload_in_a_torchscript_shaped_zip_is_not_unpickled(tmp_path):
    canary = tmp_path / 'PWNED-pickle'

    class Payload:
        def __reduce__(self):
            return os.system, (f'touch {canary}',)

    path = tmp_path / 'payload.pt'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('payload/data.pkl', pickle.dumps(Payload(), protocol=2))
        archive.writestr('payload/constants.pkl', pickle.dumps((), protocol=2))
        archive.writestr('payload/version', '3\n')
    with pytest.raises(dnnlib.UserError) as info:
        detector_lib.load_detector(str(path), 'cpu')
    assert f'data.pkl names {os.system.__module__}.system' in str(info.value) and 'refusing' in str(info.value)
    assert not canary.exists()


def test_an_archive_that_sets_attributes_on_the_names_it_is_given_cannot_reach_the_next_archive(tmp_path,
                                                                                               detector_path):
    # data.pkl, by hand: BUILD sets the dtype of the torch.FloatStorage stand-in, then BUILD with a slot
    # state sets the __defaults__ of the tensor rebuilder: objects that the next archive's names reach too.
    evil = (b'\x80\x02ctorch\nFloatStorage\n}X\x05\x00\x00\x00dtypeK\x01sb0'
            b'ctorch._utils\n_rebuild_tensor_v2\nN}X\x0c\x00\x00\x00__defaults__K\x01\x85s\x86b.')
    path = tmp_path / 'evil.pt'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('evil/data.pkl', evil)
        archive.writestr('evil/constants.pkl', pickle.dumps((), protocol=2))
    with pytest.raises(dnnlib.UserError, match='refusing the detector'):
        detector_lib.load_detector(str(path), 'cpu')
    copy = tmp_path / 'tiny-copy.pt'   # a path not yet loaded in this process
    copy.write_bytes(open(detector_path, 'rb').read())
    images = TinyDataset(num_items=3).images
    detector = detector_lib.load_detector(str(copy), 'cpu')
    assert type(detector) is TinyDetector
    np.testing.assert_allclose(detector(torch.from_numpy(images), return_features=True).double().numpy(),
                               tiny_detector_features(images), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('case', ['not a zip', 'zip without data.pkl', 'torch.save file', 'truncated',
                                  'damaged tensor data'])
def test_files_that_are_not_whole_torchscript_archives_are_refused_even_with_the_opt_in(tmp_path, detector_path, case):
    path = tmp_path / 'detector.pt'
    good = open(detector_path, 'rb').read()
    if case == 'not a zip':
        path.write_bytes(b'not a torchscript archive')
        reason = 'not a zip archive'
    elif case == 'zip without data.pkl':
        with zipfile.ZipFile(path, 'w') as archive:
            archive.writestr('notes/readme.txt', 'hello')
        reason = 'no data.pkl in the archive'
    elif case == 'torch.save file':
        torch.save({'weight': torch.zeros(3)}, path)
        reason = 'no constants.pkl: a torch.save file'
    elif case == 'truncated':
        path.write_bytes(good[:len(good) // 2])
        reason = 'not a zip archive'
    else:   # one byte of the weights changed: the member's CRC no longer matches
        with zipfile.ZipFile(io.BytesIO(good)) as archive:
            header = archive.getinfo(next(n for n in archive.namelist() if n.endswith('/data/0'))).header_offset
        # The data follow the 30-byte local header, its name and its extra field (lengths at 26 and 28).
        offset = header + 30 + int.from_bytes(good[header + 26:header + 28], 'little') \
            + int.from_bytes(good[header + 28:header + 30], 'little')
        damaged = bytearray(good)
        damaged[offset] ^= 0xFF
        path.write_bytes(bytes(damaged))
        reason = 'damaged archive'
    for runs_code in (False, True):
        with pytest.raises(dnnlib.UserError) as info:
            detector_lib.load_detector(str(path), 'cpu', runs_code=runs_code)
        message = str(info.value)
        assert len(message.splitlines()) == 1 and f'{path} is not a TorchScript detector ({reason}' in message


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


def test_a_detector_file_or_archive_larger_than_any_detector_is_refused_before_it_is_read(tmp_path, detector_path,
                                                                                        monkeypatch):
    monkeypatch.setattr(detector_lib, 'MAX_DETECTOR_BYTES', 1 << 20)
    big = tmp_path / 'big.pt'
    big.write_bytes(b'\0' * ((1 << 20) + 1))
    with pytest.raises(dnnlib.UserError, match=r'big.pt is not a TorchScript detector \(larger than 1 MB\)'):
        detector_lib.load_detector(str(big), 'cpu', runs_code=True)
    bomb = tmp_path / 'bomb.pt'   # 4 kB on disk, 8 MB once unpacked
    with zipfile.ZipFile(bomb, 'w', compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr('bomb/data.pkl', pickle.dumps({}, protocol=2))
        archive.writestr('bomb/constants.pkl', pickle.dumps((), protocol=2))
        archive.writestr('bomb/data/0', b'\0' * (8 << 20))
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(dnnlib.UserError, match='its members unpack to more than 1 MB'):
        detector_lib.load_detector(str(bomb), 'cpu', runs_code=True)


def test_the_projects_own_download_is_the_known_detector_and_a_copy_put_in_the_cache_by_hand_is_not(
        tmp_path, monkeypatch):
    monkeypatch.setenv('ILSGAN_CACHE', str(tmp_path / 'cache'))
    monkeypatch.setattr(detector_lib, '_loaded', {})
    cached = dnnlib.util.cached_url_path(detector_lib.DETECTOR_URL)
    os.makedirs(os.path.dirname(cached))
    torch.jit.script(Unregistered()).save(cached)   # no architecture of ours: trusted by digest only
    digest = hashlib.sha256(open(cached, 'rb').read()).hexdigest()
    with pytest.raises(dnnlib.UserError) as info:
        detector_lib.load_detector(None, 'cpu')
    assert f'the copy in the cache ({cached}) was not downloaded by this project: delete it' in str(info.value)
    assert digest in str(info.value)
    # The record open_url leaves beside its own downloads makes the file (and any copy of it) known.
    with open(cached + dnnlib.util.DOWNLOAD_DIGEST_SUFFIX, 'w') as f:
        f.write(digest)
    assert isinstance(detector_lib.load_detector(None, 'cpu'), torch.jit.ScriptModule)
    copy = tmp_path / 'copy.pt'
    copy.write_bytes(open(cached, 'rb').read())
    detector_lib.check_detector(str(copy))
    with open(cached + dnnlib.util.DOWNLOAD_DIGEST_SUFFIX, 'w') as f:
        f.write('0' * 64)   # a record of other bytes
    monkeypatch.setattr(detector_lib, '_loaded', {})
    with pytest.raises(dnnlib.UserError, match='refusing the detector'):
        detector_lib.load_detector(str(copy), 'cpu')


def test_runs_code_opt_in_from_the_flag_or_the_environment_and_never_from_a_resumed_run(monkeypatch, tmp_path):
    from click.testing import CliRunner
    import train_ILS_64
    monkeypatch.delenv('ILSGAN_DETECTOR_RUNS_CODE', raising=False)
    assert detector_lib.resolve_runs_code() is False and detector_lib.resolve_runs_code(True) is True
    for value, expected in (('1', True), ('yes', True), ('0', False), ('', False), ('off', False)):
        monkeypatch.setenv('ILSGAN_DETECTOR_RUNS_CODE', value)
        assert detector_lib.resolve_runs_code() is expected, value
    monkeypatch.setenv('ILSGAN_DETECTOR_RUNS_CODE', 'maybe')
    with pytest.raises(dnnlib.UserError, match="ILSGAN_DETECTOR_RUNS_CODE='maybe' is neither 1 nor 0"):
        detector_lib.resolve_runs_code()
    # A run file (training_options.json) cannot grant it: the option is never resumed.
    monkeypatch.delenv('ILSGAN_DETECTOR_RUNS_CODE')
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'network-snapshot-000000.pt').write_bytes(b'')   # only found by name in a --dry-run
    (run / 'training_options.json').write_text(json.dumps(dict(options=dict(
        data='synthetic', cfg='cpu', metrics='fid10k_full', kimg=0.5, detector_runs_code=True))))
    for extra, expected in (([], False), (['--detector-runs-code'], True)):
        result = CliRunner().invoke(train_ILS_64.main, [f'--resume={run}', f'--outdir={tmp_path / "out"}',
                                                        '--dry-run', *extra])
        assert result.exit_code == 0, result.output
        config = json.loads(result.output[result.output.index('\n{') + 1:])
        assert config['detector_runs_code'] is expected and config['kimg'] == 0.5   # kimg is resumed


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
    detector_lib.ARCHITECTURES['tiny-test'] = TinyDetector   # a fresh process: the fixture's registration is not here
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
