"""Refusals: a teacher's reply that declines the prompt is rejected, not trained on."""

from __future__ import annotations

import re

DEFAULT_REFUSAL_PATTERNS = (
    r"^(?:I'm|I am) sorry,? (?:but )?(?:I|we) (?:can(?:not|'t)|won't|am unable|'m unable|am not able|'m not able)",
    r"^(?:Sorry|I apologi[sz]e),? (?:but )?I (?:can(?:not|'t)|won't|am unable|'m unable)",
    r"^I (?:can(?:not|'t)|won't|will not) (?:help(?! but)|assist|comply|provide|do that|fulfil|fulfill|support|create|write|engage)",
    r"^(?:I'm|I am) (?:unable|not able) to (?:help|assist|comply|provide|fulfil|fulfill)",
    r"^As an AI(?: language model)?, I (?:can(?:not|'t)|am unable|won't) (?:help|assist|comply|provide|fulfil|fulfill|create|write|engage)",
)


class RefusalDetector:
    """Case-insensitive regexes matched at the start of a response (curly quotes folded)."""

    def __init__(self, patterns: list[str] | tuple[str, ...], scan_chars: int = 300, enabled: bool = True) -> None:
        self.enabled = enabled
        self.scan_chars = scan_chars
        self.patterns = [re.compile(p, re.IGNORECASE) for p in patterns]

    def __call__(self, text: str) -> bool:
        if not self.enabled or not text:
            return False
        head = text[: self.scan_chars].replace("\u2019", "'").replace("\u2018", "'").lstrip(' \t\n"*_#>')
        return any(p.search(head) for p in self.patterns)
