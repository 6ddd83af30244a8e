"""The shapes-world scorer: exact prompt alignment of a 32x32 image, as a reward with ground truth.

The caption is parsed with the world's grammar (:func:`find_jax.envs.image.shapes.world.parse_caption`; anything
else raises ``ValueError`` listing the grammar). The image is measured:

1. each pixel is classified to the nearest (Euclidean RGB) of black + the six world colours;
2. connected components (8-connectivity) per colour; components under ``min_pixels`` are specks and
   dropped;
3. each component's shape from its pixel moments (robust to the stray edge pixels and soft corners of
   generated images, which upset bounding-box fill ratios): an upright triangle has its mass low, vertical
   skewness ``E[y^3] / E[y^2]^1.5 < -0.25`` (exact triangles: -0.50 to -0.56; circles and squares 0);
   otherwise a square is heavier-tailed along its diagonals than along its axes, kurtosis difference
   ``(kurt(u) + kurt(v)) / 2 - (kurt(x) + kurt(y)) / 2 > 0.25`` with ``u, v = (x +- y) / sqrt(2)``
   (exact squares: 0.61-0.63, continuous limit 2.4 - 1.8 = 0.6; exact circles: -0.23 to 0.07);
   anything else is a circle;
4. its centre is the bounding-box centre ``(col0 + w/2, row0 + h/2)``; "on the left" is ``x < 16``,
   "at the top" ``y < 16``; "A to the left of B" is ``x_A < x_B``, "A above B" is ``y_A < y_B``.

Reward (partial credit, in ``[0, 1]``): the mean of

* ``colour``: multiset overlap of found vs named colours, over the number named;
* ``shape``: the same for shapes;
* ``count``: ``1 - min(1, |found - named| / named)``;
* ``position`` (positional and relation captions only): 1 when some found objects of the named kinds
  satisfy the position / relation;
* ``nothing_extra``: 1 when every found object is one the caption names (as a multiset).

``exact`` (the alignment the issue counts) holds iff the found ``(colour, shape)`` multiset equals the
named one and the position / relation holds; then every term is 1, so ``reward == 1.0 <=> exact``.

Graded variant (``graded=True``, for optimisation; ``exact`` is unchanged): the ``colour`` and ``shape`` terms
grade near misses instead of counting right/wrong. Each named object is matched to a distinct found object
(greedily, best first, by the mean of the two similarities below); unmatched named objects add 0.

* colour similarity ``1 - |mean rgb - named rgb| / sqrt(3)`` (the object's mean pixel colour in the image);
* shape likeness from the same moments as step 3, softened by a logistic of width :data:`GRADE_WIDTH`:
  ``triangle = s((TRIANGLE_SKEW - skew) / w)``, ``square = (1 - triangle) s((gap - SQUARE_KURTOSIS_GAP) / w)``,
  ``circle = 1 - triangle - square``.

So a yellow triangle scored against ``a yellow square`` earns more the less skewed and the more square-like
it is, where the plain reward gives every such failure the same value. Still ``reward == 1.0 <=> exact``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np

from find_jax.envs.image.shapes import world
from reward_models.registry import register

PALETTE_NAMES: tuple[str, ...] = ("black", *world.COLOUR_NAMES)
PALETTE = np.array([(0.0, 0.0, 0.0), *world.COLOURS.values()], dtype=np.float32)  # [7, 3]
MIN_PIXELS = 10  # components smaller than this are specks (the smallest world object has 25 px)
TRIANGLE_SKEW = -0.25  # vertical skewness below which an object is a triangle (exact: ~-0.53)
SQUARE_KURTOSIS_GAP = 0.25  # diagonal minus axis kurtosis above which it is a square (exact: ~0.61)
GRADE_WIDTH = 0.1  # logistic width of the graded shape likeness, in units of the moment features
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclasses.dataclass(frozen=True)
class FoundObject:
    """An object measured in an image."""

    colour: str  # world colour name
    shape: str  # world shape name
    centre: tuple[float, float]  # (x, y) bounding-box centre, px
    bbox: tuple[int, int, int, int]  # (row0, col0, height, width)
    pixels: int  # pixel count of the component
    fill: float  # pixels / bounding-box area
    skew: float = 0.0  # vertical skewness (shape_features)
    gap: float = 0.0  # diagonal minus axis kurtosis (shape_features)
    rgb: tuple[float, float, float] = (0.0, 0.0, 0.0)  # mean colour of its pixels in the image


@dataclasses.dataclass(frozen=True)
class ShapesScore:
    """Score of one (image, caption) pair."""

    reward: float  # partial credit in [0, 1]; 1.0 iff exact
    exact: bool  # the image holds exactly the named objects at the named positions, nothing else
    details: dict[str, Any]  # per-term scores ("colour", "shape", ...) and "objects": list[FoundObject]


def classify_pixels(image: np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` in ``[0, 1]`` -> ``[H, W]`` int palette index (0 = black, 1.. = world colours)."""
    d = ((image[:, :, None, :] - PALETTE[None, None]) ** 2).sum(-1)  # [H, W, 7]
    return np.argmin(d, axis=-1)


