"""A run's model card for people: what was done, the recipe, metrics with their intervals, warnings,
the files and the machine, as Markdown and as HTML made from the same blocks.

``card.json`` is for programs; this is what a reader opens. Text is kept as plain strings in blocks
and escaped once per output format, so a hostile class or run name is shown, never interpreted.
"""
from __future__ import annotations

import html
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from . import results
from .stats import wilson

NOT_SMALLER = 1.01   # an artefact less than 1 % smaller than its base's counts as not smaller


# -- blocks ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Heading:
    level: int
    text: str


@dataclass(frozen=True)
class Para:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    header: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]


@dataclass(frozen=True)
class Code:
    text: str


Block = Heading | Para | Bullets | Table | Code
_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|#!~])")


def _md(text: str) -> str:
    return _MD_SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def to_markdown(blocks: Iterable[Block], escape: Callable[[str], str] = _md, heading_offset: int = 0) -> str:
    """The card as Markdown; ``escape`` makes a text literal (a page rendering it passes one that also
    covers its renderer's own syntax); ``heading_offset`` lowers every heading (a card inside a page)."""
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * min(6, b.level + heading_offset) + " " + escape(b.text))
        elif isinstance(b, Para):
            out.append(escape(b.text))
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {escape(i)}" for i in b.items))
        elif isinstance(b, Table):
            lines = ["| " + " | ".join(map(escape, b.header)) + " |", "|" + "---|" * len(b.header)]
            lines += ["| " + " | ".join(map(escape, r)) + " |" for r in b.rows]
            out.append("\n".join(lines))
        else:
            fence = "```" if "```" not in b.text else "~~~~"
            out.append(f"{fence}python\n{b.text}\n{fence}")
    return "\n\n".join(out) + "\n"


STYLE = ("body{font-family:system-ui,sans-serif;max-width:860px;margin:2em auto;padding:0 1em;color:#111827;"
         "line-height:1.5}table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #d1d5db;"
         "padding:.25em .6em;text-align:left}th{background:#f3f4f6}pre{background:#f3f4f6;padding:.8em;"
         "overflow-x:auto}")


