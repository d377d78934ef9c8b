"""``iqt-enhance demo``: the main job on bundled or fetched data."""
from .runner import cmd_demo, demo_methods

__all__ = ["cmd_demo", "demo_methods"]