def shape_features(mask: np.ndarray) -> tuple[float, float]:
    """``(skew_y, kurtosis_gap)`` of a component mask ``[h, w]`` (see the module docstring, step 3)."""
    ys, xs = np.nonzero(mask)
    x = xs - xs.mean()
    y = ys - ys.mean()

    def kurt(a: np.ndarray) -> float:
        return float((a**4).mean() / max((a**2).mean() ** 2, 1e-9))

    u, v = (x + y) / np.sqrt(2.0), (x - y) / np.sqrt(2.0)
    gap = (kurt(u) + kurt(v)) / 2.0 - (kurt(x) + kurt(y)) / 2.0
    skew = float((y**3).mean() / max((y**2).mean() ** 1.5, 1e-9))
    return skew, gap


def shape_name(skew: float, gap: float) -> str:
    """The shape a component's moment features name (module docstring, step 3)."""
    if skew < TRIANGLE_SKEW:
        return "triangle"
    return "square" if gap > SQUARE_KURTOSIS_GAP else "circle"


def shape_likeness(skew: float, gap: float) -> dict[str, float]:
    """Graded membership of each shape, summing to 1; the argmax is :func:`shape_name` (docstring, graded)."""

    def logistic(z: float) -> float:
        return float(1.0 / (1.0 + np.exp(-np.clip(z, -60.0, 60.0))))

    tri = logistic((TRIANGLE_SKEW - skew) / GRADE_WIDTH)
    sq = (1.0 - tri) * logistic((gap - SQUARE_KURTOSIS_GAP) / GRADE_WIDTH)
    return {"triangle": tri, "square": sq, "circle": 1.0 - tri - sq}


def find_objects(image: np.ndarray, *, min_pixels: int = MIN_PIXELS) -> list[FoundObject]:
    """Objects of an image ``[32, 32, 3]`` in ``[0, 1]``, in raster order of their first pixel."""
    from scipy import ndimage

    image = np.asarray(image, dtype=np.float32)
    labels = classify_pixels(image)
    found = []
    for k, name in enumerate(PALETTE_NAMES[1:], start=1):
        comp, n = ndimage.label(labels == k, structure=_EIGHT)
        if n == 0:
            continue
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            mask = comp[sl] == i
            pixels = int(mask.sum())
            if pixels < min_pixels:
                continue
            skew, gap = shape_features(mask)
            r0, c0 = sl[0].start, sl[1].start
            h, w = mask.shape
            rgb = tuple(float(v) for v in np.clip(image[sl][mask], 0.0, 1.0).mean(axis=0))
            found.append(
                FoundObject(
                    name,
                    shape_name(skew, gap),
                    (c0 + w / 2.0, r0 + h / 2.0),
                    (r0, c0, h, w),
                    pixels,
                    float(mask.mean()),
                    skew,
                    gap,
                    rgb,
                )
            )
    found.sort(key=lambda o: (o.bbox[0], o.bbox[1]))
    return found


def _overlap(a: Counter, b: Counter) -> int:
    return sum((a & b).values())


def _position_holds(objects: list[FoundObject], caption: world.Caption) -> bool:
    mid = world.IMAGE_SIZE / 2.0
    if caption.kind == "position":
        test = {
            "on the left": lambda x, y: x < mid,
            "on the right": lambda x, y: x > mid,
            "at the top": lambda x, y: y < mid,
            "at the bottom": lambda x, y: y > mid,
        }[caption.position]
        return any(o.colour == caption.colour and o.shape == caption.shape and test(*o.centre) for o in objects)
    firsts = [o for o in objects if (o.colour, o.shape) == (caption.colour, caption.shape)]
    seconds = [o for o in objects if (o.colour, o.shape) == (caption.colour2, caption.shape2)]
    return any(
        a is not b and world.relation_holds(a.centre, b.centre, caption.relation) for a in firsts for b in seconds
    )


