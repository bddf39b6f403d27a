"""What happened to each input, told the same way by every protocol.

Two fields, each present only when it has something to say, so answers to short
inputs stay exactly as they were: ``truncated_inputs``, the positions (in request
order, from 0) of the inputs the model did not read whole, and ``windows``, the
number of windows each input was read in, when any took more than one. TEI-style
answers send them as the ``x-truncated-inputs`` and ``x-windows`` headers, the Open
Inference Protocol as response parameters of the same names.
"""

from __future__ import annotations

from collections.abc import Sequence

from service.core.windows import InputReport


def report_fields(reports: Sequence[InputReport]) -> dict[str, str]:
    fields = {}
    truncated = [str(index) for index, report in enumerate(reports) if report.truncated]
    if truncated:
        fields["truncated_inputs"] = ",".join(truncated)
    if any(report.windows > 1 for report in reports):
        fields["windows"] = ",".join(str(report.windows) for report in reports)
    return fields


def report_headers(reports: Sequence[InputReport]) -> dict[str, str]:
    return {"x-" + name.replace("_", "-"): value for name, value in report_fields(reports).items()}
