"""Reporting on a run: report.html (``html.py``), its figures (``figures.py``), Grad-CAM (``cam.py``)."""
