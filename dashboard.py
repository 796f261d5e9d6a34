"""Slimbench dashboard's pages. Served by `make run` through serve.py (its Host/Origin guard); AppTest runs
this file directly."""
from __future__ import annotations

import streamlit as st

from views.common import app_pages, keep_widget_state, live_sidebar

st.set_page_config(page_title="Slimbench", page_icon=":material/compress:", layout="wide",
                   initial_sidebar_state="expanded")

page = st.navigation(app_pages())
with st.sidebar:
    st.markdown("### Slimbench")
    live_sidebar()  # live counts without rerunning the page
keep_widget_state()
page.run()
