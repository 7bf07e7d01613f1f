"""Scale and reporting for the tests that try to break the service (issue: reliability).

Each such test runs in `make test` at its quick size and, with `make torture`
(IMAGEGEN_TORTURE=full), at its full size. Tests record what they did and found with the
`torture_report` fixture; the rows are printed as one table at the end of the session.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")

FULL = os.environ.get("IMAGEGEN_TORTURE", "").lower() == "full"


def scale(quick: T, full: T) -> T:
    """The quick value in `make test`, the full one in `make torture`."""
    return full if FULL else quick


@dataclass
class Finding:
    scenario: str
    figures: dict[str, Any]
    verdict: str = "ok"


@dataclass
class TortureReport:
    findings: list[Finding] = field(default_factory=list)

    def record(self, scenario: str, verdict: str = "ok", **figures: Any) -> None:
        """One row of the summary: what ran, its figures (counts, seconds), the verdict."""
        self.findings.append(Finding(scenario, figures, verdict))

    def table(self) -> str:
        if not self.findings:
            return ""
        width = max(len(finding.scenario) for finding in self.findings)
        mode = "full" if FULL else "quick"
        lines = [f"torture summary ({mode})", f"{'scenario':<{width}}  verdict  figures"]
        for finding in self.findings:
            figures = ", ".join(f"{key}={value}" for key, value in finding.figures.items())
            lines.append(f"{finding.scenario:<{width}}  {finding.verdict:<7}  {figures}")
        return "\n".join(lines)
