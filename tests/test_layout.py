"""metrics/layout.py: do the generated masks follow the objects? Checked on hand-made masks."""

import numpy as np
import pytest

from metrics import layout


def rectangles(boxes, size=32):
    """[N, size, size] float masks, 1 inside each (top, left, height, width) box."""
    masks = np.zeros((len(boxes), size, size), np.float32)
    for mask, (top, left, h, w) in zip(masks, boxes):
        mask[top:top + h, left:left + w] = 1
    return masks


def random_boxes(rng, count, size=32):
    """Objects of the data's distribution: sides 4..19 px, anywhere inside the image."""
    boxes = []
    for _ in range(count):
        h, w = rng.integers(4, 20, size=2)
        boxes.append((rng.integers(0, size - h + 1), rng.integers(0, size - w + 1), h, w))
    return boxes


def test_geometry_of_a_rectangle_matches_the_hand_computation():
    mask = rectangles([(2, 8, 4, 4)], size=16)
    mask[0, 10, 0] = 0.5                     # exactly 0.5 is background (object is > 0.5) ...
    mask[0, 12, 0] = 0.3                     # ... and both are grey
    g = layout.mask_geometry(mask)
    # Columns 8..11 → centres (j + 0.5)/16 averaging 10/16; rows 2..5 → 4/16.
    assert g['x'][0] == pytest.approx(10 / 16) and g['y'][0] == pytest.approx(4 / 16)
    assert g['area'][0] == pytest.approx(16 / 256) and g['grey'][0] == pytest.approx(2 / 256)


def test_identical_centred_blobs_have_zero_spread_against_varied_data():
    data = rectangles(random_boxes(np.random.default_rng(0), 200))
    blobs = rectangles([(8, 8, 16, 16)] * 50)
    result = layout.compare_layouts(blobs, data)
    assert result['ratios'] == dict(position=0.0, x=0.0, y=0.0, area=0.0)
    assert result['generated']['mean_x'] == pytest.approx(0.5) and result['generated']['mean_y'] == pytest.approx(0.5)
    assert result['data']['position_spread'] > 0.1


def test_masks_drawn_from_the_data_distribution_have_ratios_near_one():
    rng = np.random.default_rng(1)
    result = layout.compare_layouts(rectangles(random_boxes(rng, 1000)), rectangles(random_boxes(rng, 1000)))
    for name, ratio in result['ratios'].items():
        assert ratio == pytest.approx(1.0, abs=0.1), name
    # The spread is the population std of the centroids, computed independently here.
    boxes = random_boxes(np.random.default_rng(2), 30)
    xs = [(left + w / 2) / 32 for _, left, _, w in boxes]
    ys = [(top + h / 2) / 32 for top, _, h, _ in boxes]
    stats = layout.layout_statistics(rectangles(boxes))
    assert stats['std_x'] == pytest.approx(np.std(xs)) and stats['std_y'] == pytest.approx(np.std(ys))
    assert stats['position_spread'] == pytest.approx(np.hypot(np.std(xs), np.std(ys)))


def test_empty_full_and_grey_masks_are_counted_exactly():
    masks = np.zeros((10, 20, 20), np.float32)
    masks[0] = 0                               # empty
    masks[1, 0, :3] = 1                        # 3 of 400 px: < 1 %, empty
    masks[2, 0, :4] = 1                        # 4 px: 1 %, not empty
    masks[3] = 1                               # full
    masks[4] = 1
    masks[4, 0, :4] = 0                        # 396 px: 99 %, not full
    masks[5] = 0.5                             # grey (and empty: nothing above 0.5)
    masks[6] = 0.85                            # grey and full
    masks[7, :10] = 0.3                        # 200 of 400 grey: half, not "more than half" ...
    masks[7, 10:] = 1                          # ... and an object below it
    masks[8, :11] = 0.7                        # 220 of 400 grey: grey
    masks[9, 5:15, 5:15] = 1                   # an ordinary object
    stats = layout.layout_statistics(masks)
    assert stats['empty'] == pytest.approx(3 / 10)          # masks 0, 1, 5
    assert stats['full'] == pytest.approx(2 / 10)           # masks 3, 6
    assert stats['grey'] == pytest.approx(3 / 10)           # masks 5, 6, 8
    assert stats['count'] == 10


def test_undefined_spreads_are_none_not_a_division_by_zero():
    empty = np.zeros((4, 8, 8), np.float32)
    same = rectangles([(2, 2, 4, 4)] * 4, size=8)
    result = layout.compare_layouts(empty, same)
    assert result['generated']['position_spread'] is None and result['generated']['empty'] == 1.0
    assert result['ratios'] == dict(position=None, x=None, y=None, area=None)   # data of one layout: no spread
    assert layout.format_layout_rows(result)[0] == ('layout spread gen/data', 'position —, area —')
    with pytest.raises(ValueError, match=r'\[N, H, W\]'):
        layout.mask_geometry(np.zeros((8, 8)))


def test_table_rows_show_ratios_and_collapse_percentages():
    result = dict(ratios=dict(position=0.123, x=0.1, y=0.2, area=1.5),
                  generated=dict(empty=0.25, full=0.0, grey=0.125))
    assert layout.format_layout_rows(result) == [('layout spread gen/data', 'position 0.12, area 1.50'),
                                                 ('masks empty/full/grey', '25.0% / 0.0% / 12.5%'),
                                                 ('mask on the border gen/data', '— / —')]
    result.update(data=dict(mean_border=0.0625))
    result['generated']['mean_border'] = 0.75
    assert layout.format_layout_rows(result)[2] == ('mask on the border gen/data', '0.75 / 0.06')
    assert layout.format_layout_rows(None)[2] == ('mask on the border gen/data', '—')