def _graded_terms(objects: list[FoundObject], named: list[tuple[str, str]]) -> dict[str, float]:
    """The graded ``colour`` and ``shape`` terms (module docstring): named objects matched to found ones."""
    pairs = []
    for i, (colour, shape) in enumerate(named):
        target = np.asarray(world.COLOURS[colour], np.float32)
        for j, o in enumerate(objects):
            c = 1.0 - float(np.linalg.norm(np.asarray(o.rgb) - target)) / np.sqrt(3.0)
            s = shape_likeness(o.skew, o.gap)[shape]
            pairs.append(((c + s) / 2.0, i, j, c, s))
    colour = shape = 0.0
    used_named, used_found = set(), set()
    for _, i, j, c, s in sorted(pairs, reverse=True):
        if i in used_named or j in used_found:
            continue
        used_named.add(i)
        used_found.add(j)
        colour, shape = colour + c, shape + s
    return {"colour": colour / len(named), "shape": shape / len(named)}


def score_objects(objects: list[FoundObject], caption: str | world.Caption, *, graded: bool = False) -> ShapesScore:
    """Scores measured ``objects`` against ``caption`` (see the module docstring; ``graded``: its last part)."""
    cap = caption if isinstance(caption, world.Caption) else world.parse_caption(caption)
    named = cap.expected_objects()
    n = len(named)
    found_pairs = Counter((o.colour, o.shape) for o in objects)
    named_pairs = Counter(named)
    terms = {
        "colour": _overlap(Counter(o.colour for o in objects), Counter(c for c, _ in named)) / n,
        "shape": _overlap(Counter(o.shape for o in objects), Counter(s for _, s in named)) / n,
        "count": 1.0 - min(1.0, abs(len(objects) - n) / n),
        "nothing_extra": float(not (found_pairs - named_pairs)),
    }
    if cap.kind in ("position", "relation"):
        terms["position"] = float(_position_holds(objects, cap))
    if graded:
        terms.update(_graded_terms(objects, list(named)))
    exact = found_pairs == named_pairs and terms.get("position", 1.0) == 1.0
    reward = 1.0 if exact else min(float(np.mean(list(terms.values()))), 0.99)
    return ShapesScore(reward, exact, {**terms, "objects": objects})


def score(image: Any, caption: str, *, min_pixels: int = MIN_PIXELS, graded: bool = False) -> ShapesScore:
    """Scores one image ``[32, 32, 3]`` float in ``[0, 1]`` against a world caption (``graded``: docstring)."""
    cap = world.parse_caption(caption)
    image = np.asarray(image, dtype=np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be [H, W, 3]; got shape {image.shape}")
    if image.shape[:2] != (world.IMAGE_SIZE, world.IMAGE_SIZE):
        raise ValueError(
            f"the shapes world is {world.IMAGE_SIZE}x{world.IMAGE_SIZE}; got an image of shape {image.shape}"
        )
    return score_objects(find_objects(image, min_pixels=min_pixels), cap, graded=graded)


def score_batch(
    images: Any, captions: Sequence[str], *, min_pixels: int = MIN_PIXELS, graded: bool = False
) -> list[ShapesScore]:
    """:func:`score` over ``images [B, 32, 32, 3]`` and ``B`` captions (all captions parsed first)."""
    for i, c in enumerate(captions):
        try:
            world.parse_caption(c)
        except ValueError as e:
            raise ValueError(f"prompt {i}: {e}") from None
    images = np.asarray(images, dtype=np.float32)
    return [score(im, c, min_pixels=min_pixels, graded=graded) for im, c in zip(images, captions, strict=True)]


@register(
    "shapes",
    description="shapes-world alignment (colour, shape, count, position), partial credit in [0, 1]",
    weights="none",
)
def make_shapes_reward(*, exact: bool = False, graded: bool = False, min_pixels: int = MIN_PIXELS):
    """Factory: ``reward_fn(images [B, 32, 32, 3], prompts) -> [B]`` float32.

    ``exact=True`` returns the exact-alignment flag (0/1) instead of the partial credit; ``graded=True`` grades
    near misses of colour and shape (module docstring), e.g. ``--reward-option graded=true``.
    """
    if exact and graded:
        raise ValueError("the shapes reward takes exact=True or graded=True, not both")

    def reward_fn(images: Any, prompts: Sequence[str]) -> np.ndarray:
        scores = score_batch(images, prompts, min_pixels=min_pixels, graded=graded)
        return np.array([float(s.exact) if exact else s.reward for s in scores], dtype=np.float32)

    reward_fn.check_prompts = check_prompts  # type: ignore[attr-defined]  # before any run writes a file
    return reward_fn


def check_prompts(prompts: Sequence[str]) -> None:
    """Raises ``ValueError`` (naming the prompt and the grammar) for a prompt the world's grammar cannot parse."""
    for p in prompts:
        try:
            world.parse_caption(p)
        except ValueError as e:
            raise ValueError(f"the shapes reward cannot score the prompt {p[:80]!r}: {e}") from None
