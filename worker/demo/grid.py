"""Sample grids of the digit demo models, drawn by the runners that serve them.

    python -m worker.demo.grid [--models models.yaml] [--out docs]

writes `<out>/<model>.png` for each of demo-image, demo-dcgan and demo-vae the registry
names and that is built: ten columns (the digits 0 to 9), one row per seed; and
`<out>/<model>-walk.png` for the generators: latent walks between two seeds, a row per
digit. The README shows them.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from shared.registry import ModelSpec, Task, load_registry
from worker.demo import DCGAN_MODEL, DIGIT_LABELS, IMAGE_MODEL, VAE_MODEL
from worker.runners.base import ItemInput

TILE = 48
GAP = 2
GRID_SEEDS = (1, 2, 3, 4)
WALK = {"from_seed": 5, "to_seed": 6, "steps": 10}


def runner_for(spec: ModelSpec):
    from worker.runners import build_runner

    runner = build_runner(spec, "cpu")
    runner.setup()
    return runner


def grid_items() -> list[ItemInput]:
    """Row by row: each seed, then each digit."""
    cells = [(seed, digit) for seed in GRID_SEEDS for digit in range(len(DIGIT_LABELS))]
    return [ItemInput(i, str(digit), seed) for i, (seed, digit) in enumerate(cells)]


def walk_items() -> list[ItemInput]:
    """One walk per digit, `WALK["steps"]` items each (their index says their step)."""
    steps = WALK["steps"]
    return [ItemInput(digit * steps + step, str(digit), WALK["from_seed"])
            for digit in range(len(DIGIT_LABELS)) for step in range(steps)]


def draw(spec: ModelSpec, items: list[ItemInput], params: dict, columns: int):
    """The items' images in a grid of `columns`, each tile TILE pixels square."""
    from PIL import Image

    given = {**spec.defaults, **params, "width": TILE, "height": TILE}  # the registry defaults, as a job gets them
    outputs = runner_for(spec).predict(items, given)
    rows = (len(outputs) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (TILE + GAP) - GAP, rows * (TILE + GAP) - GAP), "white")
    for position, output in enumerate(outputs):
        tile = Image.open(io.BytesIO(output.image_png)).convert("RGB")
        row, column = divmod(position, columns)
        sheet.paste(tile, (column * (TILE + GAP), row * (TILE + GAP)))
    return sheet


def write_grids(models_file: Path, out_dir: Path) -> list[Path]:
    registry = load_registry(models_file)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (IMAGE_MODEL, DCGAN_MODEL, VAE_MODEL):
        spec = registry.get(name)
        if spec is None or spec.local_source() is None:
            continue
        draw(spec, grid_items(), {}, len(DIGIT_LABELS)).save(out_dir / f"{name}.png")
        written.append(out_dir / f"{name}.png")
        if spec.task in (Task.GAN_IMAGE, Task.VAE_IMAGE):
            draw(spec, walk_items(), {"interpolate": WALK}, WALK["steps"]).save(out_dir / f"{name}-walk.png")
            written.append(out_dir / f"{name}-walk.png")
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, default=Path("models.yaml"))
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args(argv)
    for path in write_grids(args.models, args.out):
        print(path)


if __name__ == "__main__":
    main()
