"""Slimbench dashboard: `streamlit run dashboard.py`."""
from __future__ import annotations

import streamlit as st

from pages.common import sidebar

st.set_page_config(page_title="Slimbench", page_icon=":material/compress:", layout="wide",
                   initial_sidebar_state="expanded")

PAGES = [
    st.Page("pages/experiments.py", title="Experiments", icon=":material/science:", default=True),
    st.Page("pages/jobs.py", title="Jobs", icon=":material/pending_actions:", url_path="jobs"),
    st.Page("pages/compare.py", title="Compare", icon=":material/scatter_plot:", url_path="compare"),
    st.Page("pages/try_image.py", title="Try an image", icon=":material/image_search:", url_path="try"),
    st.Page("pages/hardware.py", title="Hardware", icon=":material/memory:", url_path="hardware"),
]

page = st.navigation(PAGES)
with st.sidebar:
    st.markdown("### Slimbench")
    st.fragment(sidebar, run_every=5.0)()  # live counts without rerunning the page
page.run()
