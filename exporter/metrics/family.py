"""Metric families that render themselves fast, and the exposition of a registry of them.

prometheus_client renders a sample in about 8 µs (it validates and escapes every label name of
every sample and builds a Sample with a dict per histogram bucket), which makes a 30k-series
scrape take hundreds of milliseconds. These families keep their rows as plain tuples and
write text directly: label names are valid by construction (metrics/defs.py), so only label
values are escaped. They still are prometheus_client ``Metric`` objects: ``samples`` is built
on demand, so the registry API and client_python's own exposition keep working, and a test
checks that both render the same bytes.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Sequence

from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_DIRECT_INT_LIMIT = 1_000_000  # below it an integer prints as "<n>.0", as Go's formatting does
# Lines per chunk of a streamed exposition: ~100-300 KB, so a 30k-series page never exists whole
# in memory (as a list of lines, a str and bytes it would cost several times its 4 MB).
CHUNK_LINES = 2048


def format_value(value: float) -> str:
    """A sample value exactly as client_python (and Go) print it."""
    if type(value) is int and 0 <= value < _DIRECT_INT_LIMIT:
        return f"{value}.0"
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]  # untyped upstream
    return text


def _escape_value(value: str) -> str:
    if "\\" in value or '"' in value or "\n" in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


class _Family(Metric):
    """Shared by both kinds: name handling, HELP/TYPE lines, label order."""

    def __init__(self, name: str, documentation: str, kind: str, labels: Sequence[str]) -> None:
        # Metric.__init__ would make ``samples`` a plain list; here it is computed on demand.
        self.name = name.removesuffix("_total") if kind == "counter" else name
        self.documentation = documentation
        self.type = kind
        self.unit = ""
        self._labelnames = tuple(labels)
        # client_python writes labels sorted by name.
        self._order = sorted(range(len(self._labelnames)), key=self._labelnames.__getitem__)

    def _labelstr(self, values: Sequence[str]) -> str:
        names = self._labelnames
        return ",".join(f'{names[i]}="{_escape_value(values[i])}"' for i in self._order)

    def header(self, *, openmetrics: bool) -> str:
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            name = self.name
            doc = doc.replace('"', r"\"")
        else:
            name = f"{self.name}_total" if self.type == "counter" else self.name
        return f"# HELP {name} {doc}\n# TYPE {name} {self.type}\n"

    def lines(self) -> Iterator[str]:
        raise NotImplementedError


class ScalarFamily(_Family):
    """A counter or a gauge: one value per label set."""

    def __init__(self, name: str, documentation: str, kind: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, kind, labels)
        self._rows: list[tuple[Sequence[str], float]] = []

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self._rows.append((labels, value))

    @property
    def samples(self) -> list[Sample]:  # type: ignore[override]  # Metric's attribute, derived
        name = f"{self.name}_total" if self.type == "counter" else self.name
        return [
            Sample(name, dict(zip(self._labelnames, labels, strict=True)), float(value))
            for labels, value in self._rows
        ]

    def lines(self) -> Iterator[str]:
        name = f"{self.name}_total" if self.type == "counter" else self.name
        if not self._labelnames:
            return (f"{name} {format_value(value)}\n" for _, value in self._rows)
        labelstr = self._labelstr
        return (
            f"{name}{{{labelstr(labels)}}} {format_value(value)}\n" for labels, value in self._rows
        )


class HistogramFamily(_Family):
    """Cumulative buckets, a sum and a count per label set."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, "histogram", labels)
        self._rows: list[tuple[Sequence[str], Sequence[tuple[str, float]], float]] = []
        # Where "le" falls among the sorted label names of a bucket sample.
        self._le_at = sum(1 for name in self._labelnames if name < "le")

    def add_metric(
        self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float
    ) -> None:
        """``buckets``: (upper bound as text, cumulative count), ending with "+Inf"."""
        self._rows.append((labels, buckets, sum_value))

    @property
    def samples(self) -> list[Sample]:  # type: ignore[override]  # Metric's attribute, derived
        samples: list[Sample] = []
        for labels, buckets, total in self._rows:
            base = dict(zip(self._labelnames, labels, strict=True))
            samples += [
                Sample(f"{self.name}_bucket", {**base, "le": bound}, float(count))
                for bound, count in buckets
            ]
            samples.append(Sample(f"{self.name}_count", base, float(buckets[-1][1])))
            samples.append(Sample(f"{self.name}_sum", base, float(total)))
        return samples

    def lines(self) -> Iterator[str]:
        name, names, order, le_at = self.name, self._labelnames, self._order, self._le_at
        for labels, buckets, total in self._rows:
            pairs = [f'{names[i]}="{_escape_value(labels[i])}"' for i in order]
            before = ",".join(pairs[:le_at]) + "," if le_at else ""
            after = "," + ",".join(pairs[le_at:]) if le_at < len(pairs) else ""
            plain = "{" + ",".join(pairs) + "}" if pairs else ""
            bucket = f"{name}_bucket{{{before}le="
            yield from [
                f'{bucket}"{bound}"{after}}} {format_value(count)}\n' for bound, count in buckets
            ]
            yield f"{name}_count{plain} {format_value(buckets[-1][1])}\n"
            yield f"{name}_sum{plain} {format_value(total)}\n"


def render_chunks(families: Iterable[Metric], *, openmetrics: bool) -> Iterator[bytes]:
    """The exposition of ``families`` in the text format, or OpenMetrics, in pieces."""
    parts: list[str] = []
    for family in families:
        if not isinstance(family, _Family):
            raise TypeError(f"{family.name} is not a fast family (see metrics/defs.py)")
        parts.append(family.header(openmetrics=openmetrics))
        for line in family.lines():
            parts.append(line)
            if len(parts) >= CHUNK_LINES:
                yield "".join(parts).encode()
                parts.clear()
    if openmetrics:
        parts.append("# EOF\n")
    if parts:
        yield "".join(parts).encode()


def render(families: Iterable[Metric], *, openmetrics: bool) -> bytes:
    """The whole exposition at once (for tests and tools; /metrics streams it)."""
    return b"".join(render_chunks(families, openmetrics=openmetrics))


def gzip_stream() -> zlib._Compress:
    """A gzip stream at the fastest level: a scrape is latency-bound, the network is not."""
    return zlib.compressobj(1, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
