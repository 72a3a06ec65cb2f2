"""Small-detail scenes: large canvases of several aspect ratios holding tiny objects, and their questions.

The objects are sized against a single view of `view_size` px (the demo tower's 64): once the whole canvas
is shrunk to that view (LLaVA-1.5's pad-and-resize, or an anyres grid's base image) an object covers less
than about one pixel, so its shape is gone and its colour is a faint blend with the background; in a view
three times larger (an anyres grid up to 3 x 3 tiles) it is a 2-3 px blob at full contrast. Shapes are drawn
with equal areas, so a blob's brightness says nothing about its shape. With `pair_prob` an object is placed
beside another with a gap narrower than a pixel of the single view, where the two merge into one blob.

Questions (single-word answers, "top left"-style phrases for positions) need that detail: the colour or
shape of the object in a quadrant, how many objects (of a colour or shape) there are, and which quadrant an
object of a given colour and/or shape is in.
"""

from __future__ import annotations

import io
import math
import random
from dataclasses import dataclass
from typing import Callable

from PIL import Image, ImageDraw

from data_prep.synth.programs import QA, plural
from data_prep.synth.world import WorldConfig, _draw

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")
HALF_EXTENT = {"square": 0.5, "circle": 1 / math.sqrt(math.pi), "triangle": 1 / math.sqrt(2), "diamond": 1 / math.sqrt(2)}
"""Half the bounding-box side of a shape whose area is that of a unit square (the world's triangle has
base = height, its diamond equal diagonals)."""
DETAIL_PROGRAMS = ("detail_color", "detail_shape", "detail_count", "detail_where")


@dataclass(frozen=True)
class DetailConfig:
    """What the small-detail split (`mm-prep synth --detail`) contains; colours and shapes are the world's."""

    num_train: int | None = None
    """Training scenes (`detail/` shards); None = as many as the other training splits."""
    num_eval: int | None = None
    """Held-out scenes (`eval/detail/`); None = as many as the other evaluation splits."""
    long_sides: tuple[int, ...] = (192, 256, 320, 384)
    """Canvas long side in px, drawn uniformly."""
    aspects: tuple[float, ...] = (1.0, 4 / 3, 1.5, 2.0, 3.0)
    """Long side / short side, drawn uniformly; landscape or portrait by a coin."""
    view_size: int = 64
    """Side of the single view the objects are sized against (the demo tower's input)."""
    object_px: tuple[float, float] = (0.7, 1.0)
    """Object size range: side of the square of equal area, in pixels of the single view."""
    min_objects: int = 2
    """Fewest objects in a scene (two: so that where an object is, is a question about which blob it is)."""
    max_objects: int = 4
    """Most objects in a scene."""
    pair_prob: float = 0.25
    """Chance that an object is placed right beside an earlier one (in its quadrant)."""
    pair_gap_px: float = 0.5
    """Gap between the boxes of such a pair, in pixels of the single view (below one: they merge there)."""
    supersample: int = 8
    """Objects are drawn at this multiple and box-filtered down (anti-aliased edges at sub-pixel sizes)."""

    def __post_init__(self) -> None:
        if min(self.num_train or 0, self.num_eval or 0) < 0:
            raise ValueError("detail: num_train and num_eval must be >= 0")
        if not 1 <= self.min_objects <= self.max_objects or not 0 <= self.pair_prob <= 1:
            raise ValueError("detail: need 1 <= min_objects <= max_objects and 0 <= pair_prob <= 1")
        if not 0 < self.object_px[0] <= self.object_px[1] or self.supersample < 1 or self.pair_gap_px <= 0:
            raise ValueError("detail: need 0 < object_px[0] <= object_px[1], supersample >= 1, pair_gap_px > 0")
        if min(self.long_sides) <= self.view_size or min(self.aspects) < 1:
            raise ValueError(f"detail: long sides must exceed view_size ({self.view_size} px) and aspects be >= 1")

    def counts(self, num_train: int, num_eval: int) -> tuple[int, int]:
        """(training scenes, evaluation scenes), the other splits' counts where not given."""
        return (num_train if self.num_train is None else self.num_train,
                num_eval if self.num_eval is None else self.num_eval)  # fmt: skip


@dataclass
class DetailScene:
    """A canvas and its tiny objects: shape, colour, centre, size (side of the equal-area square), box, quadrant."""

    width: int
    height: int
    objects: list[dict]

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "objects": self.objects}


def quadrant_of(x: float, y: float, width: int, height: int) -> str:
    return QUADRANTS[2 * (y >= height / 2) + (x >= width / 2)]


def _canvas(rng: random.Random, detail: DetailConfig) -> tuple[int, int]:
    long = rng.choice(detail.long_sides)
    short = max(8, round(long / rng.choice(detail.aspects) / 8) * 8)  # whole 8-px blocks, like most photos' sides
    return (long, short) if rng.random() < 0.5 else (short, long)


