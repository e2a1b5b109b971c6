"""Metric families that render themselves fast, and the exposition of a registry of them.

prometheus_client renders a sample in about 8 µs (it validates and escapes every label name of
every sample and builds a Sample with a dict per histogram bucket), which makes a 30k-series
scrape take hundreds of milliseconds. These families keep their rows as plain tuples and
write text directly: label names are valid by construction (metrics/defs.py), so only label
values are escaped. They still are prometheus_client ``Metric`` objects: ``samples`` is built
on demand, so the registry API and client_python's own exposition keep working, and a test
checks that both render the same bytes. Families client_python builds itself (the process
and platform collectors) are written by client_python.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import accumulate
from operator import itemgetter

from prometheus_client import CollectorRegistry
from prometheus_client import generate_latest as text_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

TEXT = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"
_DIRECT_INT_LIMIT = 1_000_000  # below it an integer prints as "<n>.0", as Go's formatting does
# Characters per chunk of a streamed exposition, so a 30k-series page never exists whole in
# memory (as a list of lines, a str and bytes it would cost several times its 4 MB).
CHUNK_CHARS = 256 * 1024
# Typed here, so the calls need no ignore whichever allowed client_python is installed.
_float_to_go: Callable[[float], str] = floatToGoString
_openmetrics_latest: Callable[[CollectorRegistry], bytes] = om_exposition.generate_latest


def format_value(value: float) -> str:
    """A sample value exactly as client_python (and Go) print it."""
    if type(value) is int and 0 <= value < _DIRECT_INT_LIMIT:
        return f"{value}.0"
    return _float_to_go(value)


def _needs_escape(value: str) -> bool:
    return "\\" in value or '"' in value or "\n" in value


def _escape_value(value: str) -> str:
    if _needs_escape(value):
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
        order = sorted(range(len(labels)), key=self._labelnames.__getitem__)
        self._written = [self._labelnames[i] for i in order]
        self._pick: Callable[[Sequence[str]], tuple[str, ...]] = (
            itemgetter(*order) if len(order) > 1 else lambda values: tuple(values[i] for i in order)
        )

    def _values(self, labels: Sequence[str]) -> tuple[str, ...]:
        """A row's label values in written order, escaped."""
        values = self._pick(labels)
        if _needs_escape("".join(values)):
            return tuple(map(_escape_value, values))
        return values

    @staticmethod
    def _template(names: Sequence[str]) -> str:
        """``a="%s",b="%s"``: a row's labels then take one formatting call, not one per label."""
        return ",".join(f'{name}="%s"' for name in names)

    def header(self, *, openmetrics: bool) -> str:
        doc = self.documentation.replace("\\", r"\\").replace("\n", r"\n")
        if openmetrics:
            name = self.name
            doc = doc.replace('"', r"\"")
        else:
            name = f"{self.name}_total" if self.type == "counter" else self.name
        return f"# HELP {name} {doc}\n# TYPE {name} {self.type}\n"

    def blocks(self) -> Iterator[str]:
        """The family's sample lines, in pieces of one or more whole lines."""
        raise NotImplementedError


class ScalarFamily(_Family):
    """A counter or a gauge: one value per label set."""

    def __init__(self, name: str, documentation: str, kind: str, labels: Sequence[str]) -> None:
        super().__init__(name, documentation, kind, labels)
        self._rows: list[tuple[Sequence[str], float]] = []

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        self._rows.append((labels, value))

    def add_rows(self, rows: Iterable[tuple[Sequence[str], float]]) -> None:
        """Many (labels, value) rows at once, as a mapping's ``items()`` gives them."""
        self._rows += rows

    @property
    def samples(self) -> list[Sample]:  # type: ignore[override]  # Metric's attribute, derived
        name = f"{self.name}_total" if self.type == "counter" else self.name
        return [
            Sample(name, dict(zip(self._labelnames, labels, strict=True)), float(value))
            for labels, value in self._rows
        ]

    def blocks(self) -> Iterator[str]:
        name = f"{self.name}_total" if self.type == "counter" else self.name
        if not self._labelnames:
            yield from (f"{name} {format_value(value)}\n" for _, value in self._rows)
            return
        line = f"{name}{{{self._template(self._written)}}} %s\n"
        values = self._values
        for labels, value in self._rows:
            yield line % (*values(labels), format_value(value))


