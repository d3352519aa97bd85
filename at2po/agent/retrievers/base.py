"""The retriever interface: top-k passages with scores for a batch of queries."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass


@dataclass
class Passage:
    id: str
    title: str
    text: str
    score: float = 0.0

    @property
    def contents(self) -> str:
        """Search-R1's ``contents`` field: '"title"\\ntext'."""
        return f'"{self.title}"\n{self.text}' if self.title else self.text


class RetrieverError(RuntimeError):
    """A search could not be served (server down, timeout, bad index); the env turns it into an observation."""


class RetrieverTimeout(RetrieverError):
    """A search got no answer within its timeout (counted as a timeout, not as an error)."""


class Retriever(ABC):
    @abstractmethod
    def batch_search(self, queries: list[str], k: int) -> list[list[Passage]]:
        """Top-k passages per query, best first."""

    def search(self, query: str, k: int) -> list[Passage]:
        return self.batch_search([query], k)[0]

    def close(self) -> None:  # release files / sessions
        pass
