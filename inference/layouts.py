"""Where an image input keeps its height, width and channels: its layout, NHWC or NCHW.

The layout of a 4-D input comes, first found, from the model's `layout` setting (config.json or
--layout: "NHWC", "NCHW", or a JSON object of them by input name), from the layout OpenVINO's model file
carries, or is guessed from the shape the model was exported with: 1 or 3 in position 1 is NCHW
([1,3,224,224]), else in position 3 NHWC ([1,224,224,3]). An input whose layout is none of these takes
no images. Only images need it: tensors are always served in the model's own layout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from inference.per_input import parse_per_input
from inference.signature import DYNAMIC

NHWC, NCHW = "NHWC", "NCHW"
LAYOUTS = (NHWC, NCHW)
IMAGE_CHANNELS = (1, 3)  # gray or colour (BGR); a dynamic channel dimension gets colour
# A model's setting: input name -> layout; the key None applies to every input.
LayoutSetting = dict[str | None, str]


class LayoutParseError(ValueError):
    pass


def parse_layout_setting(value: object) -> LayoutSetting:
    """A model's `layout` from the command line (a string) or config.json (a string or an object)."""
    return parse_per_input(value, _layout, LayoutParseError, "layout")


def _layout(value: object) -> str:
    if isinstance(value, str) and value.strip().upper() in LAYOUTS:
        return value.strip().upper()
    shown = json.dumps(value) if not isinstance(value, str) else repr(value)
    raise LayoutParseError(
        f"invalid layout {shown[:60]}: the model input's layout is NHWC or NCHW (a transposing layout such as "
        "NHWC:NCHW is not served)"
    )


def image_layout(configured: str | None, model_layout: str, exported: tuple[int, ...]) -> str:
    """The layout images are decoded into for a 4-D input ("" when it takes none): `configured` (the
    model's setting for it), else `model_layout` (the letters of OpenVINO's layout, e.g. "NCHW"), else
    guessed from `exported`, the shape the model was exported with."""
    if len(exported) != 4:
        return ""
    if configured is not None:
        return configured
    if model_layout in LAYOUTS:
        return model_layout
    if exported[1] in IMAGE_CHANNELS:
        return NCHW
    if exported[3] in IMAGE_CHANNELS:
        return NHWC
    return ""


@dataclass(frozen=True)
class ImageGeometry:
    """An image input's axes and its fixed height, width and channels (DYNAMIC where any size is taken)."""

    layout: str
    height: int
    width: int
    channels: int

    @staticmethod
    def of(layout: str, shape: tuple[int, ...]) -> ImageGeometry:
        if layout == NHWC:
            _, height, width, channels = shape
        else:
            _, channels, height, width = shape
        return ImageGeometry(layout, height, width, channels)

    @property
    def takes_images(self) -> bool:
        return self.channels in (*IMAGE_CHANNELS, DYNAMIC)

    @property
    def decoded_channels(self) -> int:
        return 3 if self.channels == DYNAMIC else self.channels

    def shape(self, count: int, height: int, width: int) -> tuple[int, ...]:
        """The tensor of `count` images of `height` x `width` in this layout."""
        if self.layout == NHWC:
            return (count, height, width, self.decoded_channels)
        return (count, self.decoded_channels, height, width)
