"""The shapes world: generator determinism and bias, geometry, caption grammar, offline tokenizer."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from find_jax.envs import shipped_model_dir
from find_jax.envs.image.shapes import tokenizer as shapes_tokenizer
from find_jax.envs.image.shapes import world


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(123)
    return [world.sample_scene(rng) for _ in range(3000)]


def test_batch_is_deterministic_per_seed_and_step():
    a_img, a_cap = world.sample_batch(world.batch_rng(7, 3), 16)
    b_img, b_cap = world.sample_batch(world.batch_rng(7, 3), 16)
    c_img, c_cap = world.sample_batch(world.batch_rng(7, 4), 16)
    np.testing.assert_array_equal(a_img, b_img)
    assert a_cap == b_cap
    assert a_cap != c_cap or not np.array_equal(a_img, c_img)
    assert a_img.shape == (16, 32, 32, 3) and a_img.dtype == np.float32


def test_images_are_pure_palette_colours():
    images, _ = world.sample_batch(world.batch_rng(0, 0), 32)
    palette = {(0.0, 0.0, 0.0), *world.COLOURS.values()}
    assert set(map(tuple, images.reshape(-1, 3).tolist())) <= palette


@pytest.mark.parametrize(
    "geometry, lo, hi", [(world.SHIPPED_GEOMETRY, 0.97, 0.999), (world.LEGACY_GEOMETRY, 0.85, 0.95)]
)
def test_colour_bias(geometry, lo, hi):
    rng = np.random.default_rng(123)
    by_shape: dict[str, Counter] = {s: Counter() for s in world.SHAPES}
    for _ in range(3000):
        for o in world.sample_scene(rng, geometry)[0]:
            by_shape[o.shape][o.colour] += 1
    for shape, dominant in world.DOMINANT_COLOUR.items():
        c = by_shape[shape]
        frac = c[dominant] / sum(c.values())
        assert lo <= frac <= hi, (shape, frac)
        assert set(c) <= set(world.COLOUR_NAMES)


def test_count_distribution(scenes):
    counts = Counter(len(objects) for objects, _ in scenes)
    n = len(scenes)
    for k, p in world.COUNT_PROBS.items():
        assert abs(counts[k] / n - p) < 0.03, (k, counts[k] / n, p)


def test_objects_fit_and_keep_apart(scenes):
    for objects, _ in scenes:
        for o in objects:
            assert world.MIN_SIZE <= o.size <= world.MAX_SIZE
            assert 0 <= o.row0 and o.row0 + o.size <= world.IMAGE_SIZE
            assert 0 <= o.col0 and o.col0 + o.size <= world.IMAGE_SIZE
        for i, a in enumerate(objects):
            for b in objects[i + 1 :]:
                assert world._separated(a, b)


def test_another_geometry_sets_sizes_and_gap_and_keeps_captions_true():
    g = world.LEGACY_GEOMETRY  # 7-12 px, gap 2
    rng = np.random.default_rng(5)
    sizes = set()
    for _ in range(600):
        objects, caption = world.sample_scene(rng, g)
        assert Counter((o.colour, o.shape) for o in objects) == Counter(caption.expected_objects())
        for i, a in enumerate(objects):
            sizes.add(a.size)
            assert 0 <= a.row0 and a.row0 + a.size <= world.IMAGE_SIZE
            for b in objects[i + 1 :]:
                assert world._separated(a, b, 2) and not world._separated(a, b, 40)
    assert sizes == set(range(7, 13))
    images, _ = world.sample_batch(world.batch_rng(1, 0), 8, g)
    default, _ = world.sample_batch(world.batch_rng(1, 0), 8)
    assert images.shape == default.shape and not np.array_equal(images, default)


def test_the_default_geometry_is_the_shipped_world():
    assert world.SHIPPED_GEOMETRY == world.Geometry(world.MIN_SIZE, world.MAX_SIZE, world.GAP) == world.Geometry()
    trained = json.loads((shipped_model_dir() / "training.json").read_text())["config"]["world"]
    assert world.SHIPPED_GEOMETRY == world.Geometry(**trained)  # the world the shipped model was trained on
    a, ca = world.sample_batch(world.batch_rng(2, 9), 16)
    b, cb = world.sample_batch(world.batch_rng(2, 9), 16, world.Geometry(10, 14, 3, 0.99))
    np.testing.assert_array_equal(a, b)
    assert ca == cb


@pytest.mark.parametrize("bad", [(2, 5, 2), (9, 8, 2), (10, 14, 0), (10, 15, 3)])
def test_a_geometry_that_cannot_hold_four_objects_is_refused(bad):
    with pytest.raises(ValueError, match="object sizes|do not fit"):
        world.Geometry(*bad).validate()


def test_dominant_prob_sets_the_colour_bias():
    def rare_share(g, n=6000):
        rng = np.random.default_rng(3)
        objs = [world.sample_scene(rng, g)[0][0] for _ in range(n)]  # one fresh colour draw per scene
        return np.mean([o.colour != world.DOMINANT_COLOUR[o.shape] for o in objs]), len(objs)

    legacy, n0 = rare_share(world.LEGACY_GEOMETRY)
    shipped, n1 = rare_share(world.Geometry())
    # The first object of a scene is one colour draw: its rare share is 1 - dominant_prob (binomial, +-4 sd).
    assert abs(legacy - 0.10) < 4 * np.sqrt(0.09 / n0)
    assert abs(shipped - 0.01) < 4 * np.sqrt(0.0099 / n1)
    for bad in (1.0, 0.1, float("nan")):
        with pytest.raises(ValueError, match="dominant_prob"):
            world.Geometry(dominant_prob=bad).validate()


def test_captions_are_truthful_and_parse(scenes):
    kinds = Counter()
    for objects, caption in scenes:
        text = caption.text()
        assert text == text.lower() and not text.endswith(".")
        parsed = world.parse_caption(text)
        assert parsed == caption
        kinds[parsed.kind] += 1
        assert Counter((o.colour, o.shape) for o in objects) == Counter(parsed.expected_objects())
        mid = world.IMAGE_SIZE / 2
        if parsed.kind == "position":
            x, y = objects[0].centre
            ok = {"on the left": x < mid, "on the right": x > mid, "at the top": y < mid, "at the bottom": y > mid}
            assert ok[parsed.position]
        if parsed.kind == "relation":
            assert world.relation_holds(objects[0], objects[1], parsed.relation)
            assert (parsed.colour, parsed.shape) != (parsed.colour2, parsed.shape2)
    assert set(kinds) == {"plain", "count", "position", "relation"}


def test_shape_masks_have_exact_bounding_boxes():
    for shape in world.SHAPES:
        for size in range(world.MIN_SIZE, world.MAX_SIZE + 1):
            m = world.shape_mask(shape, size)
            assert m.any(axis=1).all() and m.any(axis=0).all(), (shape, size)
            assert (m == m[:, ::-1]).all()  # left-right symmetric
    tri = world.shape_mask("triangle", 9)
    assert tri[0].sum() < tri[-1].sum() == 9  # upright: apex at the top


@pytest.mark.parametrize(
    "text, kind",
    [
        ("a green circle", "plain"),
        ("four red circles", "count"),
        ("a yellow triangle on the left", "position"),
        ("a red circle to the left of a blue square", "relation"),
        ("  A White Square Above a magenta triangle. ", "relation"),
    ],
)
def test_parse_caption_accepts_the_grammar(text, kind):
    assert world.parse_caption(text).kind == kind


@pytest.mark.parametrize(
    "text",
    [
        "a purple circle",
        "two red circle",
        "one red circle",
        "a red circle in the middle",
        "",
        "a dog",
        "five blue squares",
    ],
)
def test_parse_caption_rejects_other_text_and_lists_the_grammar(text):
    with pytest.raises(ValueError, match="grammar"):
        world.parse_caption(text)


def test_parse_caption_rejects_non_strings():
    with pytest.raises(ValueError, match="string"):
        world.parse_caption(None)  # type: ignore[arg-type]


def test_tokenizer_gives_one_id_per_word(tmp_path, scenes):
    tok = shapes_tokenizer.write_tokenizer(str(tmp_path))
    ids_of = {}
    for word in world.VOCABULARY:
        ids = tok(word)["input_ids"]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) == 3, (word, tok.convert_ids_to_tokens(ids))
        ids_of[word] = ids[1]
    assert len(set(ids_of.values())) == len(world.VOCABULARY)
    for _, caption in scenes[:300]:
        text = caption.text()
        ids = tok(text)["input_ids"]
        assert ids[1:-1] == [ids_of[w] for w in text.split()]
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json"):
        assert (tmp_path / name).exists()
    enc = shapes_tokenizer.encode(tok, ["a red circle to the left of a blue square", ""])
    assert enc.shape == (2, shapes_tokenizer.MAX_LENGTH) and enc.dtype == np.int32
    assert enc[1, 0] == tok.bos_token_id and (enc[1, 1:] == tok.eos_token_id).all()


def test_tokenizer_reloads_and_handles_unknown_words(tmp_path):
    from transformers import CLIPTokenizer

    shapes_tokenizer.write_tokenizer(str(tmp_path))
    tok = CLIPTokenizer.from_pretrained(str(tmp_path))
    assert len(tok("a red circle")["input_ids"]) == 5
    assert len(tok("a purple dog")["input_ids"]) > 5  # unknown words split into pieces, never fail


def test_build_vocab_rejects_bad_words():
    with pytest.raises(ValueError, match="lower-case"):
        shapes_tokenizer.build_vocab_and_merges(["Red"])