def test_border_coverage_tells_an_object_from_its_surround():
    # A 4x4 object inside a 16 px image touches no border pixel; its complement covers all 60.
    obj = rectangles([(6, 6, 4, 4)], size=16)
    assert layout.mask_geometry(obj)['border'][0] == 0.0
    assert layout.mask_geometry(1 - obj)['border'][0] == 1.0
    # An object along the top edge, 8 px wide: 8 of the ring's 60 pixels.
    top = rectangles([(0, 4, 3, 8)], size=16)
    assert layout.mask_geometry(top)['border'][0] == pytest.approx(8 / 60)
    stats = layout.layout_statistics(np.concatenate([obj, 1 - obj, top]))
    assert stats['mean_border'] == pytest.approx((0 + 1 + 8 / 60) / 3)


def test_generated_set_is_read_soft_and_the_data_binary(tmp_path):
    from PIL import Image
    (tmp_path / 'mask').mkdir()
    grey = np.zeros((16, 16), np.uint8)
    grey[:, :8] = 200                          # left half: object, soft value 200/255
    grey[:, 8:] = 100                          # right half: grey background
    Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(tmp_path / 'mask' / '000001.png')
    masks = layout.load_generated_masks(str(tmp_path), 16)
    assert masks.shape == (1, 16, 16) and masks[0, 0, 0] == pytest.approx(200 / 255) and masks[0, 0, 15] == pytest.approx(100 / 255)
    assert layout.mask_geometry(masks)['x'][0] == pytest.approx(0.25)


def test_warnings_name_each_failure_and_stay_silent_on_data_like_masks():
    rng = np.random.default_rng(3)
    data = rectangles(random_boxes(rng, 300))
    assert layout.layout_warnings(layout.compare_layouts(rectangles(random_boxes(rng, 300)), data)) == []
    assert layout.layout_warnings(None) == []

    # One centred blob for every latent: position and size spread 0.
    blob = layout.layout_warnings(layout.compare_layouts(rectangles([(8, 8, 16, 16)] * 20), data))
    assert len(blob) == 2 and 'position varies 0.00' in blob[0] and 'size varies 0.00' in blob[1]

    # The surround of varied objects: binary, plausible size, but on the border.
    result = layout.compare_layouts(1 - rectangles(random_boxes(rng, 100)), data)
    gen_border, data_border = result['generated']['mean_border'], result['data']['mean_border']
    assert gen_border > 0.8 and data_border < 0.2
    assert (f'the masks cover {gen_border:.2f} of the image border where the data\'s cover {data_border:.2f}'
            in ' '.join(layout.layout_warnings(result)))

    # Collapses: more than half of the masks empty / full / grey, each named with its share.
    grey = np.zeros((10, 32, 32), np.float32)
    grey[:, :20] = 0.7                          # 62 % of the pixels grey, area 0.62: neither empty nor full
    grey[:4] = rectangles(random_boxes(rng, 4))
    texts = layout.layout_warnings(layout.compare_layouts(grey, data))
    assert texts[0] == '60 % of the masks are grey (most pixels between 0.1 and 0.9): the layers have not separated'
    assert layout.layout_warnings(layout.compare_layouts(np.zeros((6, 32, 32), np.float32), data))[0].startswith(
        '100 % of the masks are empty')
    assert layout.layout_warnings(layout.compare_layouts(np.ones((6, 32, 32), np.float32), data))[0].startswith(
        '100 % of the masks are full')


def test_warnings_thresholds_are_strict_and_spread_below_a_third_is_reported():
    # Exactly half empty is not "more than half"; a border excess of exactly 0.1 is not above it.
    stats = dict(empty=0.5, full=0.0, grey=0.0, mean_border=0.2)
    result = dict(generated=stats, data=dict(mean_border=0.1), ratios=dict(position=0.3, area=0.29))
    assert layout.layout_warnings(result) == ["the masks' size varies 0.29 as much as the data's: about one size "
                                              "for every latent"]


def test_a_shifted_set_is_judged_by_the_spread_of_gs_own_masks():
    # The training shift moves one blob to varied places: the set's position spread looks data-like,
    # G's own masks (the same latents, unshifted) show one place and one size for every latent.
    rng = np.random.default_rng(5)
    data = rectangles(random_boxes(rng, 200))
    shifted = rectangles([(8 + dy, 8 + dx, 12, 12) for dy, dx in rng.integers(-8, 9, size=(50, 2))])
    own = rectangles([(10, 10, 12, 12)] * 50)
    set_layout, own_layout = layout.compare_layouts(shifted, data), layout.compare_layouts(own, data)
    assert set_layout['ratios']['position'] > 0.5 and own_layout['ratios']['position'] == 0.0
    assert [w.split(' varies')[0] for w in layout.layout_warnings(set_layout)] == ["the masks' size"]
    assert [w.split(' varies')[0] for w in layout.layout_warnings(set_layout, own_layout)] == [
        "the masks' position", "the masks' size"]
    rows = layout.format_layout_rows(set_layout, own_layout)
    assert [name for name, _ in rows] == ['layout spread gen/data', "G's own layout spread gen/data",
                                          'masks empty/full/grey', 'mask on the border gen/data']
    assert rows[1][1] == 'position 0.00, area 0.00'
