"""Compare: results table relative to each run's base, accuracy-vs-cost plot with the Pareto front,
sensitivity curves, per-class accuracy and confusion, and downloads.

The filters narrow every section, so changing one reruns the page; each section below them is a
fragment, so a control inside one (plot axis, More columns, winner limits, sensitivity run, run
details) reruns that section alone."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from engine import jobs, model_card, portable, presets, record, results, searches, sweeps, tracking
from engine.spec import SpecError
from views import share
from views.common import (card, download, download_best, elide, fmt_bytes, fmt_count, fmt_ms, fmt_value,
                          full_names_help, get_store, md_text, plot_text, plural)

st.title("Compare")
store = get_store()


@st.cache_data(show_spinner=False, max_entries=4)
def load(root: str, version: tuple) -> tuple[pd.DataFrame, dict]:
    recs = results.records(store)
    return results.table(recs), {r["run_id"]: r for r in recs}


# the cached table is rebuilt only when the finished runs change
df, by_id = load(str(store.root), store.done_version())
if df.empty:
    st.info("No finished runs yet. Launch jobs on **Experiments**; they appear here when done.")
    st.stop()

# -- filters ----------------------------------------------------------------------------------
ALL = "All"  # an empty filter keeps every run; "Choose options" was cut to "Ch" in a narrow column
with st.container(border=True):
    # "Architecture" broke mid-word in a sixth of an 800 px page: its column is wider, the text box's label shorter
    c1, c2, c3, c4 = st.columns([1.1, 1.5, 1.7, 1.9])
    datasets = c1.multiselect("Dataset", sorted(df["dataset"].dropna().unique()), key="f_dataset", placeholder=ALL)
    archs = c2.multiselect("Architecture", sorted(df["arch"].dropna().unique()), key="f_arch", placeholder=ALL)
    meths = c3.multiselect("Method", sorted(df["method"].dropna().unique()), key="f_method", placeholder=ALL)
    text = c4.text_input("Name or run id", key="f_text", placeholder="contains …")
    labelled = [c for c in ("experiment", "group") if df[c].notna().any()]
    # experiment and group names are the user's and can be long: a row of their own each, the middle of a
    # long one elided and the full names in the help, chips wrapping onto more rows
    picked = {}
    for c in labelled:
        options = sorted(df[c].dropna().unique())
        picked[c] = st.multiselect(c.capitalize(), options, key=f"f_{c}", placeholder=ALL, format_func=elide,
                                   wrap=True, help=full_names_help(f"{c.capitalize()} names", options))
    include_chance = st.checkbox("Include runs at chance level in the Pareto front and the winner", key="f_chance",
                                 help="a run whose answers are no better than guessing is flagged in the warnings "
                                      "column and left out of both unless this is ticked")
view = df
for c, chosen in picked.items():
    if chosen:
        view = view[view[c].isin(chosen)]
if datasets:
    view = view[view["dataset"].isin(datasets)]
if archs:
    view = view[view["arch"].isin(archs)]
if meths:
    view = view[view["method"].isin(meths)]
if text:
    view = view[view["name"].fillna("").str.contains(text, case=False, regex=False)
                | view["run_id"].str.contains(text, case=False, regex=False)]
if view.empty:
    st.warning("No run matches these filters; clear some of them.")
    st.stop()

view = view.assign(finished=pd.to_datetime(view["finished"], unit="s"))
view = view.assign(delta_ci=np.where(view["delta_ci_low"].notna(), (100 * view["delta_ci_low"]).map("{:+.1f}".format)
                                     + " to " + (100 * view["delta_ci_high"]).map("{:+.1f}".format), ""),
                   x_faster_range=np.where(view["x_faster_low"].notna(), view["x_faster_low"].map("{:.2f}".format)
                                           + "–" + view["x_faster_high"].map("{:.2f}x".format), ""))

# A pipeline is one row (its steps, runs of their own, are listed under the table) and an analysis is
# no model: both stay off the plot, the table, the front and the winner.
step_of = results.pipeline_steps(by_id.values())
is_step = view["run_id"].isin(list(step_of))


@st.cache_data(show_spinner=False, max_entries=4)
def trials_of_searches(root: str, version: tuple) -> dict[str, str]:
    """Run id -> the auto-compress search that made it, for every finished trial (a running search's too)."""
    return searches.made_by_search(store.list())


search_of = trials_of_searches(str(store.root), store.done_version())
is_trial = view["run_id"].isin(list(search_of))
is_analysis = view["method"].isin(results.ANALYSES)
view = view.assign(steps=[results.pipeline_summary(by_id[r]) for r in view["run_id"]])
analyses, steps_view = view[is_analysis & ~is_step], view[is_step & ~is_trial]
trials_view = view[is_trial & ~is_step]
view = view[~is_step & ~is_analysis & ~is_trial]



def column_config() -> dict:
    """Every column's header, format and help, from the record schema."""
    cc = st.column_config

    def one(f: record.Field):
        help = f.help or None
        if f.kind == "bool":
            return cc.CheckboxColumn(f.label, help=help)
        if f.kind == "time":
            return cc.DatetimeColumn(f.label, help=help)
        if f.kind in ("text", "json"):
            return cc.TextColumn(f.label, help=help)
        # counts (bytes, MACs, parameters) run to 7+ digits: grouped (2,551,424), not one unbroken string
        return cc.NumberColumn(f.label, format="localized" if f.format == "%d" else f.format, help=help)
    return {f.name: one(f) for f in record.FIELDS}


COLUMN_CONFIG = column_config() | {"steps": st.column_config.TextColumn(
    "pipeline steps", help="a pipeline's steps in order; each is a run of its own, listed under the table")}
# A long name took the table's width, pushing accuracy and costs out of view: pinned at a fixed width
# (a double-click on a cell shows all of it), it stays beside them as the table scrolls.
COLUMN_CONFIG["name"] = st.column_config.TextColumn(record.get("name").label, help=record.get("name").help,
                                                    width="medium", pinned=True)


def shown(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as Compare shows it: each column scaled as its field says (Δ accuracy in points)."""
    scaled = {f.name: df[f.name] * f.shown_scale for f in record.FIELDS if f.shown_scale != 1 and f.name in df}
    return df.assign(**scaled)


chance = view[view["chance_level"].fillna(False).astype(bool)]
if not chance.empty:
    many = len(chance) > 1   # each run's own reason, not its other warnings (those are in the warnings column)
    st.warning(f"{len(chance)} {'runs' if many else 'run'} in view {'answer' if many else 'answers'} at chance level: "
               + "; ".join(md_text(f"{n or rid}: {results.chance_level(by_id[rid])}") for n, rid in
                           zip(chance["name"].head(3), chance["run_id"].head(3)))
               + ("; …" if len(chance) > 3 else "") + ". "
               + (f"{'They are' if many else 'It is'} included in the Pareto front and the winner, as asked."
                  if include_chance else f"{'They are' if many else 'It is'} kept off the Pareto front and out of the "
                  "winner; tick the box above to include them."),
               icon=":material/casino:")


# -- plot and table ---------------------------------------------------------------------------
@st.fragment
def runs(view: pd.DataFrame) -> None:
    """The accuracy-vs-cost plot and the table: the table ticks the Pareto front of the plotted axis."""
    axes = results.cost_axes()
    c1 = c2 = c3 = st.container(horizontal=True)  # at their own widths, wrapping: a column cut "Pareto front"
    axis_label = c1.radio("Accuracy against", list(axes), horizontal=True, key="axis")
    st.session_state.setdefault("log_x", True)  # kept widget: default via state, not value=
    log_x = c2.toggle("Log x axis", key="log_x")
    st.session_state.setdefault("front", True)  # kept widget: default via state, not value=
    show_front = c3.toggle("Pareto front", key="front")
    cost = axes[axis_label]
    view = view.assign(pareto=results.pareto_mask(view, cost, include_chance=include_chance))
    fig, plot_df, published = share.cost_figure(view, cost, axis_label, log_x, show_front, include_chance)
    if fig is None:
        st.warning(f"No run in view has both accuracy and {axis_label}.")
    else:
        if cost == "latency_ms" and plot_df["runtime"].nunique() > 1:
            st.caption("Symbols show the runtime each model was timed in (PyTorch eager, ONNX Runtime INT8): "
                       "latencies of different runtimes measure different engines. Bars run from the median to "
                       "the 90th percentile.")
        if cost != "macs" and not results.literature_points(view).empty:
            st.caption("Published results for these nets are drawn on the MACs axis.")
        st.plotly_chart(fig, key="scatter", config={"displaylogo": False})
        if published is not None and not published.empty:
            st.caption(f"Diamonds: {len(published)} published result(s) for "
                       + ", ".join(sorted({f"{n} on {d}" for n, d in zip(published["net"], published["dataset"])}))
                       + ", placed at our base's MACs ÷ their MAC reduction; hover for their own base accuracy and "
                         "source.")
        for gap in results.literature_gaps(view):
            st.warning(f"{md_text(gap)}: compare Δ accuracy with the published points, not absolute accuracy.",
                       icon=":material/menu_book:")
    runs_table(view)


@st.fragment
def runs_table(view: pd.DataFrame) -> None:
    """The results table; choosing More columns reruns it alone."""
    default = record.compare_defaults()
    # Extra columns a user can add: every measured column that some run in view has.
    extra = [f.name for f in record.table_fields()
             if f.name not in default and f.more and view[f.name].notna().any()]
    added = st.multiselect("More columns", extra, key="more_cols", format_func=lambda c: record.get(c).label,
                           default=[c for c in ("gpu_latency_ms", "gpu_x_faster") if c in extra],
                           help="every other measurement some run in view has: top-5, ROC AUC, FLOPs, throughput, "
                                "inference memory, .onnx and deflated sizes, training time, GPU figures ...")
    at = default.index("sparsity")
    cols = default[:at] + added + default[at:]
    # labels nobody set are a column of "None": shown only once some run in view has one
    cols = [c for c in cols if c not in ("experiment", "group") or view[c].notna().any()]
    if view["steps"].astype(bool).any():  # pipelines in view: what each ran, beside its name
        cols.insert(cols.index("name") + 1 if "name" in cols else 0, "steps")
    st.dataframe(shown(view[cols]), hide_index=True, width="stretch", height=min(420, 38 + 35 * len(view)),
                 column_config=COLUMN_CONFIG, placeholder="—")  # "—" for unmeasured, as the tiles; not "None"
    a = b = st.container(horizontal=True)  # buttons at their own width, wrapping on a narrow page
    a.download_button("Download table (CSV)", data=view.to_csv(index=False).encode(),
                      file_name="slimbench-results.csv", mime="text/csv", key="dl_csv", on_click="ignore",
                      icon=":material/table:")
    chosen = {k: st.session_state.get(f"f_{k}") for k in ("dataset", "arch", "method", "text", "experiment", "group")}
    filters = "; ".join(f"{k}: {', '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in chosen.items() if v)
    b.download_button("Download this view as a report (HTML)", data=lambda: report(view, filters), key="dl_report",
                      file_name="slimbench-report.html", mime="text/html", on_click="ignore", icon=":material/share:",
                      help="one file that opens offline in any browser: the plots (interactive), this table with "
                           "confidence intervals and paired speed-ups, each run's recipe, the machines it was "
                           "measured on and the published points")

    pipeline_steps(view)
    search_trials(trials_view)

def report(view: pd.DataFrame, filters: str) -> bytes:
    """The current view as a self-contained HTML report; built on Streamlit's download thread when the button
    is clicked (plotly.js alone is megabytes), so it reads no session state."""
    specs = {rid: (store.get(rid) or {}).get("spec") for rid in view["run_id"]}
    return share.report_html(view, by_id, specs, include_chance, filters).encode()


def pipeline_steps(view: pd.DataFrame) -> None:
    """Each pipeline in view, its steps expandable: every step is a run of its own (the last one is the
    pipeline's model, measured again as the pipeline's row)."""
    for rid, name in zip(view["run_id"], view["name"]):
        ids = [s for s in by_id[rid].get("pipeline_runs") or [] if s in by_id]
        if not ids:
            continue
        with st.expander(f"Pipeline {md_text(name or rid)}: {md_text(results.pipeline_summary(by_id[rid]))}",
                         icon=":material/account_tree:"):
            st.dataframe(shown(df.set_index("run_id").loc[ids].reset_index()[STEP_COLUMNS]), hide_index=True,
                         width="stretch",
                         column_config=COLUMN_CONFIG, key=f"steps_{rid}")


def search_trials(trials: pd.DataFrame) -> None:
    """Each auto-compress search's trials grouped under it, collapsed (a search is one row above, its model
    the winner's); its page shows them against the objective, live while it runs."""
    for sid, group in trials.groupby(trials["run_id"].map(search_of), sort=False):
        row = store.get(sid) or {}
        winner = (by_id.get(sid) or {}).get("search_winner")
        state = "" if row.get("state") == "done" else f" ({row.get('state')})"
        # the finished models in view, of the trials it ran: "1 trial" read as if a 3-trial search had run one
        ran = (by_id.get(sid) or {}).get("search_trials")
        count = (f"{len(group)} {'model' if len(group) == 1 else 'models'} from its {ran} trials"
                 if isinstance(ran, int) and ran > len(group) else f"{len(group)} {'trial' if len(group) == 1 else 'trials'}")
        with st.expander(f"Trials of the auto-compress search {md_text(row.get('name') or sid)}{state}: "
                         f"{count}" + (f", winner {winner}" if winner else ""),
                         icon=":material/travel_explore:"):
            st.page_link("views/search.py", label="Its trials against the objective, the front and the winner",
                         icon=":material/travel_explore:", query_params={"run": sid})
            table = group.assign(winner=group["run_id"] == winner)[["winner", *STEP_COLUMNS]]
            st.dataframe(shown(table), hide_index=True, width="stretch", column_config=COLUMN_CONFIG,
                         key=f"trials_{sid}")


STEP_COLUMNS = ["name", "method", "accuracy", "delta_accuracy", "size_bytes", "macs", "latency_ms", "runtime", "run_id"]


detailed = pd.concat([view, steps_view])
if view.empty:
    st.info("No model in view: the runs that match are sensitivity analyses or pipeline steps (below).")
else:
    runs(view)


# -- downloads ------------------------------------------------------------------------------------
def program(run_id: str) -> portable.Portable:
    """The run's model as a file plain PyTorch loads: made from its bundle on first view (about a second),
    then read back from the run folder."""
    with st.spinner("Writing the model as a program plain PyTorch loads ..."):
        return portable.ensure(store.run_dir(run_id))


def file_sizes(run_id: str, rec: dict, base_id: str, made: portable.Portable) -> list[model_card.FileSize]:
    """The run's files against its base's, the portable program included where both have one."""
    prog = None
    if made.file and (store.run_dir(run_id) / made.file).is_file():
        base_made = program(base_id) if base_id != run_id else None   # its base's, to compare sizes with
        base_prog = store.run_dir(base_id) / made.file
        prog = (made.file, (store.run_dir(run_id) / made.file).stat().st_size,
                base_prog.stat().st_size if base_made and base_made.file == made.file and base_prog.is_file() else None)
    return model_card.file_sizes(rec, by_id.get(base_id, rec), prog)


def downloads(run_id: str, rec: dict, row: pd.Series, prefix: str, who: str = "") -> None:
    """The run's files: the bundle, its ONNX file, the program plain PyTorch loads, and the model card
    (Markdown, HTML, JSON); a file not smaller than its base's says so on its button."""
    made = program(run_id)
    sizes = {f.label: f for f in file_sizes(run_id, rec, row["base_id"], made)}

    def size_note(label: str) -> tuple[str, str]:
        f = sizes.get(label)
        if f is None or not f.not_smaller:
            return "", ""
        return " · not smaller than base", f"Not smaller than its base's ({f.ratio:.2f}x)" + (f": {f.why}." if f.why else ".")

    files = st.container(horizontal=True)  # buttons at their own width, wrapping on a narrow page
    d = [files] * 4
    with d[0]:
        mark, note = size_note("model.pt")
        download(run_id, "checkpoint", ("Winner's checkpoint (.pt)" if who else "Checkpoint bundle (.pt)") + mark,
                 key=f"{prefix}_pt",
                 note=" ".join(filter(None, (note, "Loads with Slimbench (engine.export.load_model)."))))
    with d[1]:
        mark, note = size_note("model.onnx")
        download(run_id, "onnx", ("Winner's ONNX model" if who else "ONNX model (.onnx)") + mark, key=f"{prefix}_onnx",
                 note=note)
    with d[2]:
        kind = "torchscript" if made.kind == "TorchScript" else "pt2"
        mark, note = size_note(made.file or "")
        label = f"{who}PyTorch program (.pt2)" if kind == "pt2" else f"{who}TorchScript (.pt)"
        download(run_id, kind, label + mark, key=f"{prefix}_pt2",
                 note=f"Loads with plain PyTorch, no Slimbench: {md_text(made.load_code(f'{run_id}-{made.file}'))}"
                      + (f". {md_text(made.note)}" if made.note else "") + (f". {note}" if note else ""),
                 missing=f"no portable program: {md_text(made.note)}")
    with d[3]:
        download_best(run_id, rec, key=f"{prefix}_best")
    if made.kind == "TorchScript":
        st.caption(f"TorchScript, not a torch.export program: {md_text(made.note)}.")
    blocks = model_card.blocks(rec, by_id, card(run_id), made, list(sizes.values()))
    title = f"Model card: {rec.get('name') or run_id}"
    cards = st.container(horizontal=True)
    c = [cards] * 3
    card_label = f"{who}model card" if who else "Model card"
    c[0].download_button(f"{card_label} (Markdown)", key=f"{prefix}_card_md", on_click="ignore",
                         data=lambda: model_card.to_markdown(blocks), file_name=f"{run_id}-model-card.md",
                         mime="text/markdown", icon=":material/description:",
                         help="what was done, the recipe, metrics with 95 % intervals, warnings, files, the machine")
    c[1].download_button(f"{card_label} (HTML)", key=f"{prefix}_card_html", on_click="ignore",
                         data=lambda: model_card.to_html(blocks, title), file_name=f"{run_id}-model-card.html",
                         mime="text/html", icon=":material/article:", help="the same card, to open in a browser")
    with c[2]:
        download(run_id, "card", f"{card_label} (JSON)", key=f"{prefix}_card")
    if not who:
        with st.expander("Read the model card", icon=":material/description:"):
            st.markdown(model_card.to_markdown(blocks, escape=md_text, heading_offset=2))


# -- winner ---------------------------------------------------------------------------------------
@st.fragment
def winner(view: pd.DataFrame) -> None:
    """The best run in view within deployment limits; changing a limit reruns this section alone."""
    with st.expander("Pick the winner: the best run in view within your deployment limits", icon=":material/trophy:"):
        a, b, c, d, e = st.columns(5)
        limit = dict(min_value=0.0, value=None, placeholder="no limit")
        max_mb = a.number_input("max size (MB)", key="w_size", help="of model.pt, the checkpoint bundle", **limit)
        max_mmacs = b.number_input("max MACs (millions)", key="w_macs", **limit)
        max_ms = c.number_input("max latency (ms)", key="w_latency", help="CPU, batch 1, median", **limit)
        max_pt = d.number_input("max accuracy loss (points)", key="w_drop", help="against each run's base", **limit)
        objective = e.selectbox("best by", list(results.OBJECTIVES), key="w_best",
                                format_func={"accuracy": "accuracy (highest)", "size": "size (smallest)",
                                             "macs": "MACs (fewest)", "latency": "latency (lowest)",
                                             "best_latency": "latency in its best runtime (lowest)"}.get)
        view_w, n_sets = results.on_newest_test_set(view)
        if n_sets > 1:
            st.info("The runs in view were scored on different test sets, whose accuracies do not compare; the winner "
                    "is picked among the runs on the newest run's test set. Filter by dataset to choose another.")
        ranked = results.winners(view_w, objective, include_chance=include_chance, max_size_bytes=None if max_mb is None else max_mb * 1e6,
                                 max_macs=None if max_mmacs is None else max_mmacs * 1e6, max_latency_ms=max_ms,
                                 max_drop=None if max_pt is None else max_pt / 100)
        if ranked.empty:
            st.warning("No run in view meets these limits (a run missing a limited measurement cannot); loosen them.")
        else:
            w = ranked.iloc[0]
            st.success(f"**{md_text(w['name'] or w['run_id'])}** · `{w['run_id']}` ({w['method']}): "
                       f"accuracy {w['accuracy']:.4f}"
                       + ("" if np.isnan(w["delta_accuracy"]) else f" ({100 * w['delta_accuracy']:+.1f} pt)")
                       + f", {fmt_bytes(w['size_bytes'])}, {fmt_count(w['macs'])} MACs"
                       + ("" if np.isnan(w["latency_ms"]) else f", {fmt_ms(w['latency_ms'])}")
                       + f" — best of {len(ranked)} run(s) meeting the limits", icon=":material/trophy:")
            downloads(w["run_id"], by_id[w["run_id"]], w, "w_dl", who="Winner's ")
            if len(ranked) > 1:
                st.dataframe(shown(ranked[["name", "method", "accuracy", "delta_accuracy", "size_bytes", "macs",
                                           "latency_ms", "run_id"]].head(10)), hide_index=True, width="stretch", column_config=COLUMN_CONFIG,
                             key="w_ranked")


if not view.empty:
    winner(view)


# -- sensitivity ----------------------------------------------------------------------------------
@st.fragment
def sensitivity(analyses: pd.DataFrame) -> None:
    """Sensitivity analyses in view (apart from the models: an analysis returns its start unchanged):
    their curves, suggested ratios, and a form queueing the pruning job."""
    sens = [(rid, results.sensitivity_curves(by_id[rid])) for rid in analyses["run_id"] if by_id[rid].get("sensitivity")]
    sens = [(rid, s) for rid, s in sens if not s.empty]
    if not analyses.empty:
        st.subheader("Sensitivity analyses")
        st.caption("Analyses of a model, not models of their own: they are kept out of the table, the plot and the "
                   "winner above.")
        st.dataframe(analyses.assign(analysed=analyses["base_id"])[["name", "run_id", "analysed", "arch", "dataset"]],
                     hide_index=True, width="stretch", key="analyses",
                     column_config={"analysed": st.column_config.TextColumn("analysed model (base run)")})
    if sens:
        labels = {rid: f"{by_id[rid].get('name') or rid} · {rid}" for rid, _ in sens}
        pick = st.selectbox("Sensitivity analysis run", list(labels), format_func=labels.get, key="sens_run")
        curves = dict(sens)[pick]
        fig = px.line(curves, x="amount", y="accuracy", color="layer", markers=True, height=380,
                      labels={"amount": "pruned fraction", "accuracy": "accuracy"})
        fig.update_layout(margin=dict(l=10, r=10, t=10, b=10))
        st.plotly_chart(fig, key="sensitivity", config={"displayModeBar": False})
        suggested = results.suggestions(by_id[pick])
        if not suggested.empty:
            sens_row = store.get(pick) or {}
            tolerated = ((sens_row.get("spec") or {}).get("method") or {}).get("params", {}).get("max_loss")
            st.caption("Suggested per-layer ratios: the largest tried share each layer loses alone while validation "
                       "accuracy stays within " + (f"{tolerated:g} of the base's." if tolerated is not None
                                                   else "the tolerated loss."))
            st.dataframe(suggested, hide_index=True, width="stretch",
                         column_config={"macs": st.column_config.NumberColumn("MACs", format="%d"),
                                        "suggested ratio": st.column_config.NumberColumn(format="%.2f")})
            if sens_row.get("spec") and suggested["suggested ratio"].fillna(0).gt(0).any():
                with st.form("prune_by_sensitivity", border=True):
                    st.markdown("**Prune with these ratios** (`prune_structured`, allocation = sensitivity)")
                    a, b, c, d = st.columns(4)
                    p_steps = a.number_input("prune -> fine-tune rounds", 1, 50, 1, key="sens_steps")
                    p_epochs = b.number_input("fine-tune epochs per round", 0, 1000, 1, key="sens_epochs")
                    p_target = c.number_input("MAC target (0 = not used)", 0.0, 0.99, 0.0, step=0.05, key="sens_target",
                                              help="share of the base's MACs to keep: every suggested ratio is "
                                              "scaled by one factor to meet it")
                    p_loss = d.number_input("max accuracy loss (0 = not used)", 0.0, 0.99, 0.0, step=0.01,
                                            key="sens_loss", help="instead of a MAC target: every suggested ratio is "
                                            "scaled by the largest factor whose cut, before fine-tuning, loses at "
                                            "most this much validation accuracy (0.02 = 2 points)")
                    st.caption("With neither, each layer loses exactly its suggested share.")
                    if st.form_submit_button("Queue the pruning job", type="primary", key="sens_queue"):
                        try:
                            spec = presets.prune_by_sensitivity(sens_row, int(p_steps), int(p_epochs),
                                                                float(p_target) or None, float(p_loss) or None)
                            job = jobs.submit(spec, store)
                        except (SpecError, ValueError) as e:
                            st.error(f"Could not queue the job: {md_text(e)}")
                        else:
                            st.success(f"Queued {job}; it appears here when it finishes.",
                                       icon=":material/rocket_launch:")
                            st.page_link("views/jobs.py", label="Watch it on Jobs", icon=":material/arrow_forward:")


sensitivity(analyses)


# -- one run --------------------------------------------------------------------------------------
def artefact_sizes(rec: dict, row: pd.Series, against_base: bool) -> str:
    """Each downloadable artefact's size, and how many times smaller than the base's it is."""
    parts = []
    for key, ratio, what in (("size_bytes", "x_smaller", "model.pt"), ("onnx_bytes", "x_smaller_onnx", "model.onnx"),
                             ("compressed_bytes", "x_smaller_compressed", "model.pt deflated (zip)")):
        if rec.get(key) is None:
            continue
        times = f" ({row[ratio]:.2f}x smaller than its base's)" if against_base and not np.isnan(row[ratio]) else ""
        parts.append(f"{what}: {fmt_bytes(rec[key])}{times}")
    onnx_note = (" model.onnx is INT8." if rec.get("precision") == "int8" else
                 " model.onnx stores every weight, zeros included: sparsity shows in the deflated size."
                 if rec.get("onnx_bytes") is not None else "")
    return "; ".join(parts) + "." + onnx_note if parts else ""


def latency_help(rec: dict, row: pd.Series, how: str) -> str:
    """Where and how the latency was timed, and where its speed-up comes from (``how``)."""
    where = f"{rec.get('latency_device') or 'cpu'}".upper() + (f" ({rec['cpu_model']}" if rec.get("cpu_model") else "")
    where += (f", {rec['threads']} threads)" if rec.get("threads") else ")") if rec.get("cpu_model") else ""
    text = (f"This run's median latency at batch 1, timed alone in its own job: {where}. Set beside the base's "
            f"latency from another job it can disagree with a paired speed-up, which is why the speed-up shown is "
            f"the paired one wherever it exists. Speed-up: {how}")
    if row["x_faster_paired"]:
        text += f", paired rounds ranged {row['x_faster_range']}" if row["x_faster_range"] else ""
    if rec.get("int8_speedup"):
        text += f"; INT8 is {rec['int8_speedup']:.2f}x faster than its start in fp32 ONNX Runtime"
    if rec.get("speedup_vs_eager_start"):
        text += (f" and {rec['speedup_vs_eager_start']:.2f}x faster than its start in eager PyTorch (quantisation "
                 "and the change of runtime together)")
    return text


def runtime_rows(rec: dict) -> pd.DataFrame:
    """One row per deployment runtime of a run: its speed, energy, agreement with PyTorch, or why it did not run."""
    rows = []
    for name, e in (rec.get("deploy") or {}).items():
        if not isinstance(e, dict) or name == "note":
            continue
        rows.append({"runtime": name, "latency (ms)": e.get("latency_ms"), "img/s": e.get("throughput"),
                     "energy (mJ/image)": e.get("energy_mj_per_image"),
                     "agrees with PyTorch": e.get("agreement"), "verified": e.get("verified"),
                     "under load": e.get("loaded"), "compile (s)": e.get("compile_seconds"),
                     "note": e.get("not_available") or ("" if e.get("energy_mj_per_image") is not None
                                                        else e.get("energy_source") or "")})
    return pd.DataFrame(rows)


def runtimes_section(run_id: str, rec: dict) -> None:
    """The run in every deployment runtime, and its thread and batch sweeps (run on request)."""
    with st.expander("Runtimes, threads and batch sizes", icon=":material/speed:"):
        table = runtime_rows(rec)
        if table.empty:
            st.caption((rec.get("deploy") or {}).get("note") or "This run was not deployed in other runtimes "
                       "(measure.deploy off, or a run from before deployment was measured).")
        else:
            best = rec.get("best_runtime")
            st.caption(f"Fastest verified runtime: **{md_text(best or 'none')}**"
                       + (f"; x faster than its start in the same runtime ({md_text(rec['deploy_paired_runtime'])}): "
                          f"{rec['deploy_paired_speedup']:.2f}x" if rec.get("deploy_paired_speedup") else "")
                       + (f", {rec['speedup_per_mac_cut']:.2f} of its {rec['start_x_fewer_macs']:.2f}x MAC cut"
                          if rec.get("speedup_per_mac_cut") else "")
                       + ". Agreement: top-1 equal to PyTorch's on the test images checked (verified: ≥ 99.5 %).")
            st.dataframe(table, hide_index=True, width="stretch", key="runtime_table", placeholder="—",  # not "None"
                         column_config={"agrees with PyTorch": st.column_config.NumberColumn(format="percent"),
                                        "latency (ms)": st.column_config.NumberColumn(format="%.3f"),
                                        "img/s": st.column_config.NumberColumn(format="%.0f"),
                                        "energy (mJ/image)": st.column_config.NumberColumn(format="%.3f")})
        if rec.get("loaded") or rec.get("paired_threads_fallback"):
            st.warning(md_text(results.timed_under_load(rec) or "")
                       + (f" The paired speed-up was {md_text(rec['paired_threads_fallback'])}."
                          if rec.get("paired_threads_fallback") else ""), icon=":material/warning:")
        if st.button("Sweep threads and batch sizes", key="sweep_run",
                     help="times this run's model at 1..N CPU threads (batch 1) and at several batch sizes, in its "
                          "best download runtime; takes seconds to minutes and loads the machine while it runs"):
            with st.spinner("Timing…"):
                try:
                    sweeps.sweep_run(get_store(), run_id)
                except SpecError as e:
                    st.error(f"Could not sweep: {md_text(e)}")
        sweep_charts(sweeps.load(get_store(), run_id))


def sweep_charts(sw: dict | None) -> None:
    """Latency against threads and throughput against batch size, from a run's sweep.json."""
    if not sw:
        return
    a, b = st.columns(2)
    t = pd.DataFrame(sw["by_threads"])
    fig = px.line(t, x="threads", y="latency_ms", markers=True, height=320,
                  title=f"Batch-1 latency by threads ({sw['runtime']})", labels={"latency_ms": "latency (ms)"})
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10))
    fig.update_xaxes(type="category")
    a.plotly_chart(fig, key="sweep_threads", config={"displayModeBar": False})
    bt = pd.DataFrame(sw["by_batch"])
    fig = px.line(bt, x="batch", y="throughput", markers=True, log_x=True, height=320,
                  title=f"Throughput by batch ({bt['threads'].iloc[0]} threads)", labels={"throughput": "images/s"})
    fig.update_layout(margin=dict(l=10, r=10, t=40, b=10))
    b.plotly_chart(fig, key="sweep_batches", config={"displayModeBar": False})
    if any(p.get("loaded") for p in sw["by_threads"] + sw["by_batch"]):
        st.caption("Some points were timed while other processes held cores they needed (the load average above the "
                   "CPU count, or their CPU use during the timing): their figures are suspect.")