def to_html(blocks: Iterable[Block], title: str) -> str:
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            body.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Para):
            body.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            body.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            head = "".join(f"<th>{e(h)}</th>" for h in b.header)
            rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in b.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        else:
            body.append(f"<pre><code>{e(b.text)}</code></pre>")
    return (f"<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


# -- sizes against the base --------------------------------------------------------------------------
@dataclass(frozen=True)
class FileSize:
    """One downloadable file's size against its base's same file: ``ratio`` = base's ÷ this (nan where
    either is unknown); ``why`` explains a file that is not smaller."""
    label: str
    size: float
    ratio: float
    why: str = ""

    @property
    def not_smaller(self) -> bool:
        return not math.isnan(self.ratio) and self.ratio < NOT_SMALLER

    def sentence(self) -> str:
        text = f"{self.label}: {fmt_bytes(self.size)}"
        if math.isnan(self.ratio):
            return text
        if self.not_smaller:
            return text + f", not smaller than its base's ({self.ratio:.2f}x)" + (f": {self.why}" if self.why else "")
        return text + f", {self.ratio:.2f}x smaller than its base's"


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ratio(base: Any, value: Any) -> float:
    return base / value if _num(base) and _num(value) and value > 0 else math.nan


def file_sizes(rec: dict[str, Any], base: dict[str, Any], portable: tuple[str, float, float | None] | None = None
               ) -> list[FileSize]:
    """The run's files (model.pt, model.onnx, model.pt deflated, and the portable program when made:
    ``(file name, its size, the base's program's size or None)``) against its base's."""
    own = rec.get("run_id") == base.get("run_id")
    sparse = _num(rec.get("sparsity")) and rec["sparsity"] >= 0.05
    dense_why = ("it stores every weight, zeros included, so unstructured sparsity does not shrink it (the deflated "
                 ".pt shows the saving)" if sparse else "")
    out = []
    for key, label, why in (("size_bytes", "model.pt", ""), ("onnx_bytes", "model.onnx", dense_why),
                            ("compressed_bytes", "model.pt deflated (zip)", "")):
        if _num(rec.get(key)):
            out.append(FileSize(label, rec[key], math.nan if own else _ratio(base.get(key), rec[key]),
                                why or ("its weights take as much room as its base's" if key == "size_bytes" else "")))
    if portable is not None:
        name, size, base_size = portable
        out.append(FileSize(name, size, math.nan if own or base_size is None else _ratio(base_size, size), dense_why))
    return out


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# -- the card ----------------------------------------------------------------------------------------
def chain(run_id: str, by_id: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The run's records from its base to itself, following ``parent``."""
    out, seen, rid = [], set(), run_id
    while rid in by_id and rid not in seen:
        seen.add(rid)
        out.append(by_id[rid])
        rid = by_id[rid].get("parent")
    return out[::-1]


def origin_of(base: dict[str, Any]) -> str:
    """Where a chain's first model came from, from its spec's model section."""
    m = (base.get("spec") or {}).get("model") or {}
    if m.get("pretrained"):
        return (f"{m.get('arch')} from the ImageNet weights in {m['pretrained']}, a new head for these classes"
                + (", backbone frozen" if m.get("freeze_backbone") else ", every layer trained"))
    if m.get("checkpoint"):
        return f"from the checkpoint {m['checkpoint']}"
    if m.get("arch"):
        return f"{m['arch']} trained from random weights"
    return "its own base"


def _pct(v: Any, spec: str = ".2f") -> str:
    return f"{100 * v:{spec}} %" if _num(v) else "—"


def _interval(ci: Any, scale: float = 100, unit: str = " %") -> str:
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(v) for v in ci):
        return f"{scale * ci[0]:+.2f} to {scale * ci[1]:+.2f}{unit}" if unit == " pt" else \
            f"{scale * ci[0]:.2f} to {scale * ci[1]:.2f}{unit}"
    return "—"


def blocks(rec: dict[str, Any], by_id: dict[str, dict[str, Any]], card: dict[str, Any] | None = None,
           portable: Any = None, sizes: list[FileSize] | None = None) -> list[Block]:
    """The card of the run ``rec`` (``by_id``: every finished run's record, for its chain and base);
    ``card``: its card.json (class names, normalisation); ``portable``: an ``engine.portable.Portable``
    if one was made; ``sizes``: its files against its base's (``file_sizes``)."""
    card = card or {}
    steps = chain(rec["run_id"], by_id) or [rec]
    base = steps[0]
    title = rec.get("name") or rec["run_id"]
    out: list[Block] = [Heading(1, f"Model card: {title}")]
    what = (f"Run {rec['run_id']}: {rec.get('method')} on {rec.get('arch')}, "
            f"{rec.get('num_classes')} classes of {rec.get('dataset')}"
            + (f" (from {rec['data_path']})" if rec.get("data_path") else "") + ".")
    labels = ", ".join(f"{k} {rec[k]}" for k in ("experiment", "group") if rec.get(k))
    out.append(Para(what + (f" {labels[0].upper()}{labels[1:]}." if labels else "")))   # a sentence of its own

    out.append(Heading(2, "What was done"))
    items = []
    for s in steps:
        # an option left unset (None) means its default: "None" would read as a value
        params = ", ".join(f"{k}={v}" for k, v in (s.get("method_params") or {}).items() if v is not None) \
            or "defaults"
        origin = f" ({origin_of(s)})" if s is base else ""
        items.append(f"{s.get('method')} ({params}) → run {s['run_id']}{origin}")
    out.append(Bullets(tuple(items)))
    if len(steps) > 2:   # with one step after the base, its start is the base: no second run to name
        out.append(Para(f"Every comparison below is against the base, run {base['run_id']}, unless it says its start "
                        f"(run {rec.get('parent')})."))
    elif len(steps) == 2:
        out.append(Para(f"Every comparison below is against the base, run {base['run_id']}."))

    out.append(Heading(2, "Metrics"))
    n = rec.get("test_images")
    ci = rec.get("accuracy_ci95")
    if not (isinstance(ci, list) and len(ci) == 2) and _num(rec.get("accuracy")) and _num(n) and n > 0:
        ci = list(wilson(round(rec["accuracy"] * n), int(n)))
    rows = [("top-1 accuracy", _pct(rec.get("accuracy")), _interval(ci), f"Wilson interval over {n} test images")]
    if _num(rec.get("top5")):
        rows.append(("top-5 accuracy", _pct(rec["top5"]), "", ""))
    if _num(rec.get("roc_auc")):
        rows.append(("ROC AUC (macro)", f"{rec['roc_auc']:.4f}", "", ""))
    if rec.get("parent") or rec.get("agreement") is not None and rec["run_id"] != base["run_id"]:
        start = rec.get("start_accuracy")
        delta = rec["accuracy"] - start if _num(start) and _num(rec.get("accuracy")) else None
        rows.append(("Δ accuracy against its start", f"{100 * delta:+.2f} pt" if delta is not None else "—",
                     _interval(rec.get("delta_accuracy_ci95"), unit=" pt"),
                     "paired over the same test images (Bonett–Price)"
                     + (f"; McNemar p = {rec['mcnemar_p']:.3g}" if _num(rec.get("mcnemar_p")) else "")))
        if _num(rec.get("agreement")):
            rows.append(("agrees with its start", _pct(rec["agreement"], ".1f"), "", "same top-1 answer"))
    if len(steps) > 1:
        table = results.table(steps)
        row = table[table["run_id"] == rec["run_id"]].iloc[0]
        if _num(row["delta_accuracy"]):
            rows.append(("Δ accuracy against the base", f"{100 * row['delta_accuracy']:+.2f} pt", "",
                         "summed along the chain of runs"))
        for key, label in (("x_fewer_macs", "x fewer MACs than the base"), ("x_faster", "x faster than the base")):
            if _num(row[key]):
                rows.append((label, f"{row[key]:.2f}x", "", "paired timing" if key == "x_faster"
                             and row["x_faster_paired"] else ""))
    for key, label, fmt in (("params", "parameters", ",.0f"), ("macs", "MACs per image", ",.0f"),
                            ("sparsity", "weights exactly zero", None), ("latency_ms", "CPU latency, batch 1", ".3f"),
                            ("gpu_latency_ms", "GPU latency, batch 1", ".3f")):
        v = rec.get(key)
        if _num(v):
            text = _pct(v, ".1f") if fmt is None else f"{v:{fmt}}" + (" ms" if "latency" in key else "")
            rows.append((label, text, "", "median" if "latency" in key else ""))
    out.append(Table(("metric", "value", "95 % interval", "how"), tuple(rows)))

    warnings = []
    if why := results.chance_level(rec):
        warnings.append(f"At chance level: {why}. Its answers are no better than guessing.")
    if why := results.still_learning(base):
        who = "It" if base["run_id"] == rec["run_id"] else f"Its base {base['run_id']}"
        warnings.append(f"{who} may be under-trained: {why}. Δ accuracy then mixes further training with what "
                        "compression costs.")
    warnings += [f"{f.label} is not smaller than its base's ({f.ratio:.2f}x)" + (f": {f.why}." if f.why else ".")
                 for f in sizes or [] if f.not_smaller]
    warnings += [str(note) for note in rec.get("notes") or []]
    out.append(Heading(2, "Warnings"))
    out.append(Bullets(tuple(warnings)) if warnings else Para("None: above chance, base not flagged as under-trained."))

    recipe = rec.get("recipe")
    out.append(Heading(2, "Training recipe"))
    if isinstance(recipe, dict) and recipe:
        out.append(Table(("setting", "value"), tuple((str(k), str(v)) for k, v in recipe.items())))
    else:
        out.append(Para("This run did not train (it was scored, cut or converted as it came)."))

    out.append(Heading(2, "Files"))
    out.append(Bullets(tuple(f.sentence() for f in sizes)) if sizes else Para("No file sizes were recorded."))

    out.append(Heading(2, "Inputs"))
    names = card.get("class_names") or []
    norm = card.get("normalisation") or {}
    out.append(Para(f"Input {rec.get('input_size')} (channels, height, width), pixel values ÷ 255, then "
                    f"(x − mean) ÷ std per channel with mean {norm.get('mean')} and std {norm.get('std')}. "
                    f"Output: one logit per class, in this order: {', '.join(map(str, names)) or 'class 0, 1, …'}."))
    if portable is not None and getattr(portable, "file", None):
        out.append(Heading(2, "Load it with plain PyTorch"))
        out.append(Para(f"{portable.file} is a {portable.kind} program; no Slimbench or model code is needed"
                        + (f" ({portable.note})" if portable.note else "") + ". Its extra file slimbench.json holds "
                        "the class names and normalisation."))
        saved_as = f"{rec['run_id']}-{portable.file}"
        out.append(Code(f"import torch\n{portable.load_code(saved_as)}"
                        f"\nlogits = model(x)  # x: float32 N x {' x '.join(map(str, rec.get('input_size') or []))},"
                        " normalised as above"))
    elif portable is not None:
        out.append(Para(f"No portable PyTorch program: {portable.note}."))

    out.append(Heading(2, "Machine"))
    machine = [("trained on", rec.get("device")), ("timed on", rec.get("latency_device")),
               ("CPU", rec.get("cpu_model") or rec.get("cpu")), ("timing threads", rec.get("threads")),
               ("GPU", rec.get("gpu_name")), ("host", rec.get("host")), ("PyTorch", rec.get("torch")),
               ("Python", rec.get("python"))]
    if _num(rec.get("load_avg")):  # a latency means little without the load it was timed under
        machine.insert(4, ("load while timed", f"{rec['load_avg']:.2f} (1-minute load average)"
                           + ("; the cores were not free, the timings are suspect" if rec.get("loaded") else "")))
    if _num(rec.get("cpu_share")):
        machine.insert(5, ("CPU share while timed", f"{rec['cpu_share']:.2f} of the timing threads' time"))
    if _num(rec.get("others_cpu")):
        machine.insert(6, ("other processes while timed", f"{rec['others_cpu']:.2f} cores' worth of CPU"))
    # a header of its own: Markdown has no table without one, and an empty one drew a blank first row
    out.append(Table(("machine", "value"), tuple((k, str(v)) for k, v in machine if v not in (None, ""))))
    return out
