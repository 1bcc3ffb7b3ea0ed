"""fednode: a node of the electronic-supervision (电子监察) federation tree."""

__version__ = "0.1.0"