@st.fragment
def details(view: pd.DataFrame) -> None:
    """One run: its metrics against its base, downloads, agreement, layer widths, per-class accuracy."""
    st.subheader("Run details")
    labels = {rid: f"{n or m} · {rid}" for rid, n, m in zip(view["run_id"], view["name"], view["method"])}  # as Jobs
    linked = st.query_params.get("run")  # /compare?run=ID (Jobs links a finished job here) opens on that run
    if linked and linked not in labels:
        st.warning(f"Run {md_text(linked)} is not among the runs shown: it is unfinished, unknown, or filtered out above.")
    run_id = st.selectbox("Run", list(labels), index=list(labels).index(linked) if linked in labels else 0,
                          format_func=labels.get, key="detail_run")
    rec = by_id[run_id]
    row = view[view["run_id"] == run_id].iloc[0]
    tiles = st.container(horizontal=True)  # one row of tiles that wraps on a narrow page, never cutting a number
    c = [tiles] * 5
    acc_ci = rec.get("accuracy_ci95")
    c[0].metric("Accuracy", fmt_value(rec.get("accuracy"), ".4f"),
                None if np.isnan(row["delta_accuracy"]) or row["base_id"] == run_id
                else f"{100 * row['delta_accuracy']:+.1f} pt",
                help=f"95% CI {acc_ci[0]:.4f} to {acc_ci[1]:.4f} over {rec.get('test_images')} test images (Wilson)"
                if acc_ci else None)
    c[1].metric("Size (.pt)", fmt_bytes(rec.get("size_bytes")),
                None if np.isnan(row["x_smaller"]) or row["base_id"] == run_id
                else f"{row['x_smaller']:.2f}x smaller (.pt)",
                delta_color="off", delta_arrow="off", help=artefact_sizes(rec, row, row["base_id"] != run_id))
    speed = results.speed_tile(rec, row.to_dict())
    c[2].metric(speed["label"], fmt_ms(rec.get("latency_ms")), speed["delta"], delta_color="off", delta_arrow="off",
                help=latency_help(rec, row, speed["how"]))
    c[3].metric("MACs", fmt_count(rec.get("macs")),
                None if np.isnan(row["x_fewer_macs"]) or row["base_id"] == run_id
                else f"{row['x_fewer_macs']:.2f}x fewer",
                delta_color="off", delta_arrow="off",
                help=f"{rec['macs']:,} multiply-accumulates per image" if rec.get("macs") else None)
    c[4].metric("Parameters", fmt_count(rec.get("params")),
                help=f"{rec['params']:,}" if rec.get("params") else None)

    downloads(run_id, rec, row, "dl")
    if rec.get("method") == searches.METHOD or run_id in search_of:
        sid = search_of.get(run_id, run_id)
        st.page_link("views/search.py", label="A trial of an auto-compress search: see the search" if sid != run_id
                     else "The search: its trials, front and winner", icon=":material/travel_explore:",
                     query_params={"run": sid})

    runtimes_section(run_id, rec)

    # A checkpoint scored as given is its own start: agreement and flips would compare it with itself.
    against_itself = rec.get("method") == "baseline" and rec.get("agreement") == 1.0 \
        and not rec.get("flips_to_wrong") and not rec.get("flips_to_right")
    if rec.get("agreement") is not None and not against_itself:
        n_test = rec.get("test_images") or 0
        tiles = st.container(horizontal=True)  # wraps on a narrow page, never cutting a number
        f = [tiles] * 4
        f[0].metric("Agrees with its start", f"{100 * rec['agreement']:.1f} %",
                    help="top-1 answers equal to the model this run started from, on the same test images")
        for col, key, label, what in ((f[1], "flips_to_wrong", "Newly wrong", "the starting model was right, this run "
                                       "is wrong"), (f[2], "flips_to_right", "Newly right", "the starting model was "
                                       "wrong, this run is right")):
            col.metric(label, f"{100 * rec[key]:.1f} %", plural(round(rec[key] * n_test), "image") if n_test else None,
                       delta_color="off", delta_arrow="off", help=what)
        if row["delta_ci"]:
            noise = row["delta_ci_low"] <= 0 <= row["delta_ci_high"]
            f[3].metric("Δ accuracy, 95% CI (points)",
                        f"{100 * row['delta_ci_low']:+.1f} to {100 * row['delta_ci_high']:+.1f}",
                        "within test-set noise" if noise else "a real difference", delta_color="off", delta_arrow="off",
                        help=f"paired over the flipped answers; McNemar p = {row['mcnemar_p']:.3g}")

    logged = tracking.status(store.run_dir(run_id))
    if logged and logged.get("error"):
        st.warning(f"Not logged to MLflow at {md_text(logged['uri'])}: {md_text(logged['error'])}. The run itself "
                   "finished; `python -m engine mlflow " + run_id + "` logs it once the store can be reached.",
                   icon=":material/cloud_off:")
    elif logged:
        st.caption(f"Logged to MLflow at {md_text(logged['uri'])} as run `{logged['mlflow_run_id']}`.")

    verdict = row.get("control_verdict")
    if isinstance(verdict, str) and verdict and not rec.get("control_of"):
        published = results.control_counterpart(rec.get("method"), row["x_fewer_macs"])
        (st.success if verdict.startswith("beats") else st.info)(
            f"Against its control (the same family scaled to its MACs, trained from scratch with the same epoch "
            f"budget): {md_text(verdict)}." + (f"  \n{md_text(published[0].upper() + published[1:])}." if published else ""),
            icon=":material/balance:")
    if why := results.chance_level(rec):
        st.error(f"At chance level: {md_text(why)}. Its answers are no better than guessing, so its size and speed "
                 "say nothing about a useful model; it is kept off the Pareto front and out of the winner unless "
                 "asked for.", icon=":material/casino:")
    if row["base_id"] != run_id and (why := results.still_learning(by_id[row["base_id"]])):
        st.warning(f"Its base may be under-trained: {why}. Fine-tuning after compression then adds training, and "
                   "Δ accuracy mixes that gain with what compression costs. Train the base longer (Baseline epochs) "
                   "for a fair comparison.", icon=":material/school:")

    with st.expander("Every recorded measurement"):
        scalars = {k: v for k, v in sorted(rec.items()) if isinstance(v, (int, float, str, bool)) or v is None}
        for k in ("started", "finished"):  # epoch seconds, shown as a date
            if isinstance(scalars.get(k), float):
                scalars[k] = pd.Timestamp(scalars[k], unit="s").strftime("%Y-%m-%d %H:%M:%S UTC")
        st.dataframe(pd.DataFrame({"field": list(scalars),  # unset reads "—" as in the other tables, not "None"
                                   "value": ["—" if v is None else str(v) for v in scalars.values()]}),
                     hide_index=True, width="stretch", key="record_fields")

    widths = results.layer_widths(rec)
    if not widths.empty:
        fig = go.Figure([go.Bar(name="before", x=widths["layer"], y=widths["before"], marker_color="#cbd5e1"),
                         go.Bar(name="after", x=widths["layer"], y=widths["after"], marker_color="#2563eb",
                                customdata=widths["kept"],
                                hovertemplate="%{x}: %{y} channels (%{customdata:.0%} kept)")])
        fig.update_layout(barmode="overlay", height=320, title="Output channels per layer",
                          margin=dict(l=10, r=10, t=40, b=10), xaxis_tickangle=-45)
        st.plotly_chart(fig, key="layer_widths", config={"displayModeBar": False})

    names = card(run_id).get("class_names") or []
    pc, cm = rec.get("per_class_accuracy"), rec.get("confusion")
    if pc or cm:
        a, b = st.columns(2)
        n = len(pc or cm)
        classes = [plot_text(c) for c in names] if len(names) == n else [str(i) for i in range(n)]
        if pc:
            start_pc = rec.get("start_per_class_accuracy") or []
            bars = {"this run": pc, **({"its start": start_pc} if len(start_pc) == n and not against_itself else {})}
            per_class = pd.DataFrame([{"class": k, "model": who, "accuracy": np.nan if v is None else v}
                                      for who, vals in bars.items() for k, v in zip(classes, vals)])
            fig = px.bar(per_class, x="class", y="accuracy", color="model", barmode="group", height=360,
                         title="Per-class accuracy" + (" (against its start, same images)" if len(bars) > 1 else ""),
                         color_discrete_map={"this run": "#2563eb", "its start": "#cbd5e1"})
            fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), yaxis_range=[0, 1], legend_title_text="")
            fig.update_xaxes(type="category")
            a.plotly_chart(fig, key="per_class", config={"displayModeBar": False})
        if cm:
            fig = px.imshow(np.array(cm), x=classes, y=classes, text_auto=True, color_continuous_scale="Blues",
                            labels={"x": "predicted", "y": "true", "color": "images"}, height=360,
                            title="Confusion matrix")
            fig.update_layout(margin=dict(l=10, r=10, t=40, b=10))
            fig.update_xaxes(type="category")  # class names "0".."9" are labels, not numbers: one tick each
            fig.update_yaxes(type="category")
            b.plotly_chart(fig, key="confusion", config={"displayModeBar": False})


if not detailed.empty:
    details(detailed)
