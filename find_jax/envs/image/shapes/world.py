"""The shapes world: a procedural generator of (image, caption) pairs and its caption grammar.

The world is fixed so that anyone can score it independently (DESIGN.md §6):

* images are 32x32 RGB, black background, flat objects in one of six pure colours, no anti-aliasing;
* shapes are circle, square and upright triangle with a square bounding box of 10-14 px; objects never
  overlap (their bounding boxes keep a gap of at least :data:`GAP` px, so same-coloured objects stay
  separate connected components); these sizes and the gap are the shipped :class:`Geometry`, and a training
  run may draw its data with another one (``TrainConfig.world``, recorded in ``training.json``; the models
  before issue 18 used :data:`LEGACY_GEOMETRY`, 7-12 px, gap 2, a 90% bias);
* captions take exactly four forms (lower case, no final period)::

      a {colour} {shape}
      {two|three|four} {colour} {shape}s
      a {colour} {shape} {on the left|on the right|at the top|at the bottom}
      a {colour} {shape} {to the left of|above} a {colour} {shape}

Geometry convention (shared with the scorer, ``reward_models.shapes``): pixel ``(row, col)`` covers
``[col, col+1) x [row, row+1)``; an object's centre is the centre of its bounding box,
``x = col0 + w / 2``, ``y = row0 + h / 2``. "on the left" means ``x < 16``, "at the top" ``y < 16``;
"A to the left of B" means ``x_A < x_B``; "A above B" means ``y_A < y_B``. The generator keeps a margin of
:data:`MARGIN` px on every such inequality so that a slightly imperfect generated image still scores the
same.

Training bias (the paper's "green dog" effect): a circle is red 99% of the time, a square blue 99%, a
triangle yellow 99% (``Geometry.dominant_prob``, which a training run may set), the other five colours share
the remaining 1% equally; an image holds one object 70% of the time, two 20%, three 7%, four 3%. Captions
always describe their image truthfully:

* one object: a plain caption half the time, a positional one (uniform over the four positions) otherwise;
  a positional caption places the object's centre in the named half (with margin);
* two objects: half the time two objects of one kind, captioned ``two {colour} {shape}s``; otherwise two
  objects of different kinds (colour or shape differs), captioned with a relation (uniform over "to the
  left of" / "above") whose geometry holds with margin;
* three or four objects: always one kind, captioned with the count.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Literal

import numpy as np

IMAGE_SIZE = 32  # images are IMAGE_SIZE x IMAGE_SIZE x 3
# Larger, better separated objects than the first models' 7-12 px with a 2 px gap: fewer labels hang on a
# speck or a corner (README, "Is it a testbed that can tell?"); four of the largest still fit as a 2x2 grid.
MIN_SIZE = 10  # smallest bounding-box side of an object, px
MAX_SIZE = 14  # largest bounding-box side of an object, px
GAP = 3  # minimum empty px between two objects' bounding boxes
MARGIN = 1.0  # minimum px distance of a centre from the midline / from the other centre, in the generator

COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "white": (1.0, 1.0, 1.0),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DOMINANT_COLOUR: dict[str, str] = {"circle": "red", "square": "blue", "triangle": "yellow"}
# Probability that a shape has its dominant colour. 0.99 (0.9 before issue 18): at 0.9 a rare pair is 2% of its
# shape's objects, which a model trained to crisp labels learns, so the bias stopped biting.
DOMINANT_PROB = 0.99
COUNT_PROBS: dict[int, float] = {1: 0.70, 2: 0.20, 3: 0.07, 4: 0.03}  # objects per image
COUNT_WORDS: dict[int, str] = {2: "two", 3: "three", 4: "four"}
POSITIONS: tuple[str, ...] = ("on the left", "on the right", "at the top", "at the bottom")
RELATIONS: tuple[str, ...] = ("to the left of", "above")
PLAIN_PROB = 0.5  # single object: probability of a plain (not positional) caption
SAME_KIND_PROB = 0.5  # two objects: probability of one kind ("two X"), else a relation caption

GRAMMAR = (
    "a {colour} {shape} | {two|three|four} {colour} {shape}s | "
    "a {colour} {shape} {on the left|on the right|at the top|at the bottom} | "
    "a {colour} {shape} {to the left of|above} a {colour} {shape}; "
    f"colour in {{{'|'.join(COLOUR_NAMES)}}}, shape in {{{'|'.join(SHAPES)}}}"
)

# Every word a caption can contain; the tokenizer gives each one a single token.
VOCABULARY: tuple[str, ...] = tuple(
    dict.fromkeys(
        ["a", *COUNT_WORDS.values(), *COLOUR_NAMES, *SHAPES, *(s + "s" for s in SHAPES)]
        + " ".join(POSITIONS + RELATIONS).split()
    )
)


@dataclasses.dataclass(frozen=True)
class Geometry:
    """Object sizes, spacing and the strength of the colour bias of the generated images (the grammar, the
    colours, which colour each shape prefers and the counts do not change)."""

    min_size: int = MIN_SIZE  # smallest bounding-box side, px
    max_size: int = MAX_SIZE  # largest bounding-box side, px
    gap: int = GAP  # minimum empty px between two objects' bounding boxes
    # Probability that a shape has its dominant colour; the other five share the rest equally. A stronger
    # bias keeps the rare combinations rare enough that a well-trained model still fails them (issue 18, (d)).
    dominant_prob: float = DOMINANT_PROB

    def validate(self) -> None:
        """Raises ``ValueError`` unless four objects (the most, ``COUNT_PROBS``) of ``max_size`` fit as a 2x2 grid."""
        if not 1.0 / len(COLOUR_NAMES) <= self.dominant_prob < 1.0:
            raise ValueError(
                f"dominant_prob must be in [1/{len(COLOUR_NAMES)}, 1) (1 would leave the rare captions with no data); "
                f"got {self.dominant_prob}"
            )
        if not 3 <= self.min_size <= self.max_size or self.gap < 1:
            raise ValueError(f"object sizes need 3 <= min <= max and gap >= 1; got {self}")
        if 2 * self.max_size + self.gap > IMAGE_SIZE:
            raise ValueError(
                f"four objects of {self.max_size} px with a {self.gap} px gap do not fit a {IMAGE_SIZE} px image "
                f"(need 2 * max_size + gap <= {IMAGE_SIZE})"
            )


SHIPPED_GEOMETRY = Geometry()
# The world of every model trained before ``Geometry`` had a field: a ``config.json`` / ``training.json`` that
# lacks ``world`` (or one of its fields) was drawn with these values, whatever the defaults are now.
LEGACY_GEOMETRY = Geometry(min_size=7, max_size=12, gap=2, dominant_prob=0.9)


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object of an image: kind, colour and bounding box (``row0, col0``, side ``size``)."""

    shape: str  # one of SHAPES
    colour: str  # one of COLOUR_NAMES
    row0: int  # top row of the bounding box
    col0: int  # left column of the bounding box
    size: int  # bounding-box side, px (Geometry.min_size..max_size)

    @property
    def centre(self) -> tuple[float, float]:
        """``(x, y)`` centre of the bounding box in pixel units."""
        return (self.col0 + self.size / 2.0, self.row0 + self.size / 2.0)


