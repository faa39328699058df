"""Reports as files people read: checks with verdicts, and the one HTML template and
style that every tokendyn page (``reproduce``'s index.html, ``analyze``'s report.html)
is built from. Imports nothing else of tokendyn, so any layer may use it."""

from .checks import OUTCOMES, Check, Figure, count_failures, count_outcomes, is_finding, shown_outcome
from .page import embed_image, markdown_to_html, page, table

__all__ = ["OUTCOMES", "Check", "Figure", "count_failures", "count_outcomes", "embed_image", "is_finding",
           "markdown_to_html", "page", "shown_outcome", "table"]
