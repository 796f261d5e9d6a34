"""What `make run` serves: the dashboard (dashboard.py) behind views.origin_guard's Host/Origin check.

`streamlit run serve.py` finds ``app`` and serves it with the options in .streamlit/config.toml.
"""
from __future__ import annotations

from starlette.middleware import Middleware

import streamlit as st
from views.origin_guard import OriginGuard

app = st.App("dashboard.py", middleware=[Middleware(OriginGuard)])