@dataclasses.dataclass(frozen=True)
class Caption:
    """A parsed caption.

    ``kind`` is ``plain`` (one object), ``count`` (``count`` objects of one kind), ``position`` (one object
    in the half named by ``position``) or ``relation`` (object ``(colour, shape)`` is ``relation`` object
    ``(colour2, shape2)``).
    """

    kind: Literal["plain", "count", "position", "relation"]
    colour: str  # colour of the (first) object
    shape: str  # shape of the (first) object, singular
    count: int = 1  # number of objects of (colour, shape); 1 except for kind == "count"
    position: str | None = None  # one of POSITIONS, for kind == "position"
    relation: str | None = None  # one of RELATIONS, for kind == "relation"
    colour2: str | None = None  # colour of the second object, for kind == "relation"
    shape2: str | None = None  # shape of the second object, for kind == "relation"

    def expected_objects(self) -> list[tuple[str, str]]:
        """The ``(colour, shape)`` multiset the image must hold exactly."""
        if self.kind == "relation":
            return [(self.colour, self.shape), (self.colour2, self.shape2)]  # type: ignore[list-item]
        return [(self.colour, self.shape)] * self.count

    def text(self) -> str:
        """The caption string (inverse of :func:`parse_caption`)."""
        if self.kind == "plain":
            return f"a {self.colour} {self.shape}"
        if self.kind == "count":
            return f"{COUNT_WORDS[self.count]} {self.colour} {self.shape}s"
        if self.kind == "position":
            return f"a {self.colour} {self.shape} {self.position}"
        return f"a {self.colour} {self.shape} {self.relation} a {self.colour2} {self.shape2}"


