"""Compliance: identity, access control, consent, audit, encryption at rest, retention.

Imports nothing of Medi-KUS; the record core depends on it. Built in the compliance issue.
"""

__all__: list[str] = []
