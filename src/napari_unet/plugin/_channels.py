"""The docks' channel controls: which channels of the image the network sees, or one grey plane."""

from __future__ import annotations

from typing import Any

from qtpy.QtWidgets import QCheckBox, QLineEdit

from napari_unet.channels import ChannelChoice, parse_channels

from ._layers import LayerProblem


class ChannelFields:
    """A "channels" text box ("0,2"; empty: all) and a "grey" check box, read as a `ChannelChoice`."""

    def __init__(self) -> None:
        self.edit = QLineEdit()
        self.edit.setPlaceholderText("all")
        self.edit.setToolTip("Channels the network sees, comma-separated (RGB: 0 red, 1 green, 2 blue); empty: all")
        self.grey = QCheckBox("grey (RGB: luminance; else the mean)")
        self.grey.setToolTip("Convert the chosen channels to one grey plane: an RGB image for a grey model")

    def choice(self) -> ChannelChoice:
        text = self.edit.text().strip()
        try:
            return ChannelChoice(parse_channels(text) if text else None, self.grey.isChecked())
        except ValueError as error:
            raise LayerProblem(str(error).replace("--channels", "the channels box")) from None

    def show(self, choice: ChannelChoice) -> None:
        self.edit.setText("" if choice.channels is None else ",".join(map(str, choice.channels)))
        self.grey.setChecked(choice.grey)

    def widgets(self) -> tuple[Any, Any]:
        return self.edit, self.grey