_C = "|".join(COLOUR_NAMES)
_S = "|".join(SHAPES)
_RE_PLAIN = re.compile(rf"a ({_C}) ({_S})")
_RE_COUNT = re.compile(rf"({'|'.join(COUNT_WORDS.values())}) ({_C}) ({_S})s")
_RE_POSITION = re.compile(rf"a ({_C}) ({_S}) ({'|'.join(POSITIONS)})")
_RE_RELATION = re.compile(rf"a ({_C}) ({_S}) ({'|'.join(RELATIONS)}) a ({_C}) ({_S})")
_WORD_TO_COUNT = {w: n for n, w in COUNT_WORDS.items()}


def parse_caption(caption: str) -> Caption:
    """Parses a caption of the world's grammar; anything else raises ``ValueError`` listing the grammar.

    Surrounding whitespace, repeated spaces, upper case and one final period are tolerated.
    """
    if not isinstance(caption, str):
        raise ValueError(f"a caption must be a string; got {type(caption).__name__}")
    text = " ".join(caption.strip().lower().split())
    if text.endswith("."):
        text = text[:-1].rstrip()
    if m := _RE_PLAIN.fullmatch(text):
        return Caption("plain", m[1], m[2])
    if m := _RE_COUNT.fullmatch(text):
        return Caption("count", m[2], m[3], count=_WORD_TO_COUNT[m[1]])
    if m := _RE_POSITION.fullmatch(text):
        return Caption("position", m[1], m[2], position=m[3])
    if m := _RE_RELATION.fullmatch(text):
        return Caption("relation", m[1], m[2], relation=m[3], colour2=m[4], shape2=m[5])
    raise ValueError(f"caption {caption!r} is not in the shapes-world grammar: {GRAMMAR}")


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` footprint of a shape whose bounding box is exactly ``size x size``.

    Circle: pixel centres within ``size / 2`` of the box centre (fill ~0.79). Square: the full box.
    Triangle (upright, apex at the top): row ``r`` holds pixel centres within ``(r + 1) / 2`` of the
    vertical axis (fill ~0.55).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; valid shapes: {', '.join(SHAPES)}")
    c = np.arange(size) + 0.5 - size / 2.0  # pixel-centre offsets from the box centre
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "circle":
        return c[:, None] ** 2 + c[None, :] ** 2 <= (size / 2.0) ** 2
    half_width = (np.arange(size) + 1) / 2.0
    return np.abs(c)[None, :] <= half_width[:, None]


@functools.cache
def _mask(shape: str, size: int) -> np.ndarray:
    return shape_mask(shape, size)


def render(objects: list[ShapeObject]) -> np.ndarray:
    """Draws objects on black: ``[32, 32, 3]`` float32 in ``{0, 1}``."""
    image = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    for o in objects:
        mask = _mask(o.shape, o.size)
        region = image[o.row0 : o.row0 + o.size, o.col0 : o.col0 + o.size]
        region[mask] = COLOURS[o.colour]
    return image


def _sample_colour(rng: np.random.Generator, shape: str, dominant_prob: float) -> str:
    if rng.random() < dominant_prob:
        return DOMINANT_COLOUR[shape]
    others = [c for c in COLOUR_NAMES if c != DOMINANT_COLOUR[shape]]
    return others[rng.integers(len(others))]


def _sample_kind(rng: np.random.Generator, dominant_prob: float) -> tuple[str, str]:
    shape = SHAPES[rng.integers(len(SHAPES))]
    return _sample_colour(rng, shape, dominant_prob), shape


def _separated(a: ShapeObject, b: ShapeObject, gap: int = GAP) -> bool:
    """True when the bounding boxes keep at least ``gap`` empty px between them (on some axis)."""
    return (
        a.col0 + a.size + gap <= b.col0
        or b.col0 + b.size + gap <= a.col0
        or a.row0 + a.size + gap <= b.row0
        or b.row0 + b.size + gap <= a.row0
    )


def _position_ok(o: ShapeObject, position: str) -> bool:
    x, y = o.centre
    mid = IMAGE_SIZE / 2.0
    return {
        "on the left": x <= mid - MARGIN,
        "on the right": x >= mid + MARGIN,
        "at the top": y <= mid - MARGIN,
        "at the bottom": y >= mid + MARGIN,
    }[position]


def relation_holds(
    a: ShapeObject | tuple[float, float],
    b: ShapeObject | tuple[float, float],
    relation: str,
    margin: float = 0.0,
) -> bool:
    """Whether ``a`` is ``relation`` ``b`` (centres ``(x, y)``), with ``margin`` px to spare."""
    (xa, ya) = a.centre if isinstance(a, ShapeObject) else a
    (xb, yb) = b.centre if isinstance(b, ShapeObject) else b
    if relation == "to the left of":
        return xa + margin < xb if margin else xa < xb
    if relation == "above":
        return ya + margin < yb if margin else ya < yb
    raise ValueError(f"unknown relation {relation!r}; valid relations: {', '.join(RELATIONS)}")


def _place(
    rng: np.random.Generator,
    kinds: list[tuple[str, str]],
    ok=None,
    tries: int = 200,
    geometry: Geometry = SHIPPED_GEOMETRY,
):
    """Random non-overlapping placement of ``kinds``; ``ok(objects)`` is an extra constraint."""
    g = geometry
    for _ in range(tries):
        objects: list[ShapeObject] = []
        for colour, shape in kinds:
            size = int(rng.integers(g.min_size, g.max_size + 1))
            for _ in range(50):
                row0 = int(rng.integers(0, IMAGE_SIZE - size + 1))
                col0 = int(rng.integers(0, IMAGE_SIZE - size + 1))
                o = ShapeObject(shape, colour, row0, col0, size)
                if all(_separated(o, p, g.gap) for p in objects):
                    objects.append(o)
                    break
            else:
                break
        if len(objects) == len(kinds) and (ok is None or ok(objects)):
            return objects
    raise RuntimeError(f"could not place {kinds} with {g} after {tries} tries")  # not seen with the shipped one


def sample_scene(rng: np.random.Generator, geometry: Geometry = SHIPPED_GEOMETRY) -> tuple[list[ShapeObject], Caption]:
    """One random scene with the training bias and a truthful caption (see the module docstring)."""
    place = functools.partial(_place, geometry=geometry)
    kind = functools.partial(_sample_kind, dominant_prob=geometry.dominant_prob)
    counts = list(COUNT_PROBS)
    n = counts[int(rng.choice(len(counts), p=list(COUNT_PROBS.values())))]
    if n == 1:
        colour, shape = kind(rng)
        if rng.random() < PLAIN_PROB:
            return place(rng, [(colour, shape)]), Caption("plain", colour, shape)
        position = POSITIONS[rng.integers(len(POSITIONS))]
        objects = place(rng, [(colour, shape)], ok=lambda objs: _position_ok(objs[0], position))
        return objects, Caption("position", colour, shape, position=position)
    if n >= 3 or rng.random() < SAME_KIND_PROB:
        colour, shape = kind(rng)
        return place(rng, [(colour, shape)] * n), Caption("count", colour, shape, count=n)
    first = kind(rng)
    second = kind(rng)
    while second == first:
        second = kind(rng)
    relation = RELATIONS[rng.integers(len(RELATIONS))]
    objects = place(rng, [first, second], ok=lambda objs: relation_holds(objs[0], objs[1], relation, MARGIN))
    caption = Caption("relation", first[0], first[1], relation=relation, colour2=second[0], shape2=second[1])
    return objects, caption


def sample_batch(
    rng: np.random.Generator, batch: int, geometry: Geometry = SHIPPED_GEOMETRY
) -> tuple[np.ndarray, list[str]]:
    """``batch`` random scenes: images ``[B, 32, 32, 3]`` float32 in ``{0, 1}`` and their captions."""
    images = np.zeros((batch, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.float32)
    captions = []
    for i in range(batch):
        objects, caption = sample_scene(rng, geometry)
        images[i] = render(objects)
        captions.append(caption.text())
    return images, captions


def batch_rng(seed: int, step: int) -> np.random.Generator:
    """The data generator for training step ``step``: a resumed run draws the same batches."""
    return np.random.default_rng([seed, step])
