"""The shapes-world scorer (reward ``shapes``): exact on generated pairs, lower on mismatches, robust."""

from __future__ import annotations

import numpy as np
import pytest

from find_jax.envs.image.shapes import world
from reward_models import available, make_reward
from reward_models import shapes as S


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(2024)
    out = []
    for _ in range(400):
        objects, caption = world.sample_scene(rng)
        out.append((objects, world.render(objects), caption))
    return out


def _draw(*objects: world.ShapeObject) -> np.ndarray:
    return world.render(list(objects))


def test_generated_pairs_score_exact(pairs):
    for objects, image, caption in pairs:
        s = S.score(image, caption.text())
        assert s.exact and s.reward == 1.0, (caption.text(), s.details)
        found = s.details["objects"]
        assert sorted((o.colour, o.shape) for o in found) == sorted((o.colour, o.shape) for o in objects)


def test_generated_pairs_score_exact_under_noise_and_off_colours(pairs):
    rng = np.random.default_rng(0)
    for _, image, caption in pairs[:150]:
        noisy = image * rng.uniform(0.75, 0.95) + rng.normal(0.0, 0.08, image.shape) + 0.05
        noisy = np.clip(noisy, 0.0, 1.0).astype(np.float32)
        s = S.score(noisy, caption.text())
        assert s.exact, (caption.text(), s.details)


def test_stray_specks_are_ignored():
    image = _draw(world.ShapeObject("circle", "red", 4, 4, 10))
    image[25:27, 25:27] = (0.0, 1.0, 0.0)  # a 4-pixel green speck
    assert S.score(image, "a red circle").exact


def test_shapes_are_told_apart():
    for shape in world.SHAPES:
        for size in range(world.MIN_SIZE, world.MAX_SIZE + 1):
            image = _draw(world.ShapeObject(shape, "white", 5, 9, size))
            (found,) = S.find_objects(image)
            assert found.shape == shape, (shape, size, found.fill)
            assert found.centre == (9 + size / 2, 5 + size / 2)


def test_wrong_colour_shape_count_position_score_lower():
    left = world.ShapeObject("circle", "red", 10, 2, 9)  # centre x = 6.5
    right = world.ShapeObject("square", "blue", 10, 20, 9)  # centre x = 24.5
    image = _draw(left)
    assert S.score(image, "a red circle").reward == 1.0
    assert S.score(image, "a red circle on the left").exact
    for wrong in ("a green circle", "a red square", "two red circles", "a red circle on the right"):
        s = S.score(image, wrong)
        assert not s.exact and s.reward < 1.0, wrong
    assert S.score(image, "a green square").reward < S.score(image, "a green circle").reward
    pair = _draw(left, right)
    assert S.score(pair, "a red circle to the left of a blue square").exact
    assert not S.score(pair, "a blue square to the left of a red circle").exact
    assert not S.score(pair, "a red circle above a blue square").exact
    extra = S.score(pair, "a red circle")  # right object but an extra one
    assert not extra.exact and extra.details["nothing_extra"] == 0.0 and 0.0 < extra.reward < 1.0
    empty = S.score(np.zeros((32, 32, 3), np.float32), "a red circle")
    assert not empty.exact and empty.reward < extra.reward


def test_count_captions():
    objs = [world.ShapeObject("square", "blue", r, c, 8) for r, c in ((1, 1), (1, 20), (20, 1))]
    image = _draw(*objs)
    assert S.score(image, "three blue squares").exact
    two = S.score(image, "two blue squares")
    four = S.score(image, "four blue squares")
    assert not two.exact and not four.exact
    assert 0.0 < two.details["count"] < 1.0 and 0.0 < four.details["count"] < 1.0


def test_bad_captions_and_images_raise():
    image = np.zeros((32, 32, 3), np.float32)
    with pytest.raises(ValueError, match="grammar"):
        S.score(image, "a photo of a dog")
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        S.score(np.zeros((32, 32), np.float32), "a red circle")
    with pytest.raises(ValueError, match="32x32"):
        S.score(np.zeros((64, 64, 3), np.float32), "a red circle")


