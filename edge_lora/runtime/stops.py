"""Stop strings over a stream of token pieces."""

from __future__ import annotations

import codecs


class StopScanner:
    """Assembles UTF-8 text from token pieces (bytes; a character may span pieces) and holds back
    what could still become a stop string, so no piece of a stop string is ever emitted.
    ``feed`` returns the text that is safe to show; ``stopped`` tells that a stop string was
    found (``text`` is then cut before it); ``finish`` returns what was held back."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self.text = ""
        self.emitted = 0
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        self.text += self.decoder.decode(piece)
        for s in self.stops:
            i = self.text.find(s, max(0, self.emitted - len(s)))
            if i >= 0:
                self.text = self.text[:i]
                self.stopped = True
                return self._emit(len(self.text))
        hold = max((_overlap(self.text, s) for s in self.stops), default=0)
        return self._emit(len(self.text) - hold)

    def finish(self) -> str:
        if not self.stopped:
            self.text += self.decoder.decode(b"", final=True)
        return self._emit(len(self.text))

    def _emit(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out


def _overlap(text: str, stop: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``stop``."""
    for n in range(min(len(stop) - 1, len(text)), 0, -1):
        if text.endswith(stop[:n]):
            return n
    return 0