class HistogramFamily(_Family):
    """Buckets, a sum and a count per label set."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], bounds: Sequence[str]
    ) -> None:
        """``bounds``: the buckets' upper bounds as written ("0.005"), ending with "+Inf"."""
        super().__init__(name, documentation, "histogram", labels)
        self._bounds = tuple(bounds)
        self._rows: list[tuple[Sequence[str], Sequence[int], float]] = []

    def add_metric(self, labels: Sequence[str], counts: Sequence[int], sum_value: float) -> None:
        """``counts``: observations in each bucket alone (not cumulative), one per bound."""
        if len(counts) != len(self._bounds):
            raise ValueError(f"{self.name}: {len(counts)} counts for {len(self._bounds)} buckets")
        self._rows.append((labels, counts, sum_value))

    @property
    def samples(self) -> list[Sample]:  # type: ignore[override]  # Metric's attribute, derived
        samples: list[Sample] = []
        for labels, counts, total in self._rows:
            base = dict(zip(self._labelnames, labels, strict=True))
            cumulative = list(accumulate(counts))
            samples += [
                Sample(f"{self.name}_bucket", {**base, "le": bound}, float(count))
                for bound, count in zip(self._bounds, cumulative, strict=True)
            ]
            samples.append(Sample(f"{self.name}_count", base, float(cumulative[-1])))
            samples.append(Sample(f"{self.name}_sum", base, float(total)))
        return samples

    def _skeleton(self, before: str, suffix: str) -> list[str]:
        """A row's lines with the slots left empty: [head, labels, count] per bucket, then
        the count and sum lines with [labels, value] each. ``suffix`` ends every bucket count
        (".0" when they all are small integers, which then print as repr() does)."""
        pieces: list[str] = []
        for index, bound in enumerate(self._bounds):
            end = f"{suffix}\n" if index else ""
            pieces += [f'{end}{self.name}_bucket{{{before}le="{bound}"', "", ""]
        pieces += [f"{suffix}\n{self.name}_count", "", " ", "", f"\n{self.name}_sum", "", " ", ""]
        pieces.append("\n")
        return pieces

    def blocks(self) -> Iterator[str]:
        """One block per label set. A row's 20-odd bucket lines differ only in bound and count,
        so they are filled into a skeleton and joined at once: under half the time of
        formatting them line by line, which was most of a 30k-series scrape."""
        written, buckets = self._written, len(self._bounds)
        # Labels sorting before "le" go before it on bucket lines.
        split = sum(1 for name in written if name < "le")
        before = "".join(f'{name}="%s",' for name in written[:split])
        after = "".join(f',{name}="%s"' for name in written[split:]) + "} "
        plain = "{" + self._template(written) + "}" if written else ""
        skeletons: dict[tuple[str, bool], list[str]] = {}
        for labels, counts, total in self._rows:
            values = self._values(labels)
            head = before % values[:split]
            cumulative = list(accumulate(counts))
            count = cumulative[-1]
            # Counts never fall, so every bucket prints as "<n>.0" when the total does.
            small = type(count) is int and count < _DIRECT_INT_LIMIT
            skeleton = skeletons.get((head, small))
            if skeleton is None:
                skeleton = skeletons[head, small] = self._skeleton(head, ".0" if small else "")
            skeleton[1 : 3 * buckets : 3] = [after % values[split:]] * buckets
            skeleton[2 : 3 * buckets : 3] = map(repr if small else format_value, cumulative)
            row = plain % values
            skeleton[-8::2] = (row, format_value(count), row, format_value(total))
            yield "".join(skeleton)


class _One:
    """A collector of one family already built, for client_python's own exposition."""

    def __init__(self, family: Metric) -> None:
        self._family = family

    def collect(self) -> list[Metric]:
        return [self._family]

    def describe(self) -> list[Metric]:
        return []


def standard_text(family: Metric, *, openmetrics: bool) -> str:
    """A family client_python built (process, platform), written by client_python itself: a
    handful of samples, where its speed does not matter."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_One(family))
    if openmetrics:
        return _openmetrics_latest(registry).decode().removesuffix("# EOF\n")
    return text_latest(registry).decode()


def render_chunks(families: Iterable[Metric], *, openmetrics: bool) -> Iterator[bytes]:
    """The exposition of ``families`` in the text format, or OpenMetrics, in pieces."""
    parts: list[str] = []
    size = 0
    for family in families:
        if not isinstance(family, _Family):
            parts.append(standard_text(family, openmetrics=openmetrics))
            continue
        parts.append(family.header(openmetrics=openmetrics))
        for block in family.blocks():
            parts.append(block)
            size += len(block)
            if size >= CHUNK_CHARS:
                yield "".join(parts).encode()
                parts.clear()
                size = 0
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
