"""A model.xml that OpenVINO refuses with a reason said over several lines, for tests of load errors."""

from __future__ import annotations

from pathlib import Path

MATMUL_MISMATCH = "Incompatible MatMul matrix dimension"  # the last line of OpenVINO's reason


def break_model_xml(version_dir: Path) -> None:
    """Widen the digits model's input (a copy of it in `version_dir`) to 65 columns, which its first MatMul
    (64 rows) cannot take: OpenVINO says so over several lines ("While validating node …:", then
    MATMUL_MISMATCH …) when it reads the model."""
    xml = version_dir / "model.xml"
    text = xml.read_text()
    xml.write_text(text.replace('shape="?,64"', 'shape="?,65"', 1).replace("<dim>64</dim>", "<dim>65</dim>", 1))
