"""Hardware: live GPU memory/utilisation and per-process memory (NVML), CPU and RAM (psutil)."""
from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from engine import jobs, telemetry
from views.common import fmt_bytes, get_store

st.title("Hardware")


@st.cache_resource(show_spinner=False)
def sampler() -> telemetry.Sampler:
    return telemetry.Sampler(seconds=300)


def series_name(col: str) -> str:
    """cpu_pct -> "CPU", gpu0_mem_pct -> "GPU 0 memory" (chart legend)."""
    names = {"cpu_pct": "CPU", "ram_pct": "RAM"}
    if col in names:
        return names[col]
    gpu, kind, _ = col.split("_")
    return f"GPU {gpu[3:]} {'memory' if kind == 'mem' else 'utilisation'}"


@st.fragment(run_every=2.0)
def live() -> None:
    snap = sampler().sample()
    sysm, gpu = snap["system"], snap["gpu"]
    pids = telemetry.job_pids(jobs.list_jobs(get_store(), states=["running"]))

    st.subheader("GPU")
    if not gpu["available"]:
        st.info(f"**No NVIDIA GPU / driver** on this machine: {gpu['reason']}. Jobs run on the CPU.",
                icon=":material/developer_board_off:")
    else:
        st.caption(f"NVIDIA driver {gpu.get('driver', '?')}")
        for g in gpu["gpus"]:
            used, total = g["memory_used_bytes"], g["memory_total_bytes"]
            c1 = c2 = c3 = c4 = st.container(horizontal=True)  # wraps on a narrow page, never cutting a number
            c1.metric(f"GPU {g['index']}: {g['name']}", f"{fmt_bytes(used)} / {fmt_bytes(total)}")
            c2.metric("Utilisation", "—" if g["utilization_pct"] is None else f"{g['utilization_pct']} %")
            c3.metric("Temperature", "—" if g["temperature_c"] is None else f"{g['temperature_c']} °C")
            c4.metric("Power", "—" if g["power_w"] is None else f"{g['power_w']:.0f} W")
            st.progress(min(1.0, used / max(1, total)), text=f"memory {100 * used / max(1, total):.1f} %")
        procs = telemetry.label_processes(gpu, pids)
        if procs:
            st.dataframe(pd.DataFrame([{"GPU": p["gpu"], "pid": p["pid"], "process": p["name"],
                                        "memory": fmt_bytes(p["memory_used_bytes"]),
                                        "Slimbench job": p["job"] or ""} for p in procs]),
                         hide_index=True, width="stretch")
        else:
            st.caption("No processes are using the GPU.")

    st.subheader("CPU and memory")
    c1 = c2 = c3 = st.container(horizontal=True)  # wraps on a narrow page, never cutting a number
    c1.metric(f"CPU ({sysm['cpu_count']} cores)", "—" if sysm["cpu_pct"] is None else f"{sysm['cpu_pct']:.0f} %",
              help="busy share of all cores since the previous sample (shown from the second sample on)")
    c2.metric("RAM", f"{fmt_bytes(sysm['ram_used_bytes'])} / {fmt_bytes(sysm['ram_total_bytes'])}")
    c3.metric("Load average (1 / 5 / 15 min)", " / ".join(f"{v:.2f}" for v in sysm["load_avg"]))

    own = sampler().processes(pids)
    if own:
        st.markdown("**Slimbench job processes**")
        st.dataframe(pd.DataFrame([{"Slimbench job": p["job"], "pid": p["pid"], "process": p["name"],
                                    "CPU (% of a core)": p["cpu_pct"], "memory (RSS)": fmt_bytes(p["rss_bytes"])}
                                   for p in own]), hide_index=True, width="stretch", key="job_procs",
                     column_config={"CPU (% of a core)": st.column_config.NumberColumn(format="%.0f")})
    else:
        st.caption("No Slimbench job is running.")

    points = pd.DataFrame(sampler().points())
    if len(points) > 1:
        points["time"] = pd.to_datetime(points["ts"], unit="s")
        series = [c for c in points.columns if c.endswith("_pct")]
        long = points.melt(id_vars="time", value_vars=series, var_name="series", value_name="percent")
        long["series"] = long["series"].map(series_name)
        fig = px.line(long, x="time", y="percent", color="series", height=300, range_y=[0, 104],
                      title="Last minutes")  # headroom: a series at 100 % drawn on the frame's edge was half hidden
        fig.update_layout(margin=dict(l=10, r=10, t=40, b=10), legend_title_text="")
        # samples are in UTC and seconds apart: whole seconds, no date line, and the zone named
        fig.update_xaxes(title_text="time (UTC)", tickformat="%H:%M:%S", hoverformat="%H:%M:%S")
        fig.update_yaxes(title_text="% of capacity", tickvals=[0, 25, 50, 75, 100])
        st.plotly_chart(fig, key="history", config={"displayModeBar": False})
    else:
        st.caption("The chart fills in as samples arrive (every 2 s).")


live()
