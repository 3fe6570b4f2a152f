"""``fusion demo``: the whole pipeline on the embedded synthetic world, on a CPU, with no network.

``pipeline`` trains every stage, ``scoring`` generates and reads the results back with the world's oracle,
``page`` writes the report a person reads (``index.html``).
"""

from fusion.demo.pipeline import DemoConfig, DemoReport, run

__all__ = ["DemoConfig", "DemoReport", "run"]