def test_registered_reward_batch(pairs):
    assert "shapes" in available()
    reward_fn = make_reward("shapes")
    exact_fn = make_reward("shapes", exact=True)
    images = np.stack([p[1] for p in pairs[:8]])
    captions = [p[2].text() for p in pairs[:8]]
    wrong = captions[1:] + captions[:1]
    r = reward_fn(images, captions)
    assert r.shape == (8,) and r.dtype == np.float32 and (r == 1.0).all()
    rw = reward_fn(images, wrong)
    ew = exact_fn(images, wrong)
    assert set(np.unique(ew)) <= {0.0, 1.0}
    assert ((rw == 1.0) == (ew == 1.0)).all() and rw.mean() < 1.0
    with pytest.raises(ValueError, match="prompt 2"):
        reward_fn(images[:3], ["a red circle", "a blue square", "a purple cow"])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        reward_fn(images[:1] * 2.0 + 0.5, ["a red circle"])


def test_shape_survives_soft_corners_and_attached_stray_pixels():
    square = _draw(world.ShapeObject("square", "blue", 8, 8, 10))
    for r, c in ((8, 8), (8, 17), (17, 8), (17, 17)):  # knock the corners off
        square[r, c] = 0.0
    square[12, 18] = (0.0, 0.0, 1.0)  # a stray pixel stuck to the right edge
    (found,) = S.find_objects(square)
    assert found.shape == "square" and found.fill < 0.92  # a fill-ratio test would call it a circle
    circle = _draw(world.ShapeObject("circle", "red", 8, 8, 11))
    circle[19, 13] = (1.0, 0.0, 0.0)  # below the bottom edge
    circle[13, 19] = (1.0, 0.0, 0.0)
    assert S.score(circle, "a red circle").exact
    triangle = _draw(world.ShapeObject("triangle", "yellow", 8, 8, 11))
    triangle[18, 19] = (1.0, 1.0, 0.0)
    assert S.score(triangle, "a yellow triangle").exact


def _near_square_triangle(top_rows: int) -> np.ndarray:
    """A yellow triangle (box 11 at row 8, col 8) with its top ``top_rows`` rows widened to 7 px."""
    image = _draw(world.ShapeObject("triangle", "yellow", 8, 8, 11))
    image[8 : 8 + top_rows, 10:17] = (1.0, 1.0, 0.0)
    return image


def test_graded_reward_ranks_near_misses_the_plain_reward_ties():
    # Shape: three objects all measured as triangles, scored against "a yellow square". The plain reward
    # gives each 0.5 (colour, count right; shape, nothing-extra wrong); the graded one rises with squareness.
    images = [_near_square_triangle(k) for k in (0, 2, 3)]
    plain = [S.score(im, "a yellow square") for im in images]
    graded = [S.score(im, "a yellow square", graded=True) for im in images]
    assert all(s.details["objects"][0].shape == "triangle" for s in plain)
    assert [s.reward for s in plain] == [0.5, 0.5, 0.5]
    assert graded[0].reward < graded[1].reward < graded[2].reward < 1.0
    assert not any(s.exact for s in graded)
    # Colour: a yellow triangle and one tinted towards white, both classified yellow, against "a white triangle".
    yellow = _draw(world.ShapeObject("triangle", "yellow", 8, 8, 11))
    whitish = yellow.copy()
    whitish[yellow.sum(-1) > 0] = (1.0, 1.0, 0.4)
    a, b = (S.score(im, "a white triangle", graded=True) for im in (yellow, whitish))
    assert a.details["objects"][0].colour == b.details["objects"][0].colour == "yellow"
    assert S.score(yellow, "a white triangle").reward == S.score(whitish, "a white triangle").reward
    assert a.reward < b.reward < 1.0


def test_graded_reward_is_one_exactly_when_aligned(pairs):
    rng = np.random.default_rng(1)
    for _, image, caption in pairs[:100]:
        s = S.score(image, caption.text(), graded=True)
        assert s.exact and s.reward == 1.0
        wrong = pairs[int(rng.integers(len(pairs)))][2].text()
        g, p = S.score(image, wrong, graded=True), S.score(image, wrong)
        assert g.exact == p.exact and (g.reward == 1.0) == g.exact and 0.0 <= g.reward <= 1.0
    for skew, gap in ((-0.6, 0.0), (-0.26, 0.6), (0.0, 0.6), (0.0, 0.0), (0.1, 0.24)):
        like = S.shape_likeness(skew, gap)
        assert abs(sum(like.values()) - 1.0) < 1e-9 and min(like.values()) >= 0.0
        assert max(like, key=like.get) == S.shape_name(skew, gap)


def test_graded_reward_option():
    image = _near_square_triangle(3)[None]
    graded_fn = make_reward("shapes", graded=True)
    assert graded_fn(image, ["a yellow square"])[0] > make_reward("shapes")(image, ["a yellow square"])[0]
    with pytest.raises(ValueError, match="not both"):
        make_reward("shapes", exact=True, graded=True)