def _free(box: list[float], placed: list[dict], clearance: float) -> bool:
    """`box` keeps `clearance` px from every placed object's box (on one axis at least)."""
    return all(box[0] >= o["bbox"][2] + clearance or o["bbox"][0] >= box[2] + clearance or
               box[1] >= o["bbox"][3] + clearance or o["bbox"][1] >= box[3] + clearance for o in placed)  # fmt: skip


def _inside_quadrant(box: list[float], quadrant: str, width: int, height: int, margin: float) -> bool:
    """The whole box lies `margin` px inside its quadrant, so no view puts it across a midline or an edge."""
    left, top = ("right" in quadrant) * width / 2, ("bottom" in quadrant) * height / 2
    return (box[0] >= left + margin and box[2] <= left + width / 2 - margin and
            box[1] >= top + margin and box[3] <= top + height / 2 - margin)  # fmt: skip


def _box(cx: float, cy: float, half: float) -> list[float]:
    return [round(cx - half, 2), round(cy - half, 2), round(cx + half, 2), round(cy + half, 2)]


def _place(rng: random.Random, placed: list[dict], half: float, width: int, height: int, unit: float,
           detail: DetailConfig) -> tuple[list[float], str] | None:  # fmt: skip
    """A box for a new object: beside an earlier one (a pair) or anywhere clear; None when nothing fits."""
    margin, clearance = 1.5 * unit, 3 * unit  # single-view pixels: off the midlines; apart unless paired
    if placed and rng.random() < detail.pair_prob:
        mate = rng.choice(placed)
        angle = rng.uniform(0, 2 * math.pi)
        mate_half = (mate["bbox"][2] - mate["bbox"][0]) / 2
        # centre distance on the box's side: the two boxes are `pair_gap_px` apart along the nearer axis
        reach = (mate_half + half + detail.pair_gap_px * unit) / max(abs(math.cos(angle)), abs(math.sin(angle)))
        box = _box(mate["center"][0] + reach * math.cos(angle), mate["center"][1] + reach * math.sin(angle), half)
        others = [o for o in placed if o is not mate]
        if _inside_quadrant(box, mate["quadrant"], width, height, margin) and _free(box, others, clearance):
            return box, mate["quadrant"]
    for _ in range(50):
        quadrant = rng.choice(QUADRANTS)
        left, top = ("right" in quadrant) * width / 2, ("bottom" in quadrant) * height / 2
        lo_x, lo_y = left + margin + half, top + margin + half
        hi_x, hi_y = left + width / 2 - margin - half, top + height / 2 - margin - half
        if hi_x < lo_x or hi_y < lo_y:
            return None
        box = _box(rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y), half)
        if _inside_quadrant(box, quadrant, width, height, margin) and _free(box, placed, clearance):
            return box, quadrant
    return None


def sample_detail_scene(rng: random.Random, world: WorldConfig, detail: DetailConfig) -> DetailScene:
    """Draw a canvas and its objects; all randomness comes from `rng`."""
    width, height = _canvas(rng, detail)
    unit = max(width, height) / detail.view_size  # source px per single-view px (pad-to-square scale)
    objects: list[dict] = []
    for _ in range(rng.randint(detail.min_objects, detail.max_objects)):
        shape, color = rng.choice(world.shapes), rng.choice(world.colors)
        size = rng.uniform(*detail.object_px) * unit
        spot = _place(rng, objects, HALF_EXTENT[shape] * size, width, height, unit, detail)
        if spot is None:
            continue
        box, quadrant = spot
        center = [round((box[0] + box[2]) / 2, 2), round((box[1] + box[3]) / 2, 2)]
        objects.append({"shape": shape, "color": color, "center": center, "size": round(size, 2), "bbox": box,
                        "quadrant": quadrant})  # fmt: skip
    objects.sort(key=lambda o: (QUADRANTS.index(o["quadrant"]), o["center"][1], o["center"][0]))
    for number, obj in enumerate(objects):
        obj["id"] = number
    return DetailScene(width, height, objects)


