"""Helpers behind the Streamlit dashboard.

`figures`, `exports`, `uploads` and `forms` are plain Python (Plotly, pandas, zipfile) and can
be tested without Streamlit. `cache` and `widgets` import Streamlit: they hold the cached
loaders and the drawing helpers that several pages share. The engine (`fer_core` itself) never
imports this package.
"""
