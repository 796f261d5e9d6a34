"""serve.py plus the first-hour walk's tiny preset (tests/first_hour.py): what the walk's server runs."""
from __future__ import annotations

from pathlib import Path

from starlette.middleware import Middleware

import first_hour
import streamlit as st
from views.origin_guard import OriginGuard

first_hour.register()
app = st.App(Path(__file__).resolve().parent.parent / "dashboard.py", middleware=[Middleware(OriginGuard)])
