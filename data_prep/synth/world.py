"""Random scenes (scene graphs) and their rendering.

A scene is 1..N objects on a coarse grid, one object per cell; each object has a shape, a colour,
a size, a pixel bounding box and its cell. Relations (left of / right of / above / below) follow
the cells: strictly smaller column = left, strictly smaller row = above.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass, field

from PIL import Image, ImageDraw

PALETTE = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 90, 255),
    "yellow": (240, 220, 40),
    "purple": (170, 60, 220),
    "cyan": (40, 215, 225),
    "orange": (255, 140, 20),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZE_SCALES = {"small": 0.45, "large": 0.8}
"""Object extent as a fraction of its grid cell."""
RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True)
class WorldConfig:
    """What scenes may contain; the defaults suit a tiny model seeing 64x64 images."""

    image_size: int = 64
    """Rendered image side in pixels."""
    grid: int = 3
    """Objects sit in the cells of a grid x grid layout."""
    shapes: tuple[str, ...] = ("circle", "square", "triangle")
    """Shape names (from circle, square, triangle, diamond)."""
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "cyan")
    """Colour names (keys of PALETTE)."""
    sizes: tuple[str, ...] = ("small", "large")
    """Size names (keys of SIZE_SCALES)."""
    min_objects: int = 1
    """Fewest objects in a scene."""
    max_objects: int = 4
    """Most objects in a scene."""
    jitter: float = 0.08
    """Largest random offset of an object from its cell centre, as a fraction of the cell."""
    background: tuple[int, int, int] = (32, 32, 32)
    """Background colour (RGB)."""
    supersample: int = 4
    """Draw at this multiple of image_size, then downsample (anti-aliased edges)."""

    def __post_init__(self) -> None:
        _check_names("shape", self.shapes, SHAPES)
        _check_names("color", self.colors, PALETTE)
        _check_names("size", self.sizes, SIZE_SCALES)
        if not 1 <= self.min_objects <= self.max_objects <= self.grid * self.grid:
            raise ValueError(f"need 1 <= min_objects <= max_objects <= grid^2 ({self.grid * self.grid})")
        if self.image_size < 8 * self.grid or self.supersample < 1 or not 0 <= self.jitter < 0.5:
            raise ValueError("image_size must be >= 8 px per grid cell, supersample >= 1, 0 <= jitter < 0.5")

    @property
    def categories(self) -> list[tuple[str, str]]:
        """(colour, shape) pairs: the 'objects' of existence and POPE questions."""
        return [(color, shape) for shape in self.shapes for color in self.colors]


def _check_names(kind: str, names: tuple[str, ...], valid) -> None:
    unknown = [n for n in names if n not in valid]
    if unknown or len(set(names)) != len(names) or not names:
        raise ValueError(f"bad {kind} list {list(names)}: valid {kind}s are {', '.join(valid)} (distinct, non-empty)")


@dataclass
class Scene:
    """A scene graph: objects with attributes and boxes, and pairwise relations."""

    objects: list[dict]
    relations: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"objects": self.objects, "relations": self.relations}


def sample_scene(rng: random.Random, world: WorldConfig) -> Scene:
    """Draw a random scene; all randomness comes from `rng`."""
    cell = world.image_size / world.grid
    count = rng.randint(world.min_objects, world.max_objects)
    cells = rng.sample(range(world.grid * world.grid), count)
    objects = []
    for number, index in enumerate(cells):
        row, col = divmod(index, world.grid)
        size = rng.choice(world.sizes)
        half = SIZE_SCALES[size] * cell / 2
        slack = min(world.jitter * cell, cell / 2 - half)  # the object stays inside its cell
        cx = (col + 0.5) * cell + rng.uniform(-slack, slack)
        cy = (row + 0.5) * cell + rng.uniform(-slack, slack)
        objects.append({
            "id": number,
            "shape": rng.choice(world.shapes),
            "color": rng.choice(world.colors),
            "size": size,
            "cell": [row, col],
            "bbox": [round(cx - half, 2), round(cy - half, 2), round(cx + half, 2), round(cy + half, 2)],
        })  # fmt: skip
    objects.sort(key=lambda o: o["cell"])  # reading order: ids follow rows, then columns
    for number, obj in enumerate(objects):
        obj["id"] = number
    return Scene(objects, relations_of(objects))


def relations_of(objects: list[dict]) -> list[dict]:
    """All relations between ordered pairs of distinct objects, from their cells."""
    return [
        {"subject": a["id"], "relation": relation, "object": b["id"]}
        for a in objects for b in objects if a is not b
        for relation in RELATIONS if relation_holds(a, b, relation)
    ]  # fmt: skip


def relation_holds(a: dict, b: dict, relation: str) -> bool:
    """Whether `a` is `relation` `b`, from their grid cells (rows grow downwards)."""
    (ra, ca), (rb, cb) = a["cell"], b["cell"]
    return {"left of": ca < cb, "right of": ca > cb, "above": ra < rb, "below": ra > rb}[relation]


def _draw(draw: ImageDraw.ImageDraw, obj: dict, scale: int) -> None:
    x0, y0, x1, y1 = (v * scale for v in obj["bbox"])
    color = PALETTE[obj["color"]]
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if obj["shape"] == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=color)
    elif obj["shape"] == "square":
        draw.rectangle((x0, y0, x1, y1), fill=color)
    elif obj["shape"] == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=color)
    elif obj["shape"] == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=color)
    else:
        raise ValueError(f"unknown shape {obj['shape']!r}; valid: {', '.join(SHAPES)}")


def render_png(scene: Scene, world: WorldConfig) -> bytes:
    """PNG bytes of the scene (deterministic for a scene)."""
    big = world.image_size * world.supersample
    image = Image.new("RGB", (big, big), world.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        _draw(draw, obj, world.supersample)
    if world.supersample > 1:
        image = image.resize((world.image_size, world.image_size), Image.Resampling.BOX)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()
