"""training/dataset.py, drc.py, image_files.py: DRC layouts, folders, zips, pairs, x-flip/subset, errors and
the inspection CLI."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import _fixtures as fx
import dnnlib
from training import dataset as ds
from training import drc, image_files, synthetic

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def expected_resize(array: np.ndarray, r: int) -> np.ndarray:
    """Independent reference: PIL bilinear resize of an HWC array, returned as CHW."""
    return np.asarray(Image.fromarray(array).resize((r, r), Image.Resampling.BILINEAR)).transpose(2, 0, 1)


def decoded(path: str) -> np.ndarray:
    return np.asarray(Image.open(path).convert('RGB'))


@pytest.fixture(scope='module')
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp('drc')
    info = {'birds': fx.build_cub(str(base / 'birds'))}
    for kind in ('dogs', 'cars'):
        info[kind] = fx.build_mrcnn(str(base / kind), kind)
    return base, info


# ----------------------------------------------------------------------------------------------
# CUB.

@pytest.mark.parametrize('r', [64, 128])
def test_cub_train_is_split_0_centre_cropped(trees, r):
    base, info = trees
    d = ds.open_dataset('cub', 'train', r, data_root=str(base / 'birds'))
    assert len(d) == 3 and d.name == f'cub{r}' and not d.has_masks and d.resolution == r
    for i, item_id in enumerate(info['birds']['train_ids']):   # sorted by id: wide, tall, square
        img, label = d[i]
        assert img.shape == (3, r, r) and img.dtype == np.uint8 and label.shape == (0,)
        src = decoded(str(base / 'birds' / 'images' / info['birds']['items'][item_id][0]))
        top, left, side = fx.centre_square(src.shape[1], src.shape[0])
        np.testing.assert_array_equal(img, expected_resize(src[top:top + side, left:left + side], r))
        # Only the red centre square survives (JPEG at quality 100 keeps colours within a few units).
        assert img[0].min() > 200 and img[1:].max() < 60


def test_cub_test_uses_the_hand_computed_box_crop(trees):
    base, info = trees
    d = ds.open_dataset('bird', 'test', 64, data_root=str(base / 'birds'))
    assert len(d) == 2 and d.has_masks and d.name == 'cub64-test'
    img, mask = d[0]                                             # id 3, box (0, 5, 33, 21)
    left, top, right, bottom = info['birds']['box_crop']
    src = decoded(str(base / 'birds' / 'images' / info['birds']['items'][3][0]))
    np.testing.assert_array_equal(img, expected_resize(src[top:bottom, left:right], 64))
    assert img[0].min() > 200 and img[2].max() < 60              # the crop holds red only, no blue border
    # Mask: object at rows 10..29, cols 15..34 of the image and of the 40×36 crop (both clipped at 0).
    grey = np.zeros((36, 40), np.uint8)
    grey[10:30, 15:35] = 255
    ref = np.asarray(Image.fromarray(grey).resize((64, 64), Image.Resampling.BILINEAR)) > 127
    np.testing.assert_array_equal(mask, ref.astype(np.uint8))
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1}


def test_cub_mask_threshold_is_half(trees):
    base, _ = trees
    _img, mask = ds.open_dataset('birds', 'test', 128, data_root=str(base / 'birds'))[1]   # id 5, crop = whole image
    np.testing.assert_array_equal(mask[0, :8], [0, 0, 1, 1, 0, 0, 1, 1])   # grey 0, 127, 128, 255, ...


def test_cub_rows_are_matched_by_id_not_order(trees):
    # The split and box files list ids in reverse/shuffled order; by-id parsing keeps val id 4 out.
    base, _ = trees
    d = ds.open_dataset('cub', 'train', 64, data_root=str(base / 'birds'))
    assert [os.path.basename(r.image) for r in d.records] == ['wide.jpg', 'tall.jpg', 'square.jpg']
    t = ds.open_dataset('cub', 'test', 64, data_root=str(base / 'birds'))
    assert [r.box for r in t.records] == [(0, 5, 33, 21), (21, 21, 86, 86)]


# ----------------------------------------------------------------------------------------------
# Dogs and cars.

@pytest.mark.parametrize('kind', ['dogs', 'cars'])
@pytest.mark.parametrize('r', [64, 128])
def test_mrcnn_train_reads_rgb_and_centre_crops(trees, kind, r):
    base, info = trees
    d = ds.open_dataset(kind[:-1], 'train', r, data_root=str(base / kind))
    assert len(d) == 3 and d.name == f'{kind[:-1]}{r}'
    red, _ = d[0]
    assert red.shape == (3, r, r) and red.dtype == np.uint8
    assert (red[0] == 255).all() and (red[1:] == 0).all()        # RGB, not BGR
    for i, token in ((1, 't_wide'), (2, 't_tall')):
        src = info[kind]['train'][token]
        top, left, side = fx.centre_square(src.shape[1], src.shape[0])
        img, _ = d[i]
        np.testing.assert_array_equal(img, expected_resize(src[top:top + side, left:left + side], r))
        assert (img[0] == 255).all() and (img[1:] == 0).all()    # no blue/green marker survives


@pytest.mark.parametrize('kind', ['dogs', 'cars'])
def test_mrcnn_test_images_resized_and_masks_dithered_as_the_original(trees, kind):
    base, info = trees
    d = ds.open_dataset(kind, 'test', 64, data_root=str(base / kind))
    assert len(d) == 2 and d.has_masks
    img, mask = d[0]                                             # 64×64: no resize
    assert (img[0] == 255).all() and (img[1:] == 0).all()
    # Columns 0, 127, 128, 255 repeating: 0 and 255 stay, the two grey columns are Floyd–Steinberg
    # dithered (about half foreground), where a > 127 threshold would give 0 and 1.
    assert (mask[:, 0::4] == 0).all() and (mask[:, 3::4] == 1).all()
    grey = mask[:, 1::4].mean() + mask[:, 2::4].mean()
    assert 0.8 < grey < 1.2 and 0 < mask[:, 1::4].mean() < 1
    # The original: PIL mode '1' (dithered), resized in mode '1' (always nearest), > 0.5.
    path = os.path.join(base, kind, 'data_mrcnn', 'test', 'resized', 's_thresh_maskresized.png')
    for r in (64, 48):
        _, mask = ds.open_dataset(kind, 'test', r, data_root=str(base / kind))[0]
        with Image.open(path) as original:
            np.testing.assert_array_equal(mask, np.asarray(original.convert('1').resize((r, r)), np.uint8))
    img, mask = d[1]                                             # 192×80 stretched to 64×64, no crop
    src_img, src_mask = info[kind]['test']['s_stripes']
    np.testing.assert_array_equal(img, expected_resize(src_img, 64))
    # Thresholded, then nearest-resized: source column 3i+1 (a stripe) lands on column i, so the
    # mask is all foreground; a bilinear resize would average each stripe to grey 85 → background.
    assert mask.all()


def test_object_token_arrays_are_read(tmp_path):
    fx.build_mrcnn(str(tmp_path / 'dogs'), 'dogs', object_tokens=True)
    assert len(ds.open_dataset('dog', 'test', 64, data_root=str(tmp_path / 'dogs'))) == 2


@pytest.mark.parametrize('array', [
    np.array(['0', '1', '20'], dtype=object),                       # DRC-style object array of str
    np.array(['0', '1', '20']),                                     # plain unicode array
    np.array([np.str_('0'), b'1', 20], dtype=object),               # NumPy scalar, bytes and int elements
    np.array([[0, 1], [20, 3]], dtype=np.int64).T,                  # Fortran-ordered integers
], ids=['object-str', 'unicode', 'object-mixed', 'int-fortran'])
def test_split_file_tokens_load_without_unpickling_code(tmp_path, array):
    path = str(tmp_path / 'split.npy')
    np.save(path, array, allow_pickle=True)
    expected = [str(t.decode() if isinstance(t, bytes) else t) for t in np.ravel(array)]
    assert drc.load_tokens(path) == expected


class _Payload:
    """An array element whose unpickling runs ``touch flag`` (reliability probe row 41)."""

    def __init__(self, flag):
        self.flag = flag

    def __reduce__(self):
        return os.system, (f'touch {self.flag}',)


def test_split_file_with_a_pickle_payload_runs_nothing_and_is_one_line_exit_2(tmp_path):
    fx.build_mrcnn(str(tmp_path / 'dogs'), 'dogs')
    flag = tmp_path / 'PWNED_NPY'
    split = tmp_path / 'dogs' / 'data_tr_sel.npy'
    np.save(split, np.array([_Payload(str(flag)), 't_red'], dtype=object), allow_pickle=True)
    with pytest.raises(dnnlib.UserError, match=r'is not a plain array of file tokens; refusing to unpickle posix\.system'):
        drc.load_tokens(str(split))
    proc = subprocess.run([sys.executable, '-m', 'training.dataset', '--data=dog', f'--data-root={tmp_path / "dogs"}',
                           '--resolution=32'], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f'error: {split} is not a plain array of file tokens; refusing to unpickle posix.system; '
        f'replace it with the one from the dataset release']
    assert not flag.exists()


def test_split_file_holding_other_objects_is_refused(tmp_path):
    path = str(tmp_path / 'split.npy')
    np.save(path, np.array([{'a': 1}, 't_red'], dtype=object), allow_pickle=True)
    with pytest.raises(dnnlib.UserError, match='not a plain array of file tokens .it holds a dict'):
        drc.load_tokens(path)
    with open(path, 'wb') as f:
        f.write(b'not an npy file')
    with pytest.raises(dnnlib.UserError, match='cannot read split file .*split.npy'):
        drc.load_tokens(path)


def test_root_from_environment_and_parent_folder(trees, monkeypatch):
    base, _ = trees
    monkeypatch.setenv('ILSGAN_DATA_ROOT', str(base))
    assert len(ds.open_dataset('car', 'train', 64)) == 3
    monkeypatch.delenv('ILSGAN_DATA_ROOT')
    assert len(ds.open_dataset('car', 'train', 64, data_root=str(base))) == 3   # DRC_processed itself
    monkeypatch.chdir(base.parent)
    with pytest.raises(dnnlib.UserError, match=os.path.join('datasets', 'DRC_processed', 'cars')):
        ds.open_dataset('car')


# ----------------------------------------------------------------------------------------------
# x-flip and subsets.

def test_xflip_doubles_with_mirrored_copies(tmp_path):
    fx.build_pairs(str(tmp_path / 'samples'), count=3, size=16)
    plain = ds.open_dataset(str(tmp_path / 'samples'), 'test', 16)
    flipped = ds.open_dataset(str(tmp_path / 'samples'), 'test', 16, xflip=True)
    assert len(flipped) == 2 * len(plain)
    for i in range(len(plain)):
        np.testing.assert_array_equal(flipped[i][0], plain[i][0])
        np.testing.assert_array_equal(flipped[len(plain) + i][0], plain[i][0][:, :, ::-1])
        np.testing.assert_array_equal(flipped[len(plain) + i][1], plain[i][1][:, ::-1])
    with pytest.raises(IndexError):
        flipped[len(flipped)]


def test_sample_cache_reads_each_file_once_within_its_budget_and_hands_out_copies(tmp_path, monkeypatch):
    fx.build_pairs(str(tmp_path / 'samples'), count=3, size=16)
    plain = ds.open_dataset(str(tmp_path / 'samples'), 'test', 16)
    cached = ds.open_dataset(str(tmp_path / 'samples'), 'test', 16, xflip=True)
    sample_bytes = 3 * 16 * 16 + 16 * 16                  # image [3, 16, 16] + mask [16, 16], uint8
    cached.cache_samples(2 * sample_bytes)               # room for two of the three samples
    reads = []
    real_read = cached._read_bytes
    monkeypatch.setattr(cached, '_read_bytes', lambda path: reads.append(path) or real_read(path))
    for _ in range(2):
        for i in range(len(cached)):                     # the mirrored half reads the same raw samples
            image, mask = cached[i]
            want_image, want_mask = plain[i % 3]
            if i >= 3:
                want_image, want_mask = want_image[:, :, ::-1], want_mask[:, ::-1]
            np.testing.assert_array_equal(image, want_image)
            np.testing.assert_array_equal(mask, want_mask)
    # Samples 0 and 1 are read once (image + mask); sample 2 does not fit and is read all 4 times.
    assert len(reads) == 2 * 2 + 4 * 2
    cached[0][0][:] = 7                                  # writing into a sample leaves the cache intact
    np.testing.assert_array_equal(cached[0][0], plain[0][0])


@pytest.mark.parametrize('name, kind', [('cub', 'birds'), ('dog', 'dogs'), ('car', 'cars')])
@pytest.mark.parametrize('r', [8, 64])
def test_samples_are_writable_arrays(trees, name, kind, r):
    """torch warns on every batch of read-only arrays (np.asarray of a PIL image is one)."""
    base, _ = trees
    for split in ('train', 'test'):
        image, mask = ds.open_dataset(name, split, r, data_root=str(base / kind))[0]
        assert image.flags.writeable and mask.flags.writeable, (name, split)


def test_max_size_is_a_seeded_deterministic_subset(tmp_path):
    for i in range(10):
        fx.write_image(str(tmp_path / 'imgs' / f'{i:02d}.png'), fx.solid(8, 8, (i * 20, 0, 0)))
    a = ds.open_dataset(str(tmp_path / 'imgs'), resolution=8, max_size=4, seed=3)
    b = ds.open_dataset(str(tmp_path / 'imgs'), resolution=8, max_size=4, seed=3)
    c = ds.open_dataset(str(tmp_path / 'imgs'), resolution=8, max_size=4, seed=4)
    assert len(a) == 4 and list(a.raw_indices) == list(b.raw_indices) == sorted(a.raw_indices)
    assert list(a.raw_indices) != list(c.raw_indices)
    assert [int(a[i][0][0, 0, 0]) for i in range(4)] == [20 * int(k) for k in a.raw_indices]


# ----------------------------------------------------------------------------------------------
# A user's own images.

def test_image_folder_and_zip_give_the_same_samples(tmp_path):
    fx.write_image(str(tmp_path / 'imgs' / 'a.png'), fx.marker_image(100, 60))
    fx.write_image(str(tmp_path / 'imgs' / 'sub' / 'b.png'), fx.solid(30, 30, fx.GREEN))
    (tmp_path / 'imgs' / 'notes.txt').write_text('not an image')
    with zipfile.ZipFile(tmp_path / 'imgs.zip', 'w') as z:
        z.write(tmp_path / 'imgs' / 'a.png', 'a.png')
        z.write(tmp_path / 'imgs' / 'sub' / 'b.png', 'sub/b.png')
    folder = ds.open_dataset(str(tmp_path / 'imgs'), resolution=16)
    archive = ds.open_dataset(str(tmp_path / 'imgs.zip'), resolution=16)
    assert len(folder) == len(archive) == 2 and folder.name == 'imgs16' and not folder.has_masks
    for i in range(2):
        np.testing.assert_array_equal(folder[i][0], archive[i][0])
    assert (folder[0][0][0] == 255).all() and (folder[0][0][1:] == 0).all()   # centre crop of the marker
    assert (folder[1][0][1] == 255).all()


@pytest.mark.parametrize('use_pyspng', [True, False])
def test_grey_palette_and_alpha_images_become_rgb(tmp_path, monkeypatch, use_pyspng):
    if not use_pyspng:
        monkeypatch.setattr(image_files, 'pyspng', None)         # the PIL fallback decoder
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    grey = rgb[:, :, 0]
    fx.write_image(str(tmp_path / 'imgs' / 'a_grey.png'), grey)
    fx.write_image(str(tmp_path / 'imgs' / 'b_rgba.png'), np.concatenate([rgb, np.full((8, 8, 1), 7, np.uint8)], 2))
    Image.fromarray(rgb).quantize(16).save(tmp_path / 'imgs' / 'c_palette.png')
    palette_rgb = np.asarray(Image.open(tmp_path / 'imgs' / 'c_palette.png').convert('RGB'))
    d = ds.open_dataset(str(tmp_path / 'imgs'), resolution=8)
    np.testing.assert_array_equal(d[0][0], np.stack([grey] * 3))
    np.testing.assert_array_equal(d[1][0], rgb.transpose(2, 0, 1))
    np.testing.assert_array_equal(d[2][0], palette_rgb.transpose(2, 0, 1))


def test_pair_folder_reads_masks_above_127(tmp_path):
    pairs = fx.build_pairs(str(tmp_path / 'samples'), count=3, size=32)
    d = ds.open_dataset(str(tmp_path / 'samples'), 'test', 32)
    assert len(d) == 3 and d.has_masks
    for i, (img, grey) in enumerate(pairs):
        got_img, got_mask = d[i]
        np.testing.assert_array_equal(got_img, img.transpose(2, 0, 1))
        np.testing.assert_array_equal(got_mask, (grey > 127).astype(np.uint8))


# ----------------------------------------------------------------------------------------------
# Errors: one line naming the file, never a traceback or a substituted sample.

def test_missing_root_is_a_user_error(tmp_path):
    with pytest.raises(dnnlib.UserError, match='dataset folder not found.*nowhere'):
        ds.open_dataset('dog', data_root=str(tmp_path / 'nowhere'))


def test_missing_split_file_is_named(tmp_path):
    fx.build_mrcnn(str(tmp_path / 'cars'), 'cars')
    os.remove(tmp_path / 'cars' / 'data_mrcnn_test_select.npy')
    with pytest.raises(dnnlib.UserError, match='data_mrcnn_test_select.npy'):
        ds.open_dataset('car', 'test', data_root=str(tmp_path / 'cars'))
    fx.build_cub(str(tmp_path / 'birds'))
    os.remove(tmp_path / 'birds' / 'bounding_boxes.txt')
    with pytest.raises(dnnlib.UserError, match='bounding_boxes.txt'):
        ds.open_dataset('cub', 'test', data_root=str(tmp_path / 'birds'))


def test_listed_but_absent_file_is_named_at_open(tmp_path):
    fx.build_mrcnn(str(tmp_path / 'dogs'), 'dogs')
    os.remove(tmp_path / 'dogs' / 'data_mrcnn' / 'test' / 'resized' / 's_stripes_maskresized.png')
    with pytest.raises(dnnlib.UserError, match='s_stripes_maskresized.png is listed in .*data_te_sel.npy'):
        ds.open_dataset('dog', 'test', data_root=str(tmp_path / 'dogs'))


def test_corrupt_image_is_named_on_access(tmp_path):
    fx.build_mrcnn(str(tmp_path / 'cars'), 'cars')
    bad = tmp_path / 'cars' / 'data_mrcnn' / 'train' / 'orig' / 't_wide_orig.png'
    bad.write_bytes(bad.read_bytes()[:60])                           # truncated PNG
    d = ds.open_dataset('car', 'train', data_root=str(tmp_path / 'cars'))
    d[0]
    with pytest.raises(dnnlib.UserError, match='cannot read image .*t_wide_orig.png') as err:
        d[1]
    assert '\n' not in str(err.value)


def test_unknown_name_and_maskless_test_split_are_user_errors(tmp_path):
    with pytest.raises(dnnlib.UserError, match="unknown dataset 'kittens'"):
        ds.open_dataset('kittens')
    fx.write_image(str(tmp_path / 'imgs' / 'a.png'), fx.solid(8, 8, fx.RED))
    with pytest.raises(dnnlib.UserError, match='no masks'):
        ds.open_dataset(str(tmp_path / 'imgs'), 'test')
    with pytest.raises(dnnlib.UserError, match='unknown split'):
        ds.open_dataset('synthetic', 'val')


# ----------------------------------------------------------------------------------------------
# The inspection command.

def test_cli_prints_sizes_and_writes_a_grid(trees, tmp_path):
    base, _ = trees
    grid = tmp_path / 'new' / 'grid.png'
    result = CliRunner().invoke(ds.main, ['--data=car', f'--data-root={base / "cars"}', '--resolution=32',
                                          f'--grid={grid}'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {'train': 3, 'test': 2, 'resolution': 32}
    # 3 train images (one row of 8 tiles), then 2 test images above their masks (two rows).
    assert Image.open(grid).size == (8 * 32, 3 * 32)


def test_cli_fails_naming_a_corrupt_mask(tmp_path):
    fx.build_mrcnn(str(tmp_path / 'dogs'), 'dogs')
    bad = tmp_path / 'dogs' / 'data_mrcnn' / 'test' / 'resized' / 's_stripes_maskresized.png'
    bad.write_bytes(b'not a png at all')
    proc = subprocess.run([sys.executable, '-m', 'training.dataset', '--data=dog', f'--data-root={tmp_path / "dogs"}'],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 's_stripes_maskresized.png' in proc.stderr and 'Traceback' not in proc.stderr


# ----------------------------------------------------------------------------------------------
# Export of ground-truth pairs (the segmentation ceiling).

def test_export_round_trips_images_exactly_and_masks_as_0_or_255(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 3, 16, 16), dtype=np.uint8)
    masks = rng.integers(0, 2, (5, 16, 16), dtype=np.uint8)
    out = tmp_path / 'gt'
    out.mkdir()                                                  # an existing empty folder is fine
    assert ds.export_pairs(image_files.ArrayDataset('toy16', images, masks), str(out), count=4, source={'data': 'toy'}) == 4
    assert sorted(os.listdir(out / 'img')) == sorted(os.listdir(out / 'mask')) == [f'{i:06d}.png' for i in range(1, 5)]
    for i in range(4):
        np.testing.assert_array_equal(decoded(str(out / 'img' / f'{i + 1:06d}.png')), images[i].transpose(1, 2, 0))
        np.testing.assert_array_equal(decoded(str(out / 'mask' / f'{i + 1:06d}.png')),
                                      np.repeat(masks[i][:, :, None] * 255, 3, axis=2))
    meta = json.loads((out / 'meta.json').read_text())
    assert meta['n'] == 4 and meta['resolution'] == 16 and meta['data'] == 'toy' and meta['ground_truth']
    back = ds.open_dataset(str(out), 'test', 16)                 # what eval_segmentation.py --syn-data reads
    assert len(back) == 4
    for i in range(4):
        np.testing.assert_array_equal(back[i][0], images[i])
        np.testing.assert_array_equal(back[i][1], masks[i])


def test_export_refuses_maskless_sets_non_empty_folders_and_too_many_pairs(tmp_path):
    images = np.zeros((2, 3, 8, 8), np.uint8)
    with pytest.raises(dnnlib.UserError, match='has no masks'):
        ds.export_pairs(image_files.ArrayDataset('plain8', images, None), str(tmp_path / 'a'))
    assert not (tmp_path / 'a').exists()
    with_masks = image_files.ArrayDataset('toy8', images, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(dnnlib.UserError, match='holds 2'):
        ds.export_pairs(with_masks, str(tmp_path / 'b'), count=3)
    (tmp_path / 'c').mkdir()
    (tmp_path / 'c' / 'keep.txt').write_text('mine')
    with pytest.raises(dnnlib.UserError, match='not empty') as err:
        ds.export_pairs(with_masks, str(tmp_path / 'c'))
    assert '\n' not in str(err.value) and os.listdir(tmp_path / 'c') == ['keep.txt']


def test_cli_exports_the_synthetic_train_split_with_its_masks(tmp_path, monkeypatch):
    monkeypatch.setitem(synthetic.DEFAULT_NUM_IMAGES, 'train', 3)
    out = tmp_path / 'gt'
    result = CliRunner().invoke(ds.main, ['--data=synthetic', '--resolution=32', f'--export={out}', '--count=2'])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.strip().splitlines()[-1])['exported'] == 2
    reference = synthetic.generate('train', 2)                # independent: render at 128, box-filter to 32
    img32, mask32 = synthetic.downsample(reference['img'], reference['mask'], 4)
    for i in range(2):
        np.testing.assert_array_equal(decoded(str(out / 'img' / f'{i + 1:06d}.png')), img32[i].transpose(1, 2, 0))
        np.testing.assert_array_equal(decoded(str(out / 'mask' / f'{i + 1:06d}.png'))[:, :, 0], mask32[i] * 255)
    assert not (out / 'img' / '000003.png').exists()
    assert json.loads((out / 'meta.json').read_text())['split'] == 'train'


def test_cli_export_of_a_maskless_train_split_is_a_one_line_error(trees, tmp_path):
    base, _ = trees
    result = CliRunner().invoke(ds.main, ['--data=car', f'--data-root={base / "cars"}', f'--export={tmp_path / "gt"}'])
    assert result.exit_code == 2
    assert 'cars train split has no masks' in result.output and 't_red_maskorig.png' in result.output
    assert '--split=test' in result.output and 'Traceback' not in result.output
    assert not (tmp_path / 'gt').exists()


def expected_mask(grey: np.ndarray, r: int) -> np.ndarray:
    """Independent reference for a train mask: centre square crop, PIL bilinear resize, > 127."""
    top, left, side = fx.centre_square(grey.shape[1], grey.shape[0])
    crop = Image.fromarray(grey[top:top + side, left:left + side])
    return (np.asarray(crop.resize((r, r), Image.Resampling.BILINEAR)) > 127).astype(np.uint8)


def export_cli(tmp_path, data, root, r):
    out = tmp_path / 'gt'
    result = CliRunner().invoke(ds.main, [f'--data={data}', f'--data-root={root}', f'--resolution={r}',
                                          f'--export={out}', '--split=train'])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout.strip().splitlines()[-1])


def test_cli_exports_the_cub_train_split_with_its_segmentations_cropped_as_the_images(tmp_path):
    root = tmp_path / 'birds'
    fx.build_cub(str(root))
    sources = fx.add_train_masks(str(root), 'birds')
    out, printed = export_cli(tmp_path, 'cub', root, 32)
    assert printed['exported'] == 3 and sorted(os.listdir(out / 'mask')) == [f'{i:06d}.png' for i in (1, 2, 3)]
    # Ids 1, 2, 6: the wide, the tall and the square image, in id order as the GAN reads them.
    for i, rel in enumerate(['001.A/wide.jpg', '001.A/tall.jpg', '003.C/square.jpg']):
        image_path, grey = sources[rel]
        src = decoded(image_path)
        top, left, side = fx.centre_square(src.shape[1], src.shape[0])
        img = decoded(str(out / 'img' / f'{i + 1:06d}.png'))
        mask = decoded(str(out / 'mask' / f'{i + 1:06d}.png'))[:, :, 0]
        np.testing.assert_array_equal(img, expected_resize(src[top:top + side, left:left + side], 32).transpose(1, 2, 0))
        np.testing.assert_array_equal(mask, expected_mask(grey, 32) * 255)
        assert 0 < (mask > 0).mean() < 0.5
        # The image's red channel is its mask: they agree wherever JPEG noise cannot cross the threshold.
        clear = np.abs(img[:, :, 0].astype(int) - 127.5) > 16
        np.testing.assert_array_equal((img[:, :, 0] > 127)[clear], (mask > 0)[clear])
        assert clear.mean() > 0.8


@pytest.mark.parametrize('kind', ['dogs', 'cars'])
def test_cli_exports_mrcnn_train_masks_pixel_aligned_with_their_images(tmp_path, kind):
    root = tmp_path / kind
    fx.build_mrcnn(str(root), kind)
    sources = fx.add_train_masks(str(root), kind)
    out, printed = export_cli(tmp_path, kind[:-1], root, 32)
    assert printed['exported'] == 3
    for i, token in enumerate(['t_red', 't_wide', 't_tall']):                  # the split file's order
        _, grey = sources[f'{token}_orig.png']
        img = decoded(str(out / 'img' / f'{i + 1:06d}.png'))
        mask = decoded(str(out / 'mask' / f'{i + 1:06d}.png'))[:, :, 0]
        np.testing.assert_array_equal(mask, expected_mask(grey, 32) * 255)
        # Lossless PNG: the thresholded red channel of the exported image is the exported mask.
        np.testing.assert_array_equal((img[:, :, 0] > 127).astype(np.uint8) * 255, mask)
        assert 0 < (mask > 0).mean() < 0.5


# ----------------------------------------------------------------------------------------------
# Damaged metadata, split tokens and folders: one UserError naming the file, never a traceback.

@pytest.mark.parametrize('box,reason', [('a b c d', 'not four numbers'), ('nan 1 2 3', 'not four numbers'),
                                        ('1 1 0 5', 'w, h > 0'), ('1 1 inf 5', 'not four numbers')])
def test_damaged_cub_box_is_one_line_naming_the_file_and_the_image(tmp_path, box, reason):
    fx.build_cub(str(tmp_path / 'birds'))
    boxes = tmp_path / 'birds' / 'bounding_boxes.txt'
    lines = boxes.read_text().splitlines()
    lines = [f'3 {box}' if line.startswith('3 ') else line for line in lines]
    boxes.write_text('\n'.join(lines) + '\n')
    with pytest.raises(dnnlib.UserError) as info:
        ds.open_dataset('cub', 'test', data_root=str(tmp_path / 'birds'))
    assert str(info.value).startswith(f'{boxes}: the box of image id 3 is {box!r}') and reason in str(info.value)


def test_cub_box_of_fractional_pixels_reads_as_the_original_int_conversion():
    assert drc._parse_box(['0.0', '5.0', '33.9', '21.2'], 'boxes.txt', 3) == (0, 5, 33, 21)


@pytest.mark.parametrize('content', [b'1 001.A/wide.jpg\n2 \xff\xfe.jpg\n', b'\xb2 001.A/wide.jpg\n'])
def test_cub_table_that_is_not_utf8_text_or_has_a_non_decimal_id_is_one_line(tmp_path, content):
    fx.build_cub(str(tmp_path / 'birds'))
    (tmp_path / 'birds' / 'images.txt').write_bytes(content)
    with pytest.raises(dnnlib.UserError, match=r'images\.txt.*(UnicodeDecodeError|the file is damaged)'):
        ds.open_dataset('cub', 'train', data_root=str(tmp_path / 'birds'))
    (tmp_path / 'birds' / 'images.txt').write_text('\u00b2 001.A/wide.jpg\n')   # '²'.isdigit() is True
    with pytest.raises(dnnlib.UserError, match=r'images\.txt, line 1: expected'):
        ds.open_dataset('cub', 'train', data_root=str(tmp_path / 'birds'))


def test_split_file_of_bytes_that_are_not_utf8_is_one_line(tmp_path):
    path = str(tmp_path / 'split.npy')
    np.save(path, np.array([b't_red', b'\xff\xfe'], dtype='S'))
    with pytest.raises(dnnlib.UserError, match='holds a file token that is not UTF-8 text'):
        drc.load_tokens(path)


def test_unreadable_subfolder_of_an_image_folder_is_refused_not_skipped(tmp_path, monkeypatch):
    for folder in ('a', 'b'):
        fx.write_image(str(tmp_path / 'images' / folder / '0.png'), fx.solid(8, 8, fx.RED))
    refused = str(tmp_path / 'images' / 'b')
    scandir = os.scandir

    def scandir_refusing_b(path='.'):   # as chmod 000 does for a user who is not root
        if os.fspath(path) == refused:
            raise PermissionError(13, 'Permission denied', refused)
        return scandir(path)

    monkeypatch.setattr(os, 'scandir', scandir_refusing_b)
    with pytest.raises(dnnlib.UserError, match=f'^cannot list {refused} .Permission denied.; make it readable'):
        ds.open_dataset(str(tmp_path / 'images'), resolution=8)
    assert image_files.list_images(str(tmp_path / 'nowhere')) == []   # a missing folder: no images, reported by the caller


def test_zip_with_a_member_name_that_is_not_utf8_is_one_line(tmp_path):
    archive = tmp_path / 'images.zip'
    with zipfile.ZipFile(archive, 'w') as z:
        z.writestr('\u00e9.png', b'x')   # non-ASCII: written with the UTF-8 flag
    archive.write_bytes(archive.read_bytes().replace('\u00e9'.encode(), b'\xff\xfe'))
    with pytest.raises(dnnlib.UserError, match=f'cannot open {archive} as a folder or a zip archive of images'):
        ds.open_dataset(str(archive), resolution=8)


def test_png_declaring_more_pixels_than_the_bomb_limit_is_refused_before_decoding(tmp_path):
    path = fx.write_image(str(tmp_path / 'bomb.png'), fx.solid(4, 4, fx.RED))
    data = bytearray(open(path, 'rb').read())
    data[16:24] = (40000).to_bytes(4, 'big') * 2   # IHDR: 40000 x 40000 (its CRC is not checked first)
    with pytest.raises(dnnlib.UserError, match=r'^cannot read image bomb\.png \(.*\); replace or remove the file'):
        image_files.decode_rgb(bytes(data), 'bomb.png')
