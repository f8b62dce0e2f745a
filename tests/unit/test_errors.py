"""How OpenVINO's errors are told: inference.errors.plain_message and one_line."""

from __future__ import annotations

from inference.errors import MAX_REASON_CHARS, one_line, plain_message

# As OpenVINO 2026.4 raises it for a model whose MatMul cannot take its input (tests.support.broken_model).
MATMUL_ERROR = (
    "Exception from src/inference/src/cpp/core.cpp:84:\n"
    "Check 'DimType::merge(merged_dimension, arg0_col_dim, arg1_row_dim) || arg0_col_dim.is_dynamic()' failed at "
    "src/core/shape_inference/include/matmul_shape_inference.hpp:65:\n"
    "While validating node 'opset1::MatMul MatMul_19' with friendly_name 'MatMul_19':\n"
    "Incompatible MatMul matrix dimension. First input dimension=65 doesn't match the second input dimension=64\n\n"
)


def test_every_line_but_the_source_locations_is_kept_on_one_line() -> None:
    assert plain_message(RuntimeError(MATMUL_ERROR)) == (
        "While validating node 'opset1::MatMul MatMul_19' with friendly_name 'MatMul_19': "
        "Incompatible MatMul matrix dimension. First input dimension=65 doesn't match the second input dimension=64"
    )


def test_an_error_with_nothing_else_to_say_is_named_by_its_type() -> None:
    assert plain_message(RuntimeError("Exception from src/inference/src/cpp/core.cpp:84:\n\n")) == "RuntimeError"


def test_a_long_reason_is_cut_to_its_bound() -> None:
    said = plain_message(RuntimeError("word " * 1000))
    assert len(said) == MAX_REASON_CHARS and said.endswith("word…")
    assert one_line("a\n  b\tc") == "a b c"
