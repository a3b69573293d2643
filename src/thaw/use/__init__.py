"""What runs after training and around it: ``thaw.fit``/``thaw.resume`` (``run``), the analyses, the operating
point, evaluation, prediction (torch or ONNX Runtime), export and the report."""
