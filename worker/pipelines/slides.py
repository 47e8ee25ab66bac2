"""The video pipeline's slides: what one says (``Slide``) and how it is drawn (``render_slide``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # Pillow itself is imported where it is used
    from PIL import Image

__all__ = ["Slide", "render_slide"]


@dataclass
class Slide:
    heading: str
    body: str
    narration: str
    footer: str = ""
    seconds: float = 0.0  # filled by generate-audio


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):  # an old Pillow, or no FreeType
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines: list[str] = []
    current = ""
    for word in text.split():
        trial = f"{current} {word}" if current else word
        if not current or draw.textlength(trial, font=font) <= width:
            current = trial
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def render_slide(slide: Slide, number: int, total: int, width: int, height: int) -> Image.Image:
    """One slide as a Pillow image (the frames add a moving time strip to it)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (15, 30, 60))
    draw = ImageDraw.Draw(image)
    margin = max(8, width // 20)
    heading_font = _font(max(10, height // 16))
    footer_font = _font(max(8, height // 26))
    draw.text((margin, margin), slide.heading, font=heading_font, fill=(127, 179, 255))
    top = margin + int(height / 16 * 1.8)
    bottom = height - margin - int(height / 26 * 2.2)
    size = max(10, height // 11 if number == 1 else height // 15)
    while True:  # the largest font that fits the body in the box
        font = _font(size)
        lines = _wrap(draw, slide.body, font, width - 2 * margin)
        line_height = int(size * 1.3)
        if len(lines) * line_height <= bottom - top or size <= 8:
            break
        size -= 1
    for i, line in enumerate(lines):
        y = top + i * line_height
        if y + line_height > bottom + line_height // 2:
            break
        draw.text((margin, y), line, font=font, fill=(240, 244, 250))
    footer = f"{slide.footer}   {number}/{total}".strip()
    draw.text(
        (margin, height - margin - height // 26), footer, font=footer_font, fill=(150, 160, 180)
    )
    return image