def _overlaps(a: list[float], b: list[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def render_detail_png(scene: DetailScene, world: WorldConfig, detail: DetailConfig) -> bytes:
    """PNG bytes of the scene. Each object is drawn supersampled in a pixel-aligned patch around it (with any
    neighbour reaching into it) and box-filtered into place: the same pixels as supersampling the whole
    canvas, at a fraction of the cost, since the rest of the canvas is plain background."""
    image = Image.new("RGB", (scene.width, scene.height), world.background)
    scale = detail.supersample
    for obj in scene.objects:
        x0, y0 = max(0, math.floor(obj["bbox"][0]) - 1), max(0, math.floor(obj["bbox"][1]) - 1)
        x1, y1 = min(scene.width, math.ceil(obj["bbox"][2]) + 1), min(scene.height, math.ceil(obj["bbox"][3]) + 1)
        patch = Image.new("RGB", ((x1 - x0) * scale, (y1 - y0) * scale), world.background)
        draw = ImageDraw.Draw(patch)
        for other in scene.objects:
            if _overlaps(other["bbox"], [x0, y0, x1, y1]):
                b = other["bbox"]
                _draw(draw, {**other, "bbox": [b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0]}, scale)
        image.paste(patch.resize((x1 - x0, y1 - y0), Image.Resampling.BOX), (x0, y0))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _alone_in_quadrant(scene: DetailScene, rng: random.Random) -> tuple[dict, str] | None:
    quadrants = [q for q in QUADRANTS if sum(o["quadrant"] == q for o in scene.objects) == 1]
    if not quadrants:
        return None
    quadrant = rng.choice(quadrants)
    return next(o for o in scene.objects if o["quadrant"] == quadrant), quadrant


def detail_attribute(name: str) -> Callable[[DetailScene, random.Random, WorldConfig], QA | None]:
    """'What color/shape is the tiny object in the top left of the image?' (the only object there)."""

    def program(scene: DetailScene, rng: random.Random, world: WorldConfig) -> QA | None:
        found = _alone_in_quadrant(scene, rng)
        if found is None:
            return None
        obj, quadrant = found
        return QA(f"detail_{name}", f"What {name} is the tiny object in the {quadrant} of the image?", obj[name], "other")

    return program


def detail_count(scene: DetailScene, rng: random.Random, world: WorldConfig) -> QA | None:
    """'How many tiny (red) objects / circles are there?'; the colour or shape mostly one in the scene. Half
    the questions count every object, which keeps the answers spread (a colour's count is mostly 0 or 1)."""
    kind = rng.choice(["all", "all", "color", "shape"])
    source = rng.choice(scene.objects) if scene.objects and rng.random() < 0.6 else None
    if kind == "all":
        where, noun = {}, "tiny objects"
    else:
        value = source[kind] if source else rng.choice(getattr(world, kind + "s"))
        where, noun = {kind: value}, f"tiny {value} objects" if kind == "color" else f"tiny {plural(value)}"
    number = sum(all(o[a] == v for a, v in where.items()) for o in scene.objects)
    return QA("detail_count", f"How many {noun} are there?", str(number), "number")


def refer_tiny(obj: dict, scene: DetailScene, rng: random.Random) -> str | None:
    """'the tiny red object' / 'the tiny circle' / 'the tiny red circle': the shortest unique description."""
    for combo in ([("color",), ("shape",)], [("color", "shape")]):
        unique = [c for c in combo if sum(all(o[a] == obj[a] for a in c) for o in scene.objects) == 1]
        if unique:
            picked = rng.choice(unique)
            return "the tiny " + " ".join([obj["color"]] * ("color" in picked) + [obj["shape"] if "shape" in picked else "object"])
    return None


def detail_where(scene: DetailScene, rng: random.Random, world: WorldConfig) -> QA | None:
    """'In which part of the image is the tiny red circle?' -> 'top left' ...; only where objects sit in two
    quadrants at least, so the position of a blob alone does not give the answer."""
    if len({o["quadrant"] for o in scene.objects}) < 2:
        return None
    obj = rng.choice(scene.objects)
    ref = refer_tiny(obj, scene, rng)
    if ref is None:
        return None
    return QA("detail_where", f"In which part of the image is {ref}?", obj["quadrant"], "other")


PROGRAMS = {"detail_color": detail_attribute("color"), "detail_shape": detail_attribute("shape"),
            "detail_count": detail_count, "detail_where": detail_where}  # fmt: skip


def answer_space_size(program: str, world: WorldConfig, detail: DetailConfig) -> int:
    """How many answers a program can give (its chance level is one over that)."""
    sizes = {"detail_color": len(world.colors), "detail_shape": len(world.shapes),
             "detail_count": detail.max_objects + 1, "detail_where": len(QUADRANTS)}  # fmt: skip
    if program not in sizes:
        raise KeyError(f"no answer space for {program!r}; valid: {', '.join(sizes)}")
    return sizes[program]


def ask_detail(scene: DetailScene, rng: random.Random, world: WorldConfig, *, avoid: set[str] = frozenset(),
               tries: int = 8) -> QA | None:  # fmt: skip
    """A question not already in `avoid`, from the first program in a random order that has one for this scene.
    (Drawing a program per try instead would hand the turns of the programs that often do not fit, such as
    the colour of the only object in a quadrant, to the one that always does, counting.)"""
    for name in rng.sample(DETAIL_PROGRAMS, len(DETAIL_PROGRAMS)):
        for _ in range(tries):
            qa = PROGRAMS[name](scene, rng, world)
            if qa is not None and qa.question not in avoid:
                return qa
    return None
